"""AS-CAL (Rao, Xu et al., Information Sciences 2021): MoCo on an RNN encoder (reference doc 5).

One step on two AS-CAL views (x_q, x_k) of the same clips:
    q = f_q(x_q), k = f_k(x_k) (no gradient): raw temporal-mean RNN outputs, NOT L2-normalised
    logits = [q.k, q.Queue] / T                    (Queue read before this step's keys enter it)
    loss = infonce: CE(logits, 0) | logit: BCE(sigmoid([l_0, -l_1..K]), 1) | MTrip: hinge
    enqueue k (all ranks' keys), then, AFTER the optimiser step (`after_step`),
    theta_k <- m theta_k + (1 - m) theta_q.
Epochs <= queue_warmup_epochs (reference: 1) only fill the queue: the loss is computed without
gradient, so the engine makes no update and no EMA step.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from net.moco import MoCo, encoder_kwargs
from net.skeletonclr import top1_positive
from torchlight.config import ConfigError
from torchlight.registry import ENCODERS, MODELS


def infonce_loss(logits):
    """NCESoftmaxLoss: cross-entropy with the positive in column 0."""
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def logistic_loss(logits):
    """NTLogistic: binary cross-entropy with target 1 on [l_0, -l_1, ..., -l_K], mean over all."""
    signed = torch.cat([logits[:, :1], -logits[:, 1:]], dim=1)
    return F.binary_cross_entropy_with_logits(signed, torch.ones_like(signed))


def triplet_loss(logits, margin=1.0):
    """TripletMarginLoss(1): mean over rows and negatives of max(0, margin + l_neg - l_pos)."""
    return (margin + logits[:, 1:] - logits[:, :1]).clamp(min=0).mean()


LOSSES = {'infonce': infonce_loss, 'logit': logistic_loss, 'MTrip': triplet_loss}


@MODELS.register('ascal', aliases=['net.ascal.ASCAL'])
class ASCAL(MoCo):
    """`queue_size` (reference nce_k, 16384), `Temperature` (nce_t, 0.06), `momentum` (alpha,
    0.999), `loss_type` (lossType), `queue_warmup_epochs` (1); encoder arguments
    (`hidden_units`, `lstm_layer`, `tap`, `input_size`, ...) go to `base_encoder`.
    With `pretrain=False` only `encoder_q` exists, with a `num_class`-way fc (the linear
    classifier, N(0, 0.01)), and forward returns its logits.
    """

    views = ('ascal1', 'ascal2')
    # `behaviour: reference`: unnormalised gausFilter kernel in pretraining; semi-supervised
    # subset = first clips of each class in file order, stage 1 keeps the best-training-accuracy
    # model for stage 2 (a linear evaluation on all labels). `fixed`: our choices.
    behaviours = {
        'pretrain': {'reference': {'train_feeder_args.blur_normalized': False},
                     'fixed': {'train_feeder_args.blur_normalized': True}},
        'finetune': {'reference': {'train_feeder_args.subset_rule': 'first', 'keep_best_train': True},
                     'fixed': {'train_feeder_args.subset_rule': 'balanced', 'keep_best_train': False}}}

    def __init__(self, base_encoder='ascal_lstm', pretrain=True, queue_size=16384, momentum=0.999,
                 Temperature=0.06, loss_type='infonce', queue_warmup_epochs=1, num_class=60,
                 **encoder_args):
        # MoCo's constructor builds projection heads and an L2-normalised queue, which AS-CAL
        # does not have; its queue, EMA and logits methods are reused as they are.
        nn.Module.__init__(self)
        if loss_type not in LOSSES:
            raise ConfigError(f'model_args.loss_type must be one of {sorted(LOSSES)}, got {loss_type!r}')
        encoder_cls = ENCODERS.get(base_encoder)
        args = encoder_kwargs(encoder_cls, encoder_args)
        self.pretrain = pretrain
        if not pretrain:
            self.encoder_q = encoder_cls(num_class=num_class, **args)
            return
        self.K, self.m, self.T = int(queue_size), float(momentum), float(Temperature)
        self.loss_type = loss_type
        self.queue_warmup_epochs = int(queue_warmup_epochs)
        self.encoder_q = encoder_cls(num_class=None, **args)
        self.encoder_k = encoder_cls(num_class=None, **args)
        self.encoder_k.load_state_dict(self.encoder_q.state_dict())   # reference: moment_update(.., 0)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        dim = self.encoder_q.feature_dim
        bound = 1.0 / math.sqrt(dim / 3)   # reference MemoryMoCo: U(-s, s), s = 1/sqrt(D/3)
        self.register_buffer('queue', torch.rand(dim, self.K) * (2 * bound) - bound)
        self.register_buffer('queue_ptr', torch.zeros(1, dtype=torch.long))

    def train(self, mode=True):
        super().train(mode)
        if self.pretrain:
            self.encoder_k.eval()   # the reference runs model_ema in eval mode
        return self

    def warming_up(self, epoch):
        return epoch <= self.queue_warmup_epochs

    def contrast(self, views, epoch):
        x_q, x_k = views
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.warming_up(epoch)):
            q = self.encoder_q(x_q)
            with torch.no_grad():
                k = self.encoder_k(x_k)
            logits = self.logits(q, k, self.queue.clone())
            loss = LOSSES[self.loss_type](logits)
        self.enqueue(k)
        return {'loss': loss, 'pos_top1': top1_positive(logits.detach()),
                'prob': logits[:, 0].detach().mean()}   # reference 'prob': mean positive logit

    @torch.no_grad()
    def after_step(self):
        """Called by the engine after the optimiser step: the EMA of the key encoder."""
        self.momentum_update()
