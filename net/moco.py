"""MoCo machinery shared by SkeletonCLR, AimCLR and ASAR (reference doc 3.4).

The method owns the query/key encoders, the key queue (D, K) and its pointer. Keys from all
ranks are gathered before they enter the queue, and the pointer moves once per step, so the
queue is the same on every rank and equal to a single process with the global batch.
"""
import inspect

import torch
import torch.nn as nn
import torch.nn.functional as F

from net.init import weights_init
from torchlight import dist
from torchlight.config import ConfigError
from torchlight.registry import ENCODERS


def encoder_kwargs(encoder_cls, kwargs):
    """The subset of `kwargs` the encoder constructor names explicitly."""
    names = inspect.signature(encoder_cls).parameters
    return {k: v for k, v in kwargs.items() if k in names}


@torch.no_grad()
def momentum_update_(key_encoder, query_encoder, m):
    """In place, over parameters (not buffers): theta_k <- m theta_k + (1 - m) theta_q."""
    q_params = [p.detach() for p in query_encoder.parameters()]
    k_params = [p.data for p in key_encoder.parameters()]
    torch._foreach_mul_(k_params, m)
    torch._foreach_add_(k_params, q_params, alpha=1.0 - m)


@torch.no_grad()
def write_queue_(queue, queue_ptr, keys, period=None):
    """Write the (n, D) keys as columns of `queue` (D, L) from the pointer on, wrapping at L
    (at most the last L keys); the pointer then advances modulo `period` (default L; HiCo's
    reference clip/part queues use their per-group length K)."""
    size = queue.shape[1]
    n = keys.shape[0]
    if n > size:
        keys, n = keys[-size:], size
    ptr = int(queue_ptr)
    index = (ptr + torch.arange(n, device=queue.device)) % size
    queue[:, index] = keys.T.to(queue.dtype)
    queue_ptr[0] = (ptr + n) % (period or size)


@torch.no_grad()
def enqueue_(queue, queue_ptr, keys):
    """Write the (N, D) keys of every rank into `queue` (D, K) from `queue_ptr` on (write_queue_)."""
    write_queue_(queue, queue_ptr, dist.all_gather_cat(keys.detach()))


class MoCo(nn.Module):
    """Base for queue-based methods. Subclasses implement `contrast(views, epoch)`.

    With `pretrain=False` only `encoder_q` exists, with a `num_class`-way fc, and the
    forward returns its logits (the reference evaluation wrapper).
    `key_init: 'copy'` copies the initialised query encoder into the key encoder;
    `'reference'` initialises them independently, as the reference code effectively does.
    """

    views = ('normal', 'normal')

    def __init__(self, base_encoder='net.st_gcn.Model', pretrain=True, feature_dim=128,
                 queue_size=32768, momentum=0.999, Temperature=0.07, mlp=True, num_class=60,
                 key_init='copy', init_weights=True, **encoder_args):
        super().__init__()
        if key_init not in ('copy', 'reference'):
            raise ConfigError(f"model_args.key_init must be 'copy' or 'reference', got {key_init!r}")
        encoder_cls = ENCODERS.get(base_encoder)
        self.pretrain = pretrain
        self.K = int(queue_size)
        self.m = float(momentum)
        self.T = float(Temperature)
        args = encoder_kwargs(encoder_cls, encoder_args)
        if not pretrain:
            self.encoder_q = encoder_cls(num_class=num_class, **args)
            if init_weights:
                self.encoder_q.apply(weights_init)
            return
        self.encoder_q = encoder_cls(num_class=feature_dim, **args)
        self.encoder_k = encoder_cls(num_class=feature_dim, **args)
        if mlp:
            width = self.encoder_q.fc.weight.shape[1]
            for enc in (self.encoder_q, self.encoder_k):
                enc.fc = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, feature_dim))
        if init_weights:
            self.encoder_q.apply(weights_init)
            if key_init == 'reference':
                self.encoder_k.apply(weights_init)
        if key_init == 'copy' or not init_weights:
            self.encoder_k.load_state_dict(self.encoder_q.state_dict())
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.register_buffer('queue', F.normalize(torch.randn(feature_dim, self.K), dim=0))
        self.register_buffer('queue_ptr', torch.zeros(1, dtype=torch.long))

    # ------------------------------------------------------------------ pieces
    def momentum_update(self):
        """theta_k <- m theta_k + (1 - m) theta_q over parameters (not buffers)."""
        momentum_update_(self.encoder_k, self.encoder_q, self.m)

    def enqueue(self, keys):
        """Write the (N, D) keys of every rank into the queue, wrapping at its end."""
        enqueue_(self.queue, self.queue_ptr, keys)

    def logits(self, q, k, queue):
        """[q.k, q.Queue] / T, shape (N, 1 + K); the positive is column 0."""
        positive = (q * k).sum(dim=1, keepdim=True)
        negative = q @ queue
        return torch.cat([positive, negative], dim=1) / self.T

    @torch.no_grad()
    def key(self, x_k):
        self.momentum_update()
        return F.normalize(self.encoder_k(x_k), dim=1)

    def query(self, x):
        return F.normalize(self.encoder_q(x), dim=1)

    # ------------------------------------------------------------------ public API
    def extract_feature(self, x):
        """Pooled feature of the query encoder (the input of its fc)."""
        return self.encoder_q.extract_feature(x)

    def forward(self, *views, epoch=1):
        if not self.pretrain:
            return self.encoder_q(views[0])
        return self.contrast(views, epoch)

    def contrast(self, views, epoch):
        raise NotImplementedError
