"""The engine shared by every task: options, work dir, device, model/weights, data, optimiser."""
import inspect
import math
import os
import sys
import time

import torch
from torch.utils.data import DataLoader, DistributedSampler

from feeder.class_names import load_class_names
from feeder.layouts import get_layout
from feeder.streams import STREAMS, to_stream
from torchlight import dist
from torchlight.config import ConfigError, Opt, build_config, check_kwargs, dump
from torchlight.io import Logger, WorkDirError, WorkDirLock, load_weights, remove_stale_temporaries, summary_writer
from torchlight.registry import ENCODERS, FEEDERS, MODELS


def device_spec(value):
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' | GPU index | list of GPU indices (reference style)."""
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        return value
    text = str(value)
    if text.isdigit():
        return int(text)
    if text in ('auto', 'cpu', 'cuda') or (text.startswith('cuda:') and text[5:].isdigit()):
        return text
    raise ValueError


def resume_spec(value):
    """'' (off) | 'auto' | a checkpoint path; a bare --resume means 'auto'."""
    if value is True:
        return 'auto'
    if value in (False, None):
        return ''
    return str(value)


BASE_OPTIONS = {
    # -- run
    'behaviour': Opt(None, str, "reference | fixed: set every compat option of the method (and of this "
                                "protocol) to the original code's behaviour or to our fixes in one line; "
                                "keys set next to it or later win (docs/METHODS.md#reproduction-and-fixed-behaviour)"),
    'work_dir': Opt('./work_dir/tmp', str, 'folder for log.txt, config.yaml, tensorboard events, checkpoints'),
    'config': Opt(None, str, 'YAML file with option values (command line wins over it)'),
    'phase': Opt('train', str, "'train', or 'test' (evaluate `weights` once)"),
    'seed': Opt(0, int, 'base seed; every rank, epoch and step derives its own random stream from it'),
    'deterministic': Opt(False, bool, 'cuDNN deterministic mode (slower)'),
    'use_gpu': Opt(True, bool, 'reference key: false forces the CPU'),
    'device': Opt('auto', device_spec, "auto | cpu | cuda | cuda:N | GPU index list (reference: [0])"),
    'num_worker': Opt(4, int, 'DataLoader worker processes (capped at the CPU count)'),
    'debug': Opt(False, bool, 'reference key (unused)'),
    'pavi_log': Opt(False, bool, 'reference key (unused)'),
    'save_log': Opt(True, bool, 'write work_dir/log.txt'),
    'print_log': Opt(True, bool, 'print log lines'),
    'log_interval': Opt(100, int, 'iterations between log lines'),
    'save_interval': Opt(10, int, 'epochs between reference-format checkpoints (-1: never)'),
    'eval_interval': Opt(5, int, 'epochs between evaluations (-1: never)'),
    'save_result': Opt(True, bool, 'write per-sample test scores (test_result.pkl)'),
    'start_epoch': Opt(0, int, 'reference key: first epoch index (use resume to continue a run)'),
    'num_epoch': Opt(80, int, 'number of epochs'),
    'resume': Opt('', resume_spec, "'' | auto | checkpoint path: continue a killed run"),
    # -- data
    'train_feeder': Opt('skeleton_array', str, 'training dataset class (reference dotted names accepted)'),
    'test_feeder': Opt('skeleton_array', str, 'test dataset class'),
    'train_feeder_args': Opt({}, dict, 'data_path, label_path, mmap, augmentation keys, ...'),
    'test_feeder_args': Opt({}, dict, 'data_path, label_path, mmap, ...'),
    'batch_size': Opt(256, int, 'global training batch size (split over ranks under torchrun)'),
    'test_batch_size': Opt(256, int, 'evaluation batch size'),
    'stream': Opt('joint', str, 'joint | motion | bone, applied to every view'),
    'stream_scales': Opt({}, dict, 'factor per stream on the input after the joint/motion/bone conversion, e.g. '
                                   '{motion: 10} (unset: 1, the originals); pretraining and evaluation must agree'),
    'class_names': Opt(None, str, 'class names: ntu60 | ntu120 | pkummd | nw-ucla | demo | a file with one name '
                                  'per line (default: classes.txt or meta.json beside the test labels)'),
    # -- model
    'model': Opt(None, str, 'method class (e.g. skeletonclr, net.aimclr.AimCLR)'),
    'model_args': Opt({}, dict, 'method and encoder constructor arguments'),
    'weights': Opt(None, str, 'checkpoint to initialise from (reference loading rules)'),
    'ignore_weights': Opt([], (list, str), 'key prefixes dropped from `weights` before loading'),
    'weights_prefix': Opt(None, str, "load only the `weights` keys under this prefix, as the query encoder "
                                     "(e.g. 'encoder_r.' for the second branch of an ISC inter-skeleton checkpoint; "
                                     "'' = the whole file is the encoder, as AS-CAL's)"),
    'weights_container': Opt(None, str, "entry of the `weights` file that holds the state dict (default: "
                                        "'state_dict' or 'model'; AS-CAL momentum encoder: 'model_ema')"),
    # -- optimisation
    'optimizer': Opt('SGD', str, 'SGD | Adam | AdamW'),
    'base_lr': Opt(0.01, float, 'initial learning rate (cosine: the peak after warm-up)'),
    'step': Opt([], (list, int), 'epochs after which lr is multiplied by lr_decay_rate'),
    'lr_decay_rate': Opt(0.1, float, 'factor applied to lr at every epoch in step (AS-CAL linear evaluation: 0.5)'),
    'lr_schedule': Opt('step', str, "'step' (per epoch, `step` / `lr_decay_rate`) or 'cosine' (per iteration: "
                                    "linear warm-up over warmup_epochs, then half-cycle cosine to min_lr, as MAE/MAMP)"),
    'warmup_epochs': Opt(0.0, float, 'cosine schedule: epochs of linear warm-up from 0 (per iteration)'),
    'min_lr': Opt(0.0, float, 'cosine schedule: lr at the end of the last epoch'),
    'nesterov': Opt(True, bool, 'Nesterov momentum for SGD'),
    'betas': Opt([0.9, 0.999], (list, float), 'Adam / AdamW betas (MAMP pretraining: 0.9 0.95)'),
    'weight_decay': Opt(1e-4, float, 'weight decay'),
    'no_decay_1d': Opt(False, bool, 'no weight decay on 1-D parameters (biases, norm weights), '
                                    "as timm's add_weight_decay (MAE/MAMP)"),
    'layer_decay': Opt(1.0, float, 'layer-wise lr decay (BEiT/MAE fine-tuning; 1 = off): a parameter of layer '
                                   'i of L gets lr * layer_decay ** (L - i); needs a model with layer_id()'),
    # -- accepted for compatibility with reference files of other tasks
    'mining_epoch': Opt(int(1e6), int, 'AimCLR: epoch after which nearest neighbours are mined'),
    'topk': Opt(1, int, 'AimCLR: neighbours mined per view'),
}


