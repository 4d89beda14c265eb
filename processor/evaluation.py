"""Supervised evaluation protocols: linear evaluation, fine-tuning and semi-supervised fine-tuning.

Linear evaluation trains only the classifier `encoder_q.fc` of a frozen encoder in eval mode.
When the training data has no augmentation, the encoder output is the same every epoch, so the
pooled features of both splits are computed once and the classifier is trained on them:
100 epochs then cost one encoder pass (the result equals running the encoder every epoch).
"""
import inspect
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from feeder.views import eval_view, has_augmentation, make_views
from processor.base import BASE_OPTIONS, OVERWRITE_OPTION, Processor
from processor.confusion import write_report
from torchlight import dist
from torchlight.config import ConfigError, Opt, coerce
from torchlight.io import atomic_save, reference_state_dict, write_json, write_pickle
from torchlight.registry import FEEDERS, TASKS

CLASSIFIER_PREFIX = 'encoder_q.fc.'


def tristate(value):
    """'auto', or a boolean given as true/false/yes/no/1/0."""
    if isinstance(value, str) and value.lower() == 'auto':
        return 'auto'
    return coerce(value, bool, 'cache_features')


def view_kind(dataset, train):
    """The view evaluation applies to `dataset` (feeder.views.eval_view), as a config error."""
    try:
        return eval_view(dataset.view_args, train)
    except ValueError as err:
        raise ConfigError(f"{'train' if train else 'test'}_feeder_args: {err}") from None


def eval_inputs(proc, dataset, x, items, train=False, gen=None):
    """Raw loader clips -> encoder input: the split's evaluation view (centre crop for ISC/HiCo
    data, AimCLR 'normal' augmentation when training with it), then the stream."""
    x = x.to(proc.device, non_blocking=True).float()
    kind = view_kind(dataset, train)
    if kind != 'raw':
        lengths = dataset.frame_counts(items)
        lengths = None if lengths is None else lengths.to(proc.device)
        x = make_views(x, (kind,), gen, dataset.view_args, lengths)[0]
    return proc.to_stream(x)


@torch.no_grad()
def extract_features(proc, model, dataset, batch_size=None):
    """Pooled query-encoder features of `dataset` in its order: (features (N, D) float32 CPU,
    labels (N,) int64). The encoder runs in eval mode on the configured stream; under
    torchrun every rank encodes its shard and the results are gathered."""
    loader = proc.build_loader(dataset, train=False, batch_size=batch_size)
    was_training = model.training
    model.eval()
    feats, labels, index = [], [], []
    for x, y, i in proc.progress(loader, desc='features'):
        feats.append(model.extract_feature(eval_inputs(proc, dataset, x, i)).float())
        labels.append(y.to(proc.device))
        index.append(i.to(proc.device))
    model.train(was_training)
    feats, labels, index = (dist.all_gather_cat(torch.cat(t)) for t in (feats, labels, index))
    order = torch.zeros(len(dataset), dtype=torch.long, device=index.device)
    order[index] = torch.arange(len(index), device=index.device)   # padded duplicates collapse
    return feats[order].cpu(), labels[order].cpu()


