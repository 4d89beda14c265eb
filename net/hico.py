"""HiCo: hierarchical contrast on four levels with five MoCo queues (reference spec 4.3).

Query/key encoders are HiCoEncoders with the five reference projectors. With zc, zp (N, G, D)
and zt, zs, zi (N, D) L2-normalised, and the key encoder updated by EMA before it runs:
  clip     : anchor qc[:,0], positives all G key levels kc[:,0..G-1], negatives c_queue (D, G*K)
  part     : the same with qp, kp, p_queue
  domain   : qt vs ks (negatives s_queue) and qs vs kt (negatives t_queue), cross-domain
  instance : qi vs ki, negatives i_queue
loss = sum of the five InfoNCE terms (weight 1), T = 0.2. All G key levels of every sample
enter c_queue / p_queue (sample-major, as the reference writes them).

Fixed reference bugs, with compat switches where results may depend on them:
* `queue_ptr_mod`: 'GK' (default) wraps the clip/part pointers at the queue's true length
  G*K; 'K' is the reference behaviour (only the first K of the G*K columns are ever written).
* the multi-positive loss is logsumexp(all) - logsumexp(positives), not log of a sum of
  softmax probabilities (which underflows); mathematically the same value.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from net.hico_encoder import HiCoEncoder, xavier_init
from net.moco import encoder_kwargs, momentum_update_, write_queue_
from torchlight import dist
from torchlight.config import ConfigError
from torchlight.registry import ENCODERS, MODELS

QUEUE_PTR_MODES = ('GK', 'K')


def info_nce(positive, negative):
    """Mean over rows of -log(sum_pos exp / sum_all exp) for logits already divided by T:
    positive (N, P), negative (N, K). With P = 1 this is cross-entropy with target 0."""
    logits = torch.cat([positive, negative], dim=1)
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(positive, dim=1)).mean()


@MODELS.register('hico', aliases=['hico.builder.HiCo'])
class HiCo(nn.Module):
    views = ('crop_pose', 'crop_pose')
    # `behaviour: reference`: clip/part pointers wrap at K (6,144 columns stay random);
    # `fixed`: at the true length G*K
    behaviours = {'pretrain': {'reference': {'model_args.queue_ptr_mod': 'K'},
                               'fixed': {'model_args.queue_ptr_mod': 'GK'}}}

    def __init__(self, base_encoder='hico_encoder', pretrain=True, feature_dim=128, queue_size=2048,
                 momentum=0.999, Temperature=0.2, num_class=60, queue_ptr_mod='GK', **encoder_args):
        super().__init__()
        encoder_cls = ENCODERS.get(base_encoder)
        if not issubclass(encoder_cls, HiCoEncoder):
            raise ConfigError(f'model_args.base_encoder: HiCo needs the hierarchical encoder (hico_encoder), got base_encoder {base_encoder!r}')
        if queue_ptr_mod not in QUEUE_PTR_MODES:
            raise ConfigError(f'model_args.queue_ptr_mod must be one of {QUEUE_PTR_MODES}, got {queue_ptr_mod!r}')
        args = encoder_kwargs(encoder_cls, encoder_args)
        self.pretrain = pretrain
        if not pretrain:
            self.encoder_q = encoder_cls(num_class=num_class, **args)
            xavier_init(self.encoder_q.hi_encoder)
            nn.init.normal_(self.encoder_q.fc.weight, 0.0, 0.01)   # reference linear evaluation
            nn.init.zeros_(self.encoder_q.fc.bias)
            return
        self.K, self.m, self.T = int(queue_size), float(momentum), float(Temperature)
        self.queue_ptr_mod = queue_ptr_mod
        self.encoder_q = encoder_cls(num_class=feature_dim, projectors=True, **args)
        self.encoder_k = encoder_cls(num_class=feature_dim, projectors=True, **args)
        xavier_init(self.encoder_q)
        self.encoder_k.load_state_dict(self.encoder_q.state_dict())
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.G = self.encoder_q.hi_encoder.granularity
        # buffer names and order as the reference checkpoint
        for level, length in (('c', self.G * self.K), ('p', self.G * self.K), ('t', self.K),
                              ('s', self.K), ('i', self.K)):
            self.register_buffer(f'{level}_queue', F.normalize(torch.randn(feature_dim, length), dim=0))
            self.register_buffer(f'{level}_queue_ptr', torch.zeros(1, dtype=torch.long))

    # ------------------------------------------------------------------ pieces
    @torch.no_grad()
    def momentum_update(self):
        momentum_update_(self.encoder_k, self.encoder_q, self.m)

    @staticmethod
    def normalised(outputs):
        return [F.normalize(z, dim=-1) for z in outputs]

    @torch.no_grad()
    def enqueue_keys(self, kc, kp, kt, ks, ki):
        """All ranks' keys into the five queues (identical on every rank)."""
        period = self.G * self.K if self.queue_ptr_mod == 'GK' else self.K
        for level, keys, mod in (('c', kc, period), ('p', kp, period), ('t', kt, self.K),
                                 ('s', ks, self.K), ('i', ki, self.K)):
            keys = dist.all_gather_cat(keys.detach().contiguous())
            write_queue_(getattr(self, f'{level}_queue'), getattr(self, f'{level}_queue_ptr'),
                         keys.reshape(-1, keys.shape[-1]), mod)

    def losses(self, q, k):
        """The five terms from normalised query / key outputs (zc, zp, zt, zs, zi) and the
        queues as they are before this step's keys are written."""
        qc, qp, qt, qs, qi = q
        kc, kp, kt, ks, ki = k
        T = self.T

        def single(a, b, queue):
            return info_nce((a * b).sum(1, keepdim=True) / T, a @ queue.clone() / T)

        def multi(anchor, keys, queue):
            return info_nce(torch.einsum('nd,ngd->ng', anchor, keys) / T, anchor @ queue.clone() / T)

        return {'loss_clip': multi(qc[:, 0], kc, self.c_queue),
                'loss_part': multi(qp[:, 0], kp, self.p_queue),
                'loss_domain_t': single(qt, ks, self.s_queue),
                'loss_domain_s': single(qs, kt, self.t_queue),
                'loss_instance': single(qi, ki, self.i_queue)}

    # ------------------------------------------------------------------ public API
    def extract_feature(self, x):
        return self.encoder_q.extract_feature(x)

    def forward(self, *views, epoch=1):
        if not self.pretrain:
            return self.encoder_q(views[0])
        x_q, x_k = views
        q = self.normalised(self.encoder_q(x_q))
        with torch.no_grad():
            self.momentum_update()
            k = self.normalised(self.encoder_k(x_k))
        out = self.losses(q, k)
        with torch.no_grad():   # the reference logs the instance-level (K+1)-way top-1
            qi, ki = q[4].detach(), k[4]
            pos = (qi * ki).sum(1)
            out['pos_top1'] = (pos >= (qi @ self.i_queue).amax(1)).float().mean()
        self.enqueue_keys(*k)
        out['loss'] = sum(out[name] for name in list(out) if name.startswith('loss_'))
        return out
