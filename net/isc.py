"""skeleton-contrast (ISC, Thoker et al. ACM MM 2021): intra- and inter-skeleton MoCo
(reference doc ISC 3.3).

Intra-skeleton (`isc`): MoCo v2 on two `crop_pose` views of one representation (encoder
`isc_gru`, `agcn` or `hcn`): logits [q.k, q.queue] / T, cross-entropy with target 0.

Inter-skeleton (`isc_inter`): two representations s1 (`base_encoder`) and s2 (`second_encoder`)
with four encoders: q = f_q(view 1), r = f_r(view 1), k = f_k(view 2), l = f_l(view 2). Every
positive pair is cross-representation and cross-view, and the negatives come from the other
representation's queue:
    loss = CE([q.l, q.Queue_S2] / T) + CE([r.k, r.Queue_S1] / T);  Queue_S1 <- k, Queue_S2 <- l.

Both keep the reference buffer and module names (`queue`/`queue_ptr`; `Queue_S1`, `queue_ptr_S1`,
`Queue_S2`, `queue_ptr_S2`; `encoder_{q,k,r,l}`), so a released pretraining checkpoint loads
into the pretraining model. Unlike the reference (nn.DataParallel, state changed on replicas),
the EMA and the enqueue happen in place, and keys of all ranks are gathered before they enter
a queue; any batch size works (the pointer wraps).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from net.moco import MoCo, enqueue_, momentum_update_
from net.skeletonclr import SkeletonCLR, top1_positive
from torchlight.config import ConfigError, check_kwargs
from torchlight.registry import ENCODERS, MODELS

VIEWS = ('crop_pose', 'crop_pose')


def add_mlp_head(encoder_q, encoder_k):
    """Reference `--mlp`: fc -> Sequential(Linear(d, d), ReLU, fc) (keys fc.0, fc.2), the old fc
    keeping its encoder initialisation; then the key encoder copies the query, frozen."""
    for encoder in (encoder_q, encoder_k):
        width = encoder.fc.weight.shape[1]
        encoder.fc = nn.Sequential(nn.Linear(width, width), nn.ReLU(), encoder.fc)
    encoder_k.load_state_dict(encoder_q.state_dict())
    encoder_k.requires_grad_(False)


def contrastive_loss(logits):
    """Cross-entropy with the positive in column 0."""
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


@MODELS.register('isc', aliases=['moco.builder_intra.MoCo', 'net.isc.ISC'])
class ISC(SkeletonCLR):
    """Intra-skeleton contrast. Encoders use their own reference initialisation; with
    `pretrain=False` (evaluation) the `num_class`-way fc is initialised N(0, 0.01), bias 0,
    as the reference linear evaluation does."""

    views = VIEWS

    def __init__(self, base_encoder='isc_gru', pretrain=True, feature_dim=128, queue_size=16384,
                 momentum=0.999, Temperature=0.07, mlp=True, num_class=60, **encoder_args):
        super().__init__(base_encoder, pretrain, feature_dim, queue_size, momentum, Temperature,
                         mlp=False, num_class=num_class, key_init='copy', init_weights=False,
                         **encoder_args)
        if not pretrain:
            nn.init.normal_(self.encoder_q.fc.weight, 0.0, 0.01)
            nn.init.zeros_(self.encoder_q.fc.bias)
        elif mlp:
            add_mlp_head(self.encoder_q, self.encoder_k)


@MODELS.register('isc_inter', aliases=['moco.builder_inter.MoCo', 'net.isc.ISCInter'])
class ISCInter(MoCo):
    """Inter-skeleton contrast. `base_encoder` (s1: encoder_q / encoder_k, flat encoder
    arguments in model_args, as for every method) and `second_encoder` (s2: encoder_r /
    encoder_l, arguments in `second_encoder_args`). Reference pairs: seq+graph = (isc_gru, agcn)
    (the released scripts), graph+image = (agcn, hcn); seq+image = (isc_gru, hcn) crashes in the
    reference and works here.

    With `pretrain=False` only the s1 query encoder exists (as for MoCo); evaluate the s2 branch
    with `model: isc`, its encoder and `weights_prefix: encoder_r.`.
    """

    views = VIEWS

    def __init__(self, base_encoder='isc_gru', second_encoder='agcn', pretrain=True, feature_dim=128,
                 queue_size=16384, momentum=0.999, Temperature=0.07, mlp=True, num_class=60,
                 second_encoder_args=None, **encoder_args):
        super().__init__(base_encoder, pretrain, feature_dim, queue_size, momentum, Temperature,
                         mlp=False, num_class=num_class, key_init='copy', init_weights=False,
                         **encoder_args)
        if not pretrain:
            return
        # the reference names: Queue_S1 holds s1 keys (k), Queue_S2 s2 keys (l)
        self.register_buffer('Queue_S1', self._buffers.pop('queue'))
        self.register_buffer('queue_ptr_S1', self._buffers.pop('queue_ptr'))
        self.register_buffer('Queue_S2', F.normalize(torch.randn(feature_dim, self.K), dim=0))
        self.register_buffer('queue_ptr_S2', torch.zeros(1, dtype=torch.long))
        try:
            second_cls = ENCODERS.get(second_encoder)
        except KeyError as err:
            raise ConfigError(f'model_args.second_encoder: {err.args[0]}') from None
        args = dict(second_encoder_args or {})
        check_kwargs(args, 'model_args.second_encoder_args', second_cls)
        try:
            self.encoder_r = second_cls(num_class=feature_dim, **args)
        except ConfigError as err:   # the encoder names its key as model_args.KEY
            message = str(err)
            message = (message.replace('model_args.', 'model_args.second_encoder_args.', 1)
                       if message.startswith('model_args.') else f'model_args.second_encoder_args: {message}')
            raise ConfigError(message) from None
        self.encoder_l = second_cls(num_class=feature_dim, **args)
        self.encoder_l.load_state_dict(self.encoder_r.state_dict())
        self.encoder_l.requires_grad_(False)
        if mlp:
            add_mlp_head(self.encoder_q, self.encoder_k)
            add_mlp_head(self.encoder_r, self.encoder_l)

    def momentum_update(self):
        momentum_update_(self.encoder_k, self.encoder_q, self.m)
        momentum_update_(self.encoder_l, self.encoder_r, self.m)

    def contrast(self, views, epoch):
        x_1, x_2 = views
        q = self.query(x_1)
        r = F.normalize(self.encoder_r(x_1), dim=1)
        with torch.no_grad():
            self.momentum_update()
            k = F.normalize(self.encoder_k(x_2), dim=1)
            l = F.normalize(self.encoder_l(x_2), dim=1)
        # queues are read before this step's keys are written (clones keep autograd's copy intact)
        logits_1 = self.logits(q, l, self.Queue_S2.clone())
        logits_2 = self.logits(r, k, self.Queue_S1.clone())
        loss_1, loss_2 = contrastive_loss(logits_1), contrastive_loss(logits_2)
        enqueue_(self.Queue_S1, self.queue_ptr_S1, k)
        enqueue_(self.Queue_S2, self.queue_ptr_S2, l)
        return {'loss': loss_1 + loss_2, 'loss_s1': loss_1.detach(), 'loss_s2': loss_2.detach(),
                'pos_top1_s1': top1_positive(logits_1.detach()),
                'pos_top1_s2': top1_positive(logits_2.detach())}
