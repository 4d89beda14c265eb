"""One pretraining engine for every method: views -> streams -> method loss -> step -> log/save.

Every step draws its augmentation parameters and its dropout stream from
(seed, epoch, step, rank), and the data order from (seed, epoch). A run resumed from
`checkpoint_last.pt` therefore continues exactly as if it had never stopped.
"""
import contextlib
import inspect
import math
import os
import time

import torch
from torch.nn.parallel import DistributedDataParallel

from feeder.views import make_views
from processor.base import BASE_OPTIONS, Processor
from torchlight import dist
from torchlight.config import ConfigError, Opt
from torchlight.io import atomic_save, read_checkpoint, reference_state_dict, state_mismatch
from torchlight.registry import MODELS, TASKS

RESUME_FILE = 'checkpoint_last.pt'
STATE_FORMAT = 'skeleton-ssl/train-state/1'

PRETRAIN_OPTIONS = {
    **BASE_OPTIONS,
    'model': Opt('skeletonclr', str, 'method class (skeletonclr, aimclr, asar or a reference dotted name)'),
    'num_epoch': Opt(300, int, 'number of epochs'),
    'save_interval': Opt(5, int, 'epochs between reference-format checkpoints epoch{E}_model.pt (-1: only the last)'),
    'eval_interval': Opt(-1, int, 'unused by pretraining (evaluate with linear_evaluation / knn_retrieval)'),
    'amp': Opt('off', str, "'off' (exact fp32) or 'bf16' autocast"),
    'compile': Opt(False, bool, 'torch.compile the query encoder'),
    'sync_bn': Opt(True, bool, 'under torchrun: batch-norm statistics over the global batch '
                               '(torch SyncBatchNorm on CUDA, torchlight.dist.SyncBatchNorm on gloo)'),
}