@torch.no_grad()
def recalibrate_bn(proc, model, dataset):
    """Re-estimates the running statistics of every batch-norm layer of `model` from one pass
    over `dataset` (its evaluation view, no labels used; the cumulative average over batches),
    with everything else in eval mode. An untrained encoder otherwise normalises with the
    initial mean 0 / variance 1 and its pooled features are almost constant."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms:
        return
    was_training = model.training
    model.eval()
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    for x, _, i in proc.progress(proc.build_loader(dataset, train=False), desc='bn statistics'):
        model.extract_feature(eval_inputs(proc, dataset, x, i))
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum
    model.train(was_training)
    proc.log(f'Batch-norm statistics of {len(norms)} layers re-estimated on {len(dataset)} training clips')


class StandardizedLinear(torch.nn.Module):
    """A linear classifier on standardised features: linear((x - mean) * scale), with the
    per-dimension mean and 1 / std of the training clips' features as fixed buffers. A dimension
    that is constant on the training clips (std <= 1e-4 |mean| + 1e-8: below what float32 can
    resolve once folded) gets scale 0: it carries nothing to learn from."""

    def __init__(self, linear, mean, std):
        super().__init__()
        self.linear = linear
        self.register_buffer('mean', mean.detach().clone().float())
        varies = std > 1e-4 * mean.abs() + 1e-8
        self.register_buffer('scale', torch.where(varies, 1.0 / std.clamp_min(1e-8), torch.zeros_like(std)).float())

    def forward(self, x):
        return self.linear((x - self.mean) * self.scale)

    @torch.no_grad()
    def folded(self):
        """{'weight', 'bias'} of the plain nn.Linear that gives the same scores on raw features."""
        weight = self.linear.weight.double() * self.scale.double()
        bias = self.linear.bias.double() - weight @ self.mean.double()
        return {'weight': weight.to(self.linear.weight.dtype), 'bias': bias.to(self.linear.bias.dtype)}


def standardize_classifier(proc, model, train_feats):
    """Wraps `model.encoder_q.fc` in a StandardizedLinear with the statistics of `train_feats`."""
    fc = model.encoder_q.fc
    if not isinstance(fc, torch.nn.Linear):
        raise ConfigError(f'standardize_features needs a plain linear classifier encoder_q.fc, this model has '
                          f'{type(fc).__name__} (MAMP\'s probe normalises with its own BatchNorm1d)')
    mean, std = train_feats.mean(0).to(fc.weight.device), train_feats.std(0).to(fc.weight.device)
    model.encoder_q.fc = StandardizedLinear(fc, mean, std)
    dead = int((model.encoder_q.fc.scale == 0).sum())
    proc.log(f'Classifier trained on standardised features ({train_feats.shape[1]} dims, std over the '
             f'training clips: median {std.median().item():.3g}, min {std.min().item():.3g}, max {std.max().item():.3g}'
             + (f'; {dead} constant dims ignored' if dead else '') + '); folded into encoder_q.fc when saved')


RECALIBRATE_BN_OPTION = Opt(False, bool, 're-estimate the batch-norm statistics of the encoder on the training '
                                         'clips (no labels) before evaluating: the untrained-encoder baseline')


def topk_accuracy(scores, labels, ks):
    """{k: fraction of rows whose label is among the k highest scores} (k >= classes: all hit)."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return {k: hits[:, :k].any(dim=1).float().mean().item() for k in ks}


EVAL_OPTIONS = {
    **BASE_OPTIONS,
    'base_lr': Opt(3.0, float, 'initial learning rate (reference linear evaluation: 3.0)'),
    'step': Opt([80], (list, int), 'epochs after which lr is multiplied by lr_decay_rate'),
    'num_epoch': Opt(100, int, 'number of epochs'),
    'nesterov': Opt(False, bool, 'Nesterov momentum for SGD'),
    'weight_decay': Opt(0.0, float, 'weight decay'),
    'batch_size': Opt(128, int, 'training batch size'),
    'test_batch_size': Opt(128, int, 'evaluation batch size'),
    'show_topk': Opt([1, 5], (list, int), 'top-k accuracies to report'),
    'save_interval': Opt(-1, int, 'epochs between model checkpoints (-1: never; best_model.pt is always kept)'),
    'label_smoothing': Opt(0.0, float, 'label smoothing of the cross-entropy (MAMP fine-tuning: 0.1)'),
    'cache_features': Opt('auto', tristate, "auto | true | false: train the classifier on cached features "
                                       "(auto = when the training data has no augmentation)"),
    'recalibrate_bn': RECALIBRATE_BN_OPTION,
    'standardize_features': Opt(False, bool, 'linear evaluation: train the classifier on features standardised per '
                                             'dimension with the training clips\' mean and std (our option; the '
                                             'reference feeds the raw features, so its lr suits only one feature '
                                             'scale); saved checkpoints hold the equivalent plain classifier'),
    'overwrite': OVERWRITE_OPTION,
}