# Evaluation tasks add it: results of an earlier run in work_dir are replaced only on request.
OVERWRITE_OPTION = Opt(False, bool, 'replace the results an earlier run left in work_dir (default: refuse)')


def configured_layout(cfg):
    """The skeleton layout a config names (model_args.graph_args.layout or *_feeder_args.layout;
    a built-in name or a layout file), or None: streams and augmentations then infer the
    built-in layout from the joint count."""
    graph_args = cfg['model_args'].get('graph_args')
    named = {f'{split}_feeder_args.layout': cfg[f'{split}_feeder_args'].get('layout')
             for split in ('train', 'test')}
    named['model_args.graph_args.layout'] = graph_args.get('layout') if isinstance(graph_args, dict) else None
    given = {key: value for key, value in named.items() if value is not None}
    if len({get_layout(value) for value in given.values()}) > 1:
        raise ConfigError(f'the config names different skeleton layouts: {given}')
    return next(iter(given.values()), None)


def stream_input(x, cfg, layout=None):
    """What the encoder gets from joint clips x: the config's stream times its `stream_scales`
    factor. Motion is ~10x smaller than the joints on metre-scale data; an encoder whose first
    layer has biases (HiCo's embedding) then sees almost the same token for every clip."""
    x = to_stream(x, cfg['stream'], layout)
    scale = (cfg['stream_scales'] or {}).get(cfg['stream'], 1)
    return x if scale == 1 else x * scale