class PretrainProcessor(Processor):
    options = PRETRAIN_OPTIONS
    description = 'self-supervised pretraining of a method on the training split'
    # {method constructor argument: top-level option} passed when the method names the
    # argument (reference files keep e.g. AimCLR's mining_epoch/topk at the top level);
    # model_args entries win.
    method_options = {}
    behaviour_scope = 'pretrain'
    frozen_steps = 0   # steps of the current epoch the method ran without an update

    def method_kwargs(self):
        if not self.method_options or self.cfg['model'] not in MODELS:
            return {}   # build_model reports a bad model name
        params = inspect.signature(MODELS.get(self.cfg['model'])).parameters
        named = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        return {arg: self.cfg[option] for arg, option in self.method_options.items()
                if arg in named and arg not in self.cfg['model_args']}

    def validate(self):
        super().validate()
        if self.cfg['amp'] not in ('off', 'bf16'):
            raise ConfigError(f"option 'amp' must be off or bf16, got {self.cfg['amp']!r}")
        if self.cfg['phase'] != 'train':
            raise ConfigError('pretraining has no test phase: evaluate with linear_evaluation or knn_retrieval')

    # ------------------------------------------------------------------ setup
    def setup(self):
        cfg = self.cfg
        self.dataset = self.build_dataset('train')
        self.check_full_batch(self.dataset)
        self.loader = self.build_loader(self.dataset, train=True)
        self.model = self.build_model(**self.method_kwargs()).to(self.device)
        self.load_weights(self.model)
        self.check_views_fit()
        if self.world_size > 1 and cfg['sync_bn']:
            self.model = dist.convert_sync_batchnorm(self.model)   # same parameters and keys
        self.view_kinds = type(self.model).views
        self.view_args = self.dataset.view_args
        self.optimizer = self.build_optimizer(self.model)
        self.net = self.model
        if cfg['compile']:
            self.model.encoder_q.compile()   # in place: state-dict keys stay unchanged
        if self.world_size > 1:
            # Buffers (queue, BN statistics) are kept in step by the method itself.
            self.net = DistributedDataParallel(self.model, broadcast_buffers=False)
        if cfg['amp'] == 'bf16' and self.device.type == 'cpu':
            self.log('warning: amp: bf16 on the CPU is much slower than fp32 on CPUs without bf16 '
                     'matrix units; it is meant for CUDA')
        self.warn_stale_queue()
        self.log(f'[Network] Total number of parameters : {self.count_parameters(self.model) / 1e6:.3f} M')
        self.log(f'Training on {len(self.dataset)} clips {tuple(self.dataset.shape[1:])}, '
                 f'{len(self.loader)} iterations/epoch, views {self.view_kinds}, device {self.device}, '
                 f'{self.world_size} rank(s)')

    def warn_stale_queue(self):
        """A queue of negatives as long as the data set holds keys of the query's own clip (older
        views of it), which the loss then pushes away: MoCo degrades on small data."""
        size = getattr(self.model, 'K', None)
        if isinstance(size, int) and size >= len(self.dataset):
            self.log(f'warning: queue_size {size} >= {len(self.dataset)} training clips: the queue holds '
                     f"stale keys of every query's own clip; use a queue well below the data set size "
                     f'(e.g. model_args.queue_size {max(1, len(self.dataset) // 4)})')

    def check_views_fit(self):
        """The method's views of two training clips go through the query encoder once."""
        x, items = self.sample_clips(self.dataset)
        gen = dist.generator(self.cfg['seed'], 'set-up check')
        lengths = self.dataset.frame_counts(items)
        self.check_fits(self.model.encoder_q, x, lambda clips: [self.to_stream(v) for v in make_views(
            clips, type(self.model).views, gen, self.dataset.view_args, lengths)],
            f"train_feeder_args.data_path {self.dataset.data_path}")

    # ------------------------------------------------------------------ resume
    def resume_path(self):
        last = os.path.join(self.work_dir, RESUME_FILE)
        choice = self.cfg['resume']
        if not choice:
            if os.path.exists(last):
                raise ConfigError(f'{self.work_dir} already holds a training run ({RESUME_FILE}); '
                                  'continue it with --resume auto or choose another work_dir')
            return None
        if choice == 'auto':
            return last if os.path.exists(last) else None
        if not os.path.isfile(choice):
            raise ConfigError(f'resume checkpoint not found: {choice}')
        return choice

    def restore(self):
        path = self.resume_path()
        if path is None:
            if self.cfg['resume']:
                self.log('resume: no checkpoint yet, starting from scratch')
            return self.cfg['start_epoch']
        state = read_checkpoint(path, 'resume checkpoint')
        if not isinstance(state, dict) or state.get('format') != STATE_FORMAT:
            raise ConfigError(f'resume checkpoint {path} is not a training state of this framework '
                              f'(those are the {RESUME_FILE} files pretraining writes)')
        mismatch = state_mismatch(state['model'], self.model.state_dict(), limit=3)
        if mismatch:
            raise ConfigError(f'resume checkpoint {path} was written by a different model '
                              f'(model / model_args differ): {mismatch}')
        self.model.load_state_dict(state['model'])
        try:
            self.optimizer.load_state_dict(state['optimizer'])
        except (ValueError, KeyError) as err:
            raise ConfigError(f'resume checkpoint {path}: its optimizer state does not fit '
                              f'(optimizer {self.cfg["optimizer"]!r}): {err}') from None
        self.log(f'Resumed from {path} after epoch {state["epoch"]}')
        return state['epoch']

    def save_state(self, epoch):
        if not self.is_main:
            return
        atomic_save({'format': STATE_FORMAT, 'epoch': epoch, 'model': self.model.state_dict(),
                     'optimizer': self.optimizer.state_dict()},
                    os.path.join(self.work_dir, RESUME_FILE))
        every = self.cfg['save_interval']
        if epoch == self.cfg['num_epoch'] or (every > 0 and epoch % every == 0):
            atomic_save(reference_state_dict(self.model), os.path.join(self.work_dir, f'epoch{epoch}_model.pt'))

    # ------------------------------------------------------------------ training
    def autocast(self):
        if self.cfg['amp'] == 'bf16':
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, x, epoch, step, lengths=None):
        """One optimisation step on raw clips x (true frame counts `lengths`, if known); returns
        the method's output dict (detached)."""
        seed = self.cfg['seed']
        gen = dist.generator(seed, 'views', epoch, step, self.rank)
        views = [self.to_stream(v) for v in make_views(x, self.view_kinds, gen, self.view_args, lengths)]
        torch.manual_seed(dist.stream_seed(seed, 'torch', epoch, step, self.rank))
        with self.autocast():
            out = self.net(*views, epoch=epoch)
        loss = out['loss']
        if not torch.isfinite(loss):
            raise FloatingPointError(f'loss became {loss.item()} at epoch {epoch} step {step}')
        if loss.requires_grad:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if hasattr(self.model, 'after_step'):
                self.model.after_step()   # e.g. AS-CAL's EMA of the key encoder, after the step
        else:   # the method computed its loss without gradient: a warm-up step (AS-CAL epoch 1)
            self.frozen_steps += 1
        return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in out.items()}

    def train_epoch(self, epoch, writer):
        self.model.train()
        lr = self.set_lr(self.optimizer, epoch)
        self.loader.sampler.set_epoch(epoch)
        totals, count = {}, 0
        self.frozen_steps = 0
        started = time.perf_counter()
        bar = self.progress(self.loader, desc=f'epoch {epoch}/{self.cfg["num_epoch"]}')
        for step, (x, _, items) in enumerate(bar):
            if self.per_iteration_lr:   # cosine schedule: lr moves every iteration (MAE/MAMP)
                lr = self.set_lr(self.optimizer, epoch, step / len(self.loader))
            x = x.to(self.device, non_blocking=True).float()
            lengths = self.dataset.frame_counts(items)
            out = self.train_step(x, epoch, step, None if lengths is None else lengths.to(self.device))
            count += 1
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + v
            global_step = (epoch - 1) * len(self.loader) + step
            writer.add_scalar('batch_loss', out['loss'], global_step)
            writer.add_scalar('lr', lr, global_step)
            bar.set_postfix(loss=f'{out["loss"]:.4f}', lr=f'{lr:.5f}')
            if (step + 1) % self.cfg['log_interval'] == 0:
                self.log(f'Epoch {epoch} Iter {step + 1}/{len(self.loader)} | loss: {out["loss"]:.4f} | lr: {lr:.6f}')
        means = {k: dist.all_reduce_mean(v / count) for k, v in totals.items()}
        for k, v in means.items():
            writer.add_scalar(k if k != 'loss' else 'loss', v, epoch)
        writer.add_scalar('epoch', epoch, epoch)
        seconds = time.perf_counter() - started
        clips = count * self.cfg['batch_size']
        writer.add_scalar('clips_per_s', clips / seconds, epoch)
        self.log(f'Epoch {epoch} done | ' + ' | '.join(f'{k}: {v:.4f}' for k, v in means.items())
                 + f' | lr: {lr:.6f} | {seconds:.1f} s, {clips / seconds:.1f} clips/s'
                 + (f' | {self.frozen_steps} steps without update (method warm-up)' if self.frozen_steps else ''))
        return means

    def start(self):
        self.setup()
        first = self.restore()
        self.accept()
        if first >= self.cfg['num_epoch']:
            self.log(f'Nothing to do: {first} of {self.cfg["num_epoch"]} epochs already done')
            return {}
        writer = self.writer('train')
        history = {}
        try:
            for epoch in self.progress(range(first + 1, self.cfg['num_epoch'] + 1), desc='epochs'):
                history = self.train_epoch(epoch, writer)
                if not math.isfinite(history.get('loss', 0.0)):
                    raise FloatingPointError(f'mean loss of epoch {epoch} is not finite')
                self.save_state(epoch)
        finally:
            writer.close()
        dist.barrier()
        return history


@TASKS.register('pretrain_skeletonclr', aliases=['processor.pretrain_skeletonclr.SkeletonCLR_Processor'])
class SkeletonCLRPretrain(PretrainProcessor):
    description = 'pretrain SkeletonCLR (MoCo, two normal views, InfoNCE)'
