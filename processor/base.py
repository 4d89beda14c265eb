"""The engine shared by every task: options, work dir, device, model/weights, data, optimiser."""
import inspect
import os
import sys
import time

import torch
from torch.utils.data import DataLoader, DistributedSampler

from feeder.class_names import load_class_names
from feeder.layouts import get_layout
from feeder.streams import to_stream
from torchlight import dist
from torchlight.config import ConfigError, Opt, build_config, check_kwargs, dump
from torchlight.io import Logger, load_weights, summary_writer
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
    'optimizer': Opt('SGD', str, 'SGD | Adam'),
    'base_lr': Opt(0.01, float, 'initial learning rate'),
    'step': Opt([], (list, int), 'epochs after which lr is multiplied by lr_decay_rate'),
    'lr_decay_rate': Opt(0.1, float, 'factor applied to lr at every epoch in step (AS-CAL linear evaluation: 0.5)'),
    'nesterov': Opt(True, bool, 'Nesterov momentum for SGD'),
    'weight_decay': Opt(1e-4, float, 'weight decay'),
    # -- accepted for compatibility with reference files of other tasks
    'mining_epoch': Opt(int(1e6), int, 'AimCLR: epoch after which nearest neighbours are mined'),
    'topk': Opt(1, int, 'AimCLR: neighbours mined per view'),
}


class Processor:
    """Base task. Subclasses extend `options` and implement `start()`."""

    options = BASE_OPTIONS
    description = ''

    def __init__(self, cfg, argv=()):
        self.cfg = cfg
        self.validate()
        self.layout = self.configured_layout()
        self.device = dist.resolve_device(cfg['device'], cfg['use_gpu'], dist.local_rank())
        dist.init_distributed(self.device)
        self.rank, self.world_size = dist.rank(), dist.world_size()
        self.is_main = self.rank == 0
        self.work_dir = cfg['work_dir']
        os.makedirs(self.work_dir, exist_ok=True)
        self.log = Logger(self.work_dir if cfg['save_log'] else None,
                          enabled=self.is_main, print_log=cfg['print_log'])
        if self.is_main:
            self._write_config(argv)
        dist.seed_everything(cfg['seed'] + self.rank, cfg['deterministic'])
        self.interactive = sys.stdout.isatty() and self.is_main

    # ------------------------------------------------------------------ config
    @classmethod
    def from_argv(cls, argv):
        return cls(build_config(cls.options, argv), argv)

    def validate(self):
        cfg = self.cfg
        if cfg['phase'] not in ('train', 'test'):
            raise ConfigError(f"option 'phase' must be train or test, got {cfg['phase']!r}")
        if cfg['stream'] not in ('joint', 'motion', 'bone'):
            raise ConfigError(f"option 'stream' must be joint, motion or bone, got {cfg['stream']!r}")
        if cfg['optimizer'] not in ('SGD', 'Adam'):
            raise ConfigError(f"option 'optimizer' must be SGD or Adam, got {cfg['optimizer']!r}")
        if cfg['lr_decay_rate'] <= 0:
            raise ConfigError(f"option 'lr_decay_rate' must be > 0, got {cfg['lr_decay_rate']}")
        for key in ('batch_size', 'test_batch_size'):
            if cfg[key] < 1:
                raise ConfigError(f'option {key!r} must be >= 1, got {cfg[key]}')

    def configured_layout(self):
        """The skeleton layout the config names (model_args.graph_args.layout or
        *_feeder_args.layout; a built-in name or a layout file), or None: streams and
        augmentations then infer the built-in layout from the joint count."""
        cfg = self.cfg
        graph_args = cfg['model_args'].get('graph_args')
        named = {f'{split}_feeder_args.layout': cfg[f'{split}_feeder_args'].get('layout')
                 for split in ('train', 'test')}
        named['model_args.graph_args.layout'] = graph_args.get('layout') if isinstance(graph_args, dict) else None
        given = {key: value for key, value in named.items() if value is not None}
        if len({get_layout(value) for value in given.values()}) > 1:
            raise ConfigError(f'the config names different skeleton layouts: {given}')
        return next(iter(given.values()), None)

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
                raise ConfigError(f"{split}_feeder_args.data_path {args.get('data_path')}: {err}") from None
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

    def to_stream(self, x):
        return to_stream(x, self.cfg['stream'], self.layout)

    # ------------------------------------------------------------------ optimisation
    def build_optimizer(self, params):
        cfg = self.cfg
        params = [p for p in params if p.requires_grad]
        if cfg['optimizer'] == 'SGD':
            return torch.optim.SGD(params, lr=cfg['base_lr'], momentum=0.9,
                                   nesterov=cfg['nesterov'], weight_decay=cfg['weight_decay'])
        return torch.optim.Adam(params, lr=cfg['base_lr'], weight_decay=cfg['weight_decay'])

    def lr_at(self, epoch):
        """Reference step schedule (1-based epochs): base_lr * lr_decay_rate ** #{s in step: epoch > s}."""
        if self.cfg['optimizer'] != 'SGD' or not self.cfg['step']:
            return self.cfg['base_lr']
        return self.cfg['base_lr'] * self.cfg['lr_decay_rate'] ** sum(epoch > s for s in self.cfg['step'])

    def set_lr(self, optimizer, epoch):
        lr = self.lr_at(epoch)
        for group in optimizer.param_groups:
            group['lr'] = lr
        return lr

    def writer(self, name):
        return summary_writer(os.path.join(self.work_dir, name), enabled=self.is_main)

    def progress(self, iterable, **kwargs):
        from tqdm import tqdm
        return tqdm(iterable, disable=not self.interactive, leave=False, dynamic_ncols=True, **kwargs)

    def start(self):
        raise NotImplementedError