# What an evaluation writes into work_dir; a re-run refuses to replace them without --overwrite.
EVAL_OUTPUTS = {'train': ('results.json', 'best_model.pt', 'test_result.pkl', 'test_result_final.pkl',
                          'best_train_model.pt'),
                'test': ('test_result.pkl', 'test_results.json')}


def check_inputs_fit(proc, model, dataset, split, train=False):
    """A couple of `split` clips, made as evaluation makes them, through the encoder once."""
    x, items = proc.sample_clips(dataset)
    gen = dist.generator(proc.cfg['seed'], 'set-up check')
    proc.check_fits(model.encoder_q, x, lambda clips: [eval_inputs(proc, dataset, clips, items, train, gen)],
                    f'{split}_feeder_args.data_path {dataset.data_path}')


class ClassifierProcessor(Processor):
    """Trains a classifier on top of an encoder and reports top-k accuracy on the test split."""

    options = EVAL_OPTIONS
    train_encoder = False

    def validate(self):
        super().validate()
        if self.cfg['phase'] == 'train' and self.cfg['num_epoch'] < 1:
            raise ConfigError(f"option 'num_epoch' must be >= 1 to train the classifier, got {self.cfg['num_epoch']}")

    # ------------------------------------------------------------------ setup
    def setup(self):
        cfg = self.cfg
        if cfg['phase'] == 'test' and not cfg['weights']:
            raise ConfigError("phase: test needs 'weights'")
        self.check_outputs(*EVAL_OUTPUTS[cfg['phase']])
        self.test_set = self.build_dataset('test')
        self.train_set = self.build_dataset('train') if cfg['phase'] == 'train' else None
        if self.train_set is not None:
            self.check_full_batch(self.train_set)
        num_class = cfg['model_args'].get('num_class') or (self.train_set or self.test_set).num_class
        self.model = self.build_model(pretrain=False, num_class=num_class).to(self.device)
        self.load_weights(self.model)
        self.configure_trainable()
        trainable = [n for n, p in self.model.named_parameters() if p.requires_grad]
        self.log(f'[Network] {self.count_parameters(self.model) / 1e6:.3f} M parameters, '
                 f'{len(trainable)} trainable tensors')
        self.view_args = self.train_set.view_args if self.train_set else {}
        view_kind(self.test_set, train=False)   # a bad crop setting fails before any work
        check_inputs_fit(self, self.model, self.test_set, 'test')
        if self.train_set is not None:
            check_inputs_fit(self, self.model, self.train_set, 'train', train=True)
        cache = cfg['cache_features']
        self.cached = (not self.train_encoder) and (
            cache is True or (cache == 'auto' and not has_augmentation(self.view_args)))
        if cache is True and has_augmentation(self.view_args):
            raise ConfigError('cache_features: true, but train_feeder_args augment the data '
                              '(cached features would ignore the augmentation)')

    def configure_trainable(self):
        names = [n for n, _ in self.model.named_parameters()]
        if not any(n.startswith(CLASSIFIER_PREFIX) for n in names):
            raise ConfigError('the evaluation model has no encoder_q.fc classifier')
        for name, p in self.model.named_parameters():
            p.requires_grad_(name.startswith(CLASSIFIER_PREFIX))

    # ------------------------------------------------------------------ batches
    def train_batches(self, epoch):
        """Yields (inputs, labels): cached features, or augmented clips through the stream."""
        if self.cached:
            # the same order a single-process loader over the clips would give
            sampler = DistributedSampler(range(len(self.train_feats)), num_replicas=1, rank=0,
                                         shuffle=True, seed=self.cfg['seed'])
            sampler.set_epoch(epoch)
            order = torch.tensor(list(sampler))
            size = self.cfg['batch_size']
            for start in range(0, len(order) - size + 1, size):   # drop_last, as the reference
                idx = order[start:start + size]
                yield self.train_feats[idx].to(self.device), self.train_labels[idx].to(self.device)
            return
        self.loader.sampler.set_epoch(epoch)
        for step, (x, y, items) in enumerate(self.progress(self.loader, desc=f'epoch {epoch}')):
            gen = dist.generator(self.cfg['seed'], 'views', epoch, step, self.rank)
            yield eval_inputs(self, self.train_set, x, items, train=True, gen=gen), y.to(self.device)

    def scores(self, inputs):
        if self.cached:
            return self.model.encoder_q.fc(inputs)
        return self.net(inputs)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self):
        self.model.eval()
        if self.cached:
            logits = self.model.encoder_q.fc(self.test_feats.to(self.device))
            labels = self.test_labels.to(self.device)
        else:
            loader = self.build_loader(self.test_set, train=False)
            parts, ys, idx = [], [], []
            for x, y, i in self.progress(loader, desc='test'):
                parts.append(self.model(eval_inputs(self, self.test_set, x, i)).float())
                ys.append(y.to(self.device))
                idx.append(i.to(self.device))
            logits, labels, index = (dist.all_gather_cat(torch.cat(t)) for t in (parts, ys, idx))
            order = torch.zeros(len(self.test_set), dtype=torch.long, device=index.device)
            order[index] = torch.arange(len(index), device=index.device)
            logits, labels = logits[order], labels[order]
        accuracy = topk_accuracy(logits, labels, self.cfg['show_topk'])
        loss = F.cross_entropy(logits, labels).item()
        return logits.cpu(), accuracy, loss

    def save_scores(self, logits, name):
        if self.is_main and self.cfg['save_result']:
            names = self.test_set.names()
            if len(set(names)) != len(names):
                self.log('warning: duplicate sample names in the test split; scores keyed by name collapse')
            result = {n: s for n, s in zip(names, logits.numpy().astype(np.float32))}
            write_pickle(os.path.join(self.work_dir, name), result)

    def report(self, accuracy, loss, tag):
        text = ' '.join(f'Top{k}: {100 * v:.2f}%' for k, v in accuracy.items())
        self.log(f'{tag} | eval loss {loss:.4f} | {text}')

    # ------------------------------------------------------------------ training
    def start(self):
        self.setup()
        self.accept()
        if self.cfg['phase'] == 'test':
            self.cached = False
            self.net = self.model
            logits, accuracy, loss = self.evaluate()
            self.report(accuracy, loss, 'Test')
            self.save_scores(logits, 'test_result.pkl')
            summary = {'test': accuracy, **self.class_report(logits, 'confusion_test', 'Test')}
            if self.is_main:
                write_json(os.path.join(self.work_dir, 'test_results.json'), summary)
            return summary
        cfg = self.cfg
        if cfg['recalibrate_bn']:
            recalibrate_bn(self, self.model, self.train_set)
        if self.cached:
            self.train_feats, self.train_labels = extract_features(self, self.model, self.train_set)
            self.test_feats, self.test_labels = extract_features(self, self.model, self.test_set)
            self.log(f'Cached features: train {tuple(self.train_feats.shape)}, test {tuple(self.test_feats.shape)}')
        else:
            self.loader = self.build_loader(self.train_set, train=True)
        if cfg['standardize_features']:
            stats = self.train_feats if self.cached else extract_features(self, self.model, self.train_set)[0]
            standardize_classifier(self, self.model, stats)
        self.net = self.model
        if self.world_size > 1 and not self.cached:
            self.net = DistributedDataParallel(self.model)
        optimizer = self.build_optimizer(self.model)
        train_writer, val_writer = self.writer('train'), self.writer('val')
        best = {'top1': -1.0}
        final = {}
        for epoch in self.progress(range(1, cfg['num_epoch'] + 1), desc='epochs'):
            lr = self.set_lr(optimizer, epoch)
            self.set_train_mode()
            losses, hits, seen = [], 0, 0
            steps = self.steps_per_epoch()
            for step, (inputs, labels) in enumerate(self.train_batches(epoch)):
                if self.per_iteration_lr:   # cosine schedule: lr moves every iteration (MAE/MAMP)
                    lr = self.set_lr(optimizer, epoch, step / steps)
                scores = self.scores(inputs)
                loss = F.cross_entropy(scores, labels, label_smoothing=cfg['label_smoothing'])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.clip_gradients()
                optimizer.step()
                losses.append(loss.item())
                hits += (scores.detach().argmax(1) == labels).sum().item()
                seen += len(labels)
            mean_loss = float(np.mean(losses))
            if not np.isfinite(mean_loss):
                raise FloatingPointError(f'train loss of epoch {epoch} is {mean_loss} (lower base_lr?)')
            train_acc = dist.all_reduce_mean(hits / max(seen, 1))
            train_writer.add_scalar('loss', mean_loss, epoch)
            train_writer.add_scalar('top1', train_acc, epoch)
            train_writer.add_scalar('lr', lr, epoch)
            self.log(f'Epoch {epoch} | train loss {mean_loss:.4f} | train top1 {100 * train_acc:.2f}% | lr {lr:.5f}')
            self.after_train_epoch(epoch, train_acc)
            last = epoch == cfg['num_epoch']
            if last or (cfg['eval_interval'] > 0 and epoch % cfg['eval_interval'] == 0):
                logits, accuracy, loss = self.evaluate()
                self.report(accuracy, loss, f'Epoch {epoch}')
                val_writer.add_scalar('eval_loss', loss, epoch)
                for k, v in accuracy.items():
                    val_writer.add_scalar(f'top{k}', v, epoch)
                top1 = accuracy[min(accuracy)]
                if top1 >= best['top1']:
                    best = {'epoch': epoch, 'top1': top1, 'accuracy': accuracy}
                    self.save_model('best_model.pt')
                    self.save_scores(logits, 'test_result.pkl')
                self.log(f'current {100 * top1:.2f}%, best {100 * best["top1"]:.2f}% (epoch {best["epoch"]})')
                if last:
                    final = {'epoch': epoch, 'accuracy': accuracy}
                    self.save_scores(logits, 'test_result_final.pkl')
            if cfg['save_interval'] > 0 and epoch % cfg['save_interval'] == 0:
                self.save_model(f'epoch{epoch}_model.pt')
        train_writer.close()
        val_writer.close()
        summary = {'final_epoch': final, 'best_epoch': best,
                   **self.class_report(logits, 'confusion', f'Final epoch {final["epoch"]}')}
        fmt = lambda acc: ', '.join(f'top{k} {100 * v:.2f}%' for k, v in acc.items())
        self.log(f'RESULT final epoch {final["epoch"]}: {fmt(final["accuracy"])} | '
                 f'best epoch {best["epoch"]} (selected on the test split): {fmt(best["accuracy"])}')
        if self.is_main:
            write_json(os.path.join(self.work_dir, 'results.json'), summary)
        return summary

    def class_report(self, logits, name, title):
        """Confusion matrix PNG and per-class accuracy of the test logits (label order)."""
        num_class = logits.shape[1]
        rows, counts = write_report(self, self.test_set.labels(), logits.argmax(1).numpy(), num_class,
                                    self.class_names(num_class), name, title)
        return {'per_class': {'epoch': title, 'classes': rows}, 'confusion_matrix': counts.tolist()}

    def steps_per_epoch(self):
        if self.cached:
            return max(len(self.train_feats) // self.cfg['batch_size'], 1)
        return max(len(self.loader), 1)

    def set_train_mode(self):
        # linear evaluation: the frozen encoder in eval mode (BN statistics, no dropout); the
        # classifier trains (MAMP's BatchNorm1d(affine=False) head follows batch statistics)
        self.model.eval()
        self.model.encoder_q.fc.train()

    def after_train_epoch(self, epoch, train_acc):
        pass

    def clip_gradients(self):
        pass

    def save_model(self, name):
        if self.is_main:
            state = reference_state_dict(self.model)
            fc = self.model.encoder_q.fc
            if isinstance(fc, StandardizedLinear):   # the reference format: a plain encoder_q.fc
                folded = {CLASSIFIER_PREFIX + k: v.cpu() for k, v in fc.folded().items()}
                state = type(state)((k, v) for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIX))
                state.update(folded)
            atomic_save(state, os.path.join(self.work_dir, name))