class Processor:
    """Base task. Subclasses extend `options` and implement `start()`."""

    options = BASE_OPTIONS
    description = ''
    behaviour_scope = None   # which table of a method's `behaviours` this task applies
    lock = None
    stale_temporaries = ()

    def __init__(self, cfg, argv=()):
        self.cfg = cfg
        self.argv = list(argv)
        self.validate()
        self.layout = configured_layout(self.cfg)
        self.device = dist.resolve_device(cfg['device'], cfg['use_gpu'], dist.local_rank())
        dist.init_distributed(self.device)
        self.rank, self.world_size = dist.rank(), dist.world_size()
        self.is_main = self.rank == 0
        self.work_dir = cfg['work_dir']
        # rank 0 owns the work_dir for the whole run: a second run into it is refused
        self.lock = self.open_work_dir() if self.is_main else None
        self.log = Logger(self.work_dir if cfg['save_log'] else None,
                          enabled=self.is_main, print_log=cfg['print_log'])
        fallback = dist.cpu_fallback(cfg['device'], cfg['use_gpu'], self.device)
        if fallback:
            self.log(fallback)
        if self.is_main and self.stale_temporaries:
            self.log(f'removed {len(self.stale_temporaries)} temporary file(s) an interrupted write '
                     f'left: {", ".join(self.stale_temporaries)}')
        dist.seed_everything(cfg['seed'] + self.rank, cfg['deterministic'])
        self.interactive = sys.stdout.isatty() and self.is_main

    def open_work_dir(self):
        """Create work_dir, take its lock (WorkDirError when another live run holds it) and
        delete the temporary files a killed checkpoint write left there."""
        if os.path.exists(self.work_dir) and not os.path.isdir(self.work_dir):
            raise WorkDirError(f'work_dir {self.work_dir} is a file, not a folder')
        try:
            os.makedirs(self.work_dir, exist_ok=True)
        except OSError as err:
            raise WorkDirError(f'cannot create work_dir {self.work_dir}: {err.strerror or err}') from None
        lock = WorkDirLock(self.work_dir).acquire()
        self.stale_temporaries = remove_stale_temporaries(self.work_dir)
        return lock

    def accept(self):
        """The run passed its checks and set-up: only now its effective configuration replaces
        `config.yaml` (the previous one is kept under a time-stamped name), so a refused or
        failed start leaves the config that describes the files beside it. Tasks call this
        before they write any result."""
        if self.is_main:
            self._write_config(self.argv)

    def close(self):
        """Release the work_dir lock and the log file (main.py calls it after every run)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        self.log.close()

    # ------------------------------------------------------------------ config
    @classmethod
    def from_argv(cls, argv):
        return cls(cls.build_config(argv), argv)

    @classmethod
    def build_config(cls, argv):
        """The typed config of `argv` (defaults < YAML < command line, `behaviour` presets).
        `{stream}` in `work_dir` / `weights` becomes the stream, so one file serves every stream
        (`--stream bone`)."""
        cfg = build_config(cls.options, argv, presets=cls.behaviour_preset)
        for key in ('work_dir', 'weights'):
            if isinstance(cfg.get(key), str):
                cfg[key] = cfg[key].replace('{stream}', str(cfg['stream']))
        return cfg

    @classmethod
    def behaviour_preset(cls, choice, cfg):
        """{dotted option: value} that `behaviour: choice` sets for the configured method: the
        method class's own `behaviours[behaviour_scope][choice]` (not inherited; {} if none)."""
        try:
            model_cls = MODELS.get(cfg['model'])
        except (KeyError, TypeError):
            return {}   # build_model reports a missing or unknown model
        return dict(vars(model_cls).get('behaviours', {}).get(cls.behaviour_scope, {}).get(choice, {}))

    def validate(self):
        cfg = self.cfg
        if cfg['phase'] not in ('train', 'test'):
            raise ConfigError(f"option 'phase' must be train or test, got {cfg['phase']!r}")
        if cfg['stream'] not in STREAMS:
            raise ConfigError(f"option 'stream' must be joint, motion or bone, got {cfg['stream']!r}")
        if cfg['stream_scales'] is None:   # an empty YAML entry
            cfg['stream_scales'] = {}
        for stream, scale in cfg['stream_scales'].items():
            if stream not in STREAMS:
                raise ConfigError(f"option 'stream_scales': unknown stream {stream!r} (joint, motion or bone)")
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
                raise ConfigError(f"option 'stream_scales.{stream}' must be a positive number, got {scale!r}")
        if cfg['optimizer'] not in ('SGD', 'Adam', 'AdamW'):
            raise ConfigError(f"option 'optimizer' must be SGD, Adam or AdamW, got {cfg['optimizer']!r}")
        if cfg['lr_schedule'] not in ('step', 'cosine'):
            raise ConfigError(f"option 'lr_schedule' must be step or cosine, got {cfg['lr_schedule']!r}")
        if not 0 <= cfg['warmup_epochs'] < max(cfg['num_epoch'], 1) and cfg['lr_schedule'] == 'cosine':
            raise ConfigError(f"option 'warmup_epochs' must lie in [0, num_epoch), got {cfg['warmup_epochs']}")
        if len(cfg['betas']) != 2 or not all(0 <= b < 1 for b in cfg['betas']):
            raise ConfigError(f"option 'betas' must be two numbers in [0, 1), got {cfg['betas']}")
        if not 0 < cfg['layer_decay'] <= 1:
            raise ConfigError(f"option 'layer_decay' must lie in (0, 1], got {cfg['layer_decay']}")
        if cfg['lr_decay_rate'] <= 0:
            raise ConfigError(f"option 'lr_decay_rate' must be > 0, got {cfg['lr_decay_rate']}")
        for key in ('batch_size', 'test_batch_size'):
            if cfg[key] < 1:
                raise ConfigError(f'option {key!r} must be >= 1, got {cfg[key]}')
        for key in ('base_lr', 'weight_decay', 'num_epoch'):
            if cfg[key] < 0:
                raise ConfigError(f'option {key!r} must be >= 0, got {cfg[key]}')

    def _write_config(self, argv):
        path = os.path.join(self.work_dir, 'config.yaml')
        header = 'command line: ' + ' '.join([os.path.basename(sys.argv[0])] + list(sys.argv[1:2]) + list(argv))
        if os.path.exists(path):   # keep the previous run's config instead of overwriting it
            os.replace(path, os.path.join(self.work_dir, f'config.{time.strftime("%Y%m%d-%H%M%S")}.yaml'))
        dump(self.cfg, path, header)

    # ------------------------------------------------------------------ model
    def build_model(self, **overrides):
        cfg = self.cfg
        if not cfg['model']:
            raise ConfigError("option 'model' is not set (e.g. model: skeletonclr)")
        try:
            model_cls = MODELS.get(cfg['model'])
        except KeyError as err:
            raise ConfigError(f"option 'model': {err.args[0]}") from None
        args = dict(cfg['model_args'], **overrides)
        # the method's own default encoder when model_args name none (HiCo: hico_encoder)
        param = inspect.signature(model_cls).parameters.get('base_encoder')
        default = param.default if param is not None and param.default is not param.empty else 'net.st_gcn.Model'
        encoder_name = args.get('base_encoder', default)
        try:
            encoder_cls = ENCODERS.get(encoder_name)
        except KeyError as err:
            raise ConfigError(f"model_args.base_encoder: {err.args[0]}") from None
        check_kwargs(args, 'model_args', model_cls, encoder_cls)
        return model_cls(**args)

    def load_weights(self, model):
        """Initialise from `weights` (if set); returns the model keys the file lacked."""
        if self.cfg['weights']:
            return load_weights(model, self.cfg['weights'], self.cfg['ignore_weights'], log=self.log,
                         prefix=self.cfg['weights_prefix'], container=self.cfg['weights_container'])
        return []

    def class_names(self, num_class):
        return load_class_names(self.cfg['class_names'], num_class, self.cfg['test_feeder_args'].get('label_path'))

    def count_parameters(self, model):
        return sum(p.numel() for p in model.parameters())

    # ------------------------------------------------------------------ data
    def build_dataset(self, split):
        cfg = self.cfg
        args = cfg[f'{split}_feeder_args']
        if not args:
            raise ConfigError(f"option '{split}_feeder_args' is empty: set at least data_path")
        try:
            feeder_cls = FEEDERS.get(cfg[f'{split}_feeder'])
        except KeyError as err:
            raise ConfigError(f"option '{split}_feeder': {err.args[0]}") from None
        check_kwargs(args, f'{split}_feeder_args', feeder_cls)
        dataset = feeder_cls(**args)
        if self.layout is not None and hasattr(dataset, 'view_args'):
            try:   # the data has the layout's joint count
                get_layout(self.layout, dataset.shape[3])
            except ConfigError as err:
                raise ConfigError(f"{split}_feeder_args.data_path {args.get('data_path')}: clips of shape "
                                  f"(C, T, V, M) = {tuple(dataset.shape[1:])} do not fit the skeleton: {err}") from None
            dataset.view_args.setdefault('layout', self.layout)   # flips use the same joints
        return dataset

    def build_loader(self, dataset, train, batch_size=None):
        """A loader over this rank's shard; the order depends only on (seed, epoch)."""
        batch = batch_size or (self.cfg['batch_size'] if train else self.cfg['test_batch_size'])
        if train:
            if batch % self.world_size:
                raise ConfigError(f'batch_size {batch} is not divisible by the {self.world_size} ranks')
            batch //= self.world_size
        sampler = DistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank,
                                     shuffle=train, seed=self.cfg['seed'], drop_last=False)
        workers = min(self.cfg['num_worker'], os.cpu_count() or 1)
        return DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=train,
                          num_workers=workers, pin_memory=self.device.type == 'cuda',
                          persistent_workers=workers > 0)

    def check_full_batch(self, dataset, split='train'):
        """Training drops the last partial batch: a split smaller than one batch trains nothing."""
        if len(dataset) < self.cfg['batch_size']:
            raise ConfigError(f"batch_size {self.cfg['batch_size']} is larger than the {split} split "
                              f"({len(dataset)} clips of {self.cfg[f'{split}_feeder_args'].get('data_path')}): "
                              'no full batch to train on')

    @staticmethod
    def sample_clips(dataset, count=2):
        """The first `count` clips of `dataset` as a batch, with their item indices."""
        items = list(range(min(count, len(dataset))))
        return torch.stack([dataset[i][0] for i in items]), torch.tensor(items)

    @torch.no_grad()
    def check_fits(self, encoder, x, make_inputs, where):
        """Make the encoder inputs of a couple of raw clips `x` as the run makes them
        (`make_inputs(x)` -> list of tensors: views, stream) and pass them through the encoder
        once in eval mode: a joint, channel, person or frame count that the views or the
        encoder were not built for fails at set-up with the data file named, not at the first
        training step."""
        was_training = encoder.training
        encoder.eval()
        try:
            for inputs in make_inputs(x):
                encoder.extract_feature(inputs.to(self.device))
        except ValueError as err:
            raise ConfigError(f'{where}: clips of shape (C, T, V, M) = {tuple(x.shape[1:])} do not fit '
                              f'the model: {err}') from None
        finally:
            encoder.train(was_training)

    def check_outputs(self, *names):
        """Refuse to replace results of an earlier run in work_dir unless `overwrite` is set."""
        existing = [n for n in names if os.path.exists(os.path.join(self.work_dir, n))]
        if existing and not self.cfg.get('overwrite'):
            raise ConfigError(f'work_dir {self.work_dir} already holds {", ".join(existing)} of an earlier '
                              'run; pass --overwrite true to replace them or choose another work_dir')

    def to_stream(self, x):
        return stream_input(x, self.cfg, self.layout)

    # ------------------------------------------------------------------ optimisation
    def param_groups(self, model):
        """Trainable parameters of `model` in groups {params, weight_decay, lr_scale}: with
        `no_decay_1d`, 1-D tensors get no weight decay; with `layer_decay` < 1, every parameter
        gets lr_scale = layer_decay ** (L - model.layer_id(name)) (L = model.num_layers)."""
        cfg = self.cfg
        decay = cfg['layer_decay']
        if decay < 1 and not hasattr(model, 'layer_id'):
            raise ConfigError(f"option 'layer_decay': model {cfg['model']!r} has no layers to decay (no layer_id)")
        groups = {}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            wd = 0.0 if cfg['no_decay_1d'] and p.dim() == 1 else cfg['weight_decay']
            scale = decay ** (model.num_layers - model.layer_id(name)) if decay < 1 else 1.0
            groups.setdefault((scale, wd), {'params': [], 'weight_decay': wd, 'lr_scale': scale})['params'].append(p)
        return list(groups.values())

    def build_optimizer(self, model):
        """The optimiser over `model`'s trainable parameters, in param_groups(model)."""
        cfg = self.cfg
        groups = self.param_groups(model)
        if cfg['optimizer'] == 'SGD':
            return torch.optim.SGD(groups, lr=cfg['base_lr'], momentum=0.9, nesterov=cfg['nesterov'])
        adam = torch.optim.AdamW if cfg['optimizer'] == 'AdamW' else torch.optim.Adam
        return adam(groups, lr=cfg['base_lr'], betas=tuple(cfg['betas']))

    @property
    def per_iteration_lr(self):
        return self.cfg['lr_schedule'] == 'cosine'

    def lr_at(self, epoch, progress=0.0):
        """lr of 1-based `epoch`, `progress` (fraction of its iterations done) into it.
        step: base_lr * lr_decay_rate ** #{s in step: epoch > s} (reference: SGD only).
        cosine (MAE/MAMP util/lr_sched): e = epoch - 1 + progress; base_lr * e / warmup_epochs
        during warm-up, then min_lr + (base_lr - min_lr) * (1 + cos(pi * (e - w) / (E - w))) / 2."""
        cfg = self.cfg
        if cfg['lr_schedule'] == 'cosine':
            e, warm = epoch - 1 + progress, cfg['warmup_epochs']
            if e < warm:
                return cfg['base_lr'] * e / warm
            span = max(cfg['num_epoch'] - warm, 1e-12)
            return cfg['min_lr'] + (cfg['base_lr'] - cfg['min_lr']) * 0.5 * (1.0 + math.cos(math.pi * (e - warm) / span))
        if cfg['optimizer'] != 'SGD' or not cfg['step']:
            return cfg['base_lr']
        return cfg['base_lr'] * cfg['lr_decay_rate'] ** sum(epoch > s for s in cfg['step'])

    def set_lr(self, optimizer, epoch, progress=0.0):
        lr = self.lr_at(epoch, progress)
        for group in optimizer.param_groups:
            group['lr'] = lr * group.get('lr_scale', 1.0)
        return lr

    def writer(self, name):
        return summary_writer(os.path.join(self.work_dir, name), enabled=self.is_main)

    def progress(self, iterable, **kwargs):
        from tqdm import tqdm
        return tqdm(iterable, disable=not self.interactive, leave=False, dynamic_ncols=True, **kwargs)

    def start(self):
        raise NotImplementedError