@TASKS.register('linear_evaluation', aliases=['processor.linear_evaluation.LE_Processor'])
class LinearEvaluation(ClassifierProcessor):
    description = 'train a linear classifier on the frozen encoder; top-k on the test split'


FINETUNE_OPTIONS = {
    **EVAL_OPTIONS,
    'base_lr': Opt(0.1, float, 'initial learning rate'),
    'weight_decay': Opt(1e-4, float, 'weight decay'),
    'bn_mode': Opt('train', str, "'train' (BN statistics adapt) or 'eval' (the reference: frozen BN, no dropout)"),
    'grad_clip': Opt(0.0, float, 'clip the gradient norm to this value (0: off; reference semi-supervised: 2)'),
    'keep_best_train': Opt(False, bool, 'also save best_train_model.pt at the epoch of the best training top-1 '
                                        '(AS-CAL semi-supervised stage 1; its stage 2 loads that file)'),
}


@TASKS.register('finetune_evaluation', aliases=['processor.finetune_evaluation.FT_Processor'])
class FinetuneEvaluation(ClassifierProcessor):
    description = ('fine-tune the whole network; with train_feeder_args.label_percent < 1 this is '
                   'the semi-supervised protocol')
    options = FINETUNE_OPTIONS
    train_encoder = True
    behaviour_scope = 'finetune'

    def validate(self):
        super().validate()
        if self.cfg['standardize_features']:
            raise ConfigError('standardize_features is for linear evaluation (a frozen encoder), not fine-tuning')
        if self.cfg['bn_mode'] not in ('train', 'eval'):
            raise ConfigError(f"option 'bn_mode' must be train or eval, got {self.cfg['bn_mode']!r}")
        # The labelled subset follows the run's seed unless train_feeder_args.subset_seed is set
        # (recorded in config.yaml, which is written after validation).
        args = self.cfg['train_feeder_args']
        if args and 'subset_seed' not in args and self.cfg['train_feeder'] in FEEDERS and \
                'subset_seed' in inspect.signature(FEEDERS.get(self.cfg['train_feeder'])).parameters:
            self.cfg['train_feeder_args'] = {**args, 'subset_seed': self.cfg['seed']}

    def setup(self):
        super().setup()
        if self.train_set is not None and len(self.train_set) < len(self.train_set.label):
            path = os.path.join(self.work_dir, 'labelled_subset.txt')
            if self.is_main:
                with open(path, 'w') as f:
                    f.write('\n'.join(self.train_set.names()) + '\n')
            self.log(f'Semi-supervised: {len(self.train_set)} of {len(self.train_set.label)} '
                     f'training clips labelled; names in {path}')

    def configure_trainable(self):
        for p in self.model.parameters():
            p.requires_grad_(True)

    def set_train_mode(self):
        self.model.train(self.cfg['bn_mode'] == 'train')

    def after_train_epoch(self, epoch, train_acc):
        if self.cfg['keep_best_train'] and train_acc > getattr(self, 'best_train_acc', -1.0):
            self.best_train_acc = train_acc
            self.save_model('best_train_model.pt')
            self.log(f'best training top1 {100 * train_acc:.2f}% (epoch {epoch}): best_train_model.pt')

    def clip_gradients(self):
        if self.cfg['grad_clip'] > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg['grad_clip'])
