"""ASAR: adaptive relabeling and active sampling on top of MoCo (ICIP 2023; reference doc 5).

One training step (two normal views x_q, x_k; doc 5.3):

1. EMA update of the key encoder (first, as the reference), q = normalize(f_q(x_q)),
   k = normalize(f_k(x_k)) without gradient.
2. Adaptive relabeling: s = k . Queue / tau_k; the `neighbours` most similar queue entries of
   each key become extra positives with confidence c = 1 - H(softmax(s)) / ln K; the targets
   (1 for the key, c for each neighbour) are normalised to sum to one, so the key weighs
   1 / (1 + n c) and each neighbour c / (1 + n c). Loss = soft cross-entropy against
   log_softmax([q.k, q.Queue] / tau_q).
3. Queue update. Up to epoch `active_epoch` the keys are enqueued as in MoCo. After it, active
   sampling (doc 5.4) decides what is written: the candidates are the N new keys and the N
   queue entries about to be overwritten; each candidate is embedded by the gradient of the
   instance-discrimination loss CE(q . Z^T, arange(N)) with respect to it (closed form, no
   backward pass through f_q); k-means groups the 2N embeddings into N clusters; the reference
   tiering keeps the last-indexed member of every cluster first, and N (or, in a degenerate
   case, all 2N) candidates are written at the pointer, wrapping at the queue end.

Differences from the reference, all deliberate (doc 7.18):

* the dequeued block is transposed (keys are the queue's columns); `asar_compat=True`
  reproduces the reference's untransposed block, which only type-checks when N == D, and its
  zero centroid for empty k-means clusters;
* an empty k-means cluster keeps its previous centroid (reference: the origin);
* k-means is initialised from a torch.Generator seeded from (kmeans_seed, epoch, step of the
  epoch), so runs, resumed runs and all ranks pick the same rows;
* the queue write wraps at the queue end (the reference's 2N write could run past it) and
  never writes more than K rows; the pointer moves by the number of rows written;
* under torchrun the keys and queries of all ranks are gathered first, so every rank selects
  the same rows and the queue stays identical everywhere;
* no shuffle-BN (a no-op on one GPU in the reference) and no extreme view.

The `labels` buffer (K,) int64, filled with -1, is unused; it exists only so that checkpoints
have the reference's 365 keys (the reference linear-evaluation ignore list names it).
"""
import math

import torch
import torch.nn.functional as F

from net.moco import MoCo
from net.skeletonclr import top1_positive
from torchlight import dist
from torchlight.config import ConfigError
from torchlight.registry import MODELS


# ----------------------------------------------------------------------------- relabeling
@torch.no_grad()
def soft_targets(k, queue, neighbours, tau):
    """Adaptive relabeling targets (doc 5.3).

    k: (N, D) normalised keys; queue: (D, K). Returns (targets (N, 1 + K) with rows summing to
    one: column 0 is the key itself, column 1 + j queue entry j; confidence c (N,)).
    """
    # at least fp32, also when autocast ran the product in bf16
    dtype = torch.promote_types(torch.promote_types(k.dtype, queue.dtype), torch.float32)
    s = (k @ queue).to(dtype) / tau                         # (N, K)
    size = s.shape[1]
    index = s.topk(neighbours, dim=1).indices               # (N, n)
    log_p = F.log_softmax(s, dim=1)
    entropy = -(log_p.exp() * log_p).sum(dim=1)
    confidence = 1.0 - entropy / math.log(size)
    targets = s.new_zeros(s.shape[0], 1 + size)
    targets[:, 0] = 1.0
    targets.scatter_(1, index + 1, confidence[:, None].expand(-1, neighbours).contiguous())
    return targets / targets.sum(dim=1, keepdim=True), confidence


# ----------------------------------------------------------------------------- active sampling
def candidate_gradients(q, z):
    """Gradient of L = CE(q . z^T, arange(N)) (mean over the N rows) with respect to z.

    q: (N, D), z: (M, D) with M >= N. Closed form: G_j = (1/N) sum_i (softmax(S_i)_j - [i = j]) q_i,
    S = q z^T. No autograd graph is built.
    """
    with torch.no_grad():
        n = q.shape[0]
        p = torch.softmax(q @ z.T, dim=1)                   # (N, M)
        rows = torch.arange(n, device=q.device)
        p[rows, rows] -= 1.0
        return (p.T @ q) / n                                # (M, D)


@torch.no_grad()
def kmeans(x, n_clusters, generator=None, max_iter=100, tol=1e-4, empty='keep', init=None):
    """Full-batch Lloyd k-means (Euclidean) of the rows of x on x's device.

    Initial centroids: `n_clusters` distinct rows drawn with the CPU `generator` (or the rows
    listed in `init`). Every
    iteration assigns each row to its nearest centroid (first one on ties) and recomputes the
    means; it stops when the squared centroid shift is <= tol (the assignment returned is the
    one made with the centroids that met the tolerance) or after `max_iter` iterations (the
    last assignment made). An empty cluster keeps its previous centroid (`empty='keep'`) or
    moves to the origin (`'zero'`, the reference). Returns (labels (M,) int64, centroids).
    """
    if empty not in ('keep', 'zero'):
        raise ValueError(f"empty must be 'keep' or 'zero', got {empty!r}")
    m = x.shape[0]
    if not 0 < n_clusters <= m:
        raise ValueError(f'cannot make {n_clusters} clusters of {m} points')
    if init is None:
        init = torch.randperm(m, generator=generator)[:n_clusters]
    start = torch.as_tensor(init, dtype=torch.long).to(x.device)
    centroids = x[start]
    x_sq = (x * x).sum(dim=1, keepdim=True)
    labels = None
    for _ in range(max(int(max_iter), 1)):
        distance = x_sq - 2.0 * (x @ centroids.T) + (centroids * centroids).sum(dim=1)[None]
        labels = distance.argmin(dim=1)
        onehot = F.one_hot(labels, n_clusters).to(x.dtype)  # (M, C)
        counts = onehot.sum(dim=0)
        means = (onehot.T @ x) / counts.clamp(min=1.0)[:, None]
        if empty == 'keep':
            means = torch.where((counts > 0)[:, None], means, centroids)
        shift = (means - centroids).pow(2).sum()
        if float(shift) <= tol:
            break
        centroids = means
    return labels, centroids


def tiers(labels, n_clusters):
    """Reference tiering (doc 5.4.4), vectorised: per cluster, the last-indexed member is
    tier 1, the second-to-last tier 2, the third-to-last tier 3 and all earlier ones tier 4."""
    m = labels.numel()
    order = torch.sort(labels, stable=True).indices          # grouped by cluster, by index inside
    sizes = torch.bincount(labels, minlength=n_clusters)
    starts = torch.cumsum(sizes, 0) - sizes
    grouped = labels[order]
    from_end = sizes[grouped] - 1 - (torch.arange(m, device=labels.device) - starts[grouped])
    result = torch.empty_like(labels)
    result[order] = (from_end + 1).clamp(max=4)
    return result


def selection(labels, n_clusters, n_select):
    """Indices of the candidates to enqueue, in write order (doc 5.4.5): tier 1, then 2, 3, 4,
    each in index order; the first `n_select` of them when tiers 1-3 hold at least that many,
    otherwise all candidates."""
    tier = tiers(labels, n_clusters)
    m = labels.numel()
    order = torch.argsort(tier * m + torch.arange(m, device=labels.device))
    if int((tier <= 3).sum()) >= n_select:
        order = order[:n_select]
    return order


# ----------------------------------------------------------------------------- method
@MODELS.register('asar', aliases=['net.asar.ASAR'])
class ASAR(MoCo):
    """ASAR with the reference defaults. Options (beyond MoCo's):

    neighbours: extra positives per key (n); tau_q: temperature of the contrastive logits
    (tau_1); tau_k: temperature of the key-to-queue similarities used for relabeling (tau_2);
    active_epoch: active sampling runs when epoch > active_epoch; asar_compat: reproduce the
    reference's untransposed dequeue block and zero centroids (needs N == feature_dim);
    kmeans_iters / kmeans_tol: Lloyd iteration cap and centroid-shift tolerance; kmeans_seed:
    seed of the k-means initialisation (pretrain_asar sets it to the run's `seed`).
    `Temperature` is accepted for the reference configs but unused (tau_q replaces it).
    """

    views = ('normal', 'normal')
    # `behaviour: reference`: the untransposed dequeue block and zero centroids (asar_compat),
    # key encoder initialised independently; `fixed`: our corrections
    behaviours = {'pretrain': {'reference': {'model_args.asar_compat': True, 'model_args.key_init': 'reference'},
                               'fixed': {'model_args.asar_compat': False, 'model_args.key_init': 'copy'}}}

    def __init__(self, base_encoder='net.st_gcn.Model', pretrain=True, feature_dim=128,
                 queue_size=32768, momentum=0.999, Temperature=0.07, mlp=True, num_class=60,
                 key_init='copy', init_weights=True, neighbours=5, tau_q=0.07, tau_k=0.07,
                 active_epoch=150, asar_compat=False, kmeans_iters=100, kmeans_tol=1e-4,
                 kmeans_seed=0, **encoder_args):
        super().__init__(base_encoder=base_encoder, pretrain=pretrain, feature_dim=feature_dim,
                         queue_size=queue_size, momentum=momentum, Temperature=Temperature,
                         mlp=mlp, num_class=num_class, key_init=key_init,
                         init_weights=init_weights, **encoder_args)
        self.neighbours = int(neighbours)
        self.tau_q = float(tau_q)
        self.tau_k = float(tau_k)
        self.active_epoch = int(active_epoch)
        self.asar_compat = bool(asar_compat)
        self.kmeans_iters = int(kmeans_iters)
        self.kmeans_tol = float(kmeans_tol)
        self.kmeans_seed = int(kmeans_seed)
        if not pretrain:
            return
        if self.K < 2 or not 1 <= self.neighbours <= self.K:
            raise ConfigError(f'model_args.queue_size / neighbours: ASAR needs queue_size >= 2 and '
                              f'1 <= neighbours <= queue_size (got queue_size {self.K}, neighbours {self.neighbours})')
        # Unused; kept so checkpoints carry the reference's keys (doc 3.8).
        self.register_buffer('labels', torch.full((self.K,), -1, dtype=torch.long))
        # Position inside the current epoch, for the k-means seed. A resumed run restarts at an
        # epoch boundary, so it replays the same seeds without a stored counter.
        self._seed_epoch, self._seed_step = None, 0

    def contrast(self, views, epoch):
        x_q, x_k = views
        self.momentum_update()
        q = self.query(x_q)
        with torch.no_grad():
            k = F.normalize(self.encoder_k(x_k), dim=1)
            queue = self.queue.clone()      # read before this step's write
            targets, confidence = soft_targets(k.float(), queue, self.neighbours, self.tau_k)
        positive = (q * k).sum(dim=1, keepdim=True)
        logits = torch.cat([positive, q @ queue.to(q.dtype)], dim=1) / self.tau_q
        loss = -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()
        if epoch > self.active_epoch:
            written = self.active_sample(q.detach(), k, epoch)
        else:
            written = k.shape[0] * dist.world_size()
            self.enqueue(k)
        return {'loss': loss, 'pos_top1': top1_positive(logits.detach()),
                'confidence': confidence.mean(), 'enqueued': float(written)}

    # ------------------------------------------------------------------ active sampling
    def kmeans_generator(self, epoch):
        if epoch != self._seed_epoch:
            self._seed_epoch, self._seed_step = epoch, 0
        gen = dist.generator(self.kmeans_seed, 'asar-kmeans', epoch, self._seed_step)
        self._seed_step += 1
        return gen

    def candidates(self, k):
        """The N new keys followed by the N queue entries the pointer is about to overwrite."""
        n, d = k.shape
        index = (int(self.queue_ptr) + torch.arange(n, device=k.device)) % self.K
        block = self.queue[:, index]                       # (D, N)
        if self.asar_compat:
            if n != d:
                raise ValueError(
                    f'asar_compat reproduces the reference dequeue block Queue[:, ptr:ptr+N] '
                    f'stacked without transposing, which only works when the (global) batch '
                    f'N equals feature_dim D; got N={n}, D={d}. Use asar_compat: false.')
            return torch.cat([k, block])                   # rows N.. are feature dimensions
        return torch.cat([k, block.T])

    @torch.no_grad()
    def active_sample(self, q, k, epoch):
        """Choose and write the rows to enqueue (doc 5.4); returns how many were written."""
        q = dist.all_gather_cat(q.detach()).to(self.queue.dtype)
        k = dist.all_gather_cat(k.detach()).to(self.queue.dtype)
        n = k.shape[0]
        z = self.candidates(k)
        grads = candidate_gradients(q, z)
        labels, _ = kmeans(grads, n, self.kmeans_generator(epoch), self.kmeans_iters,
                           self.kmeans_tol, empty='zero' if self.asar_compat else 'keep')
        chosen = z[selection(labels, n, n)]
        self.write_queue(chosen)
        return min(chosen.shape[0], self.K)

    @torch.no_grad()
    def write_queue(self, rows):
        """Write (R, D) rows at the pointer, wrapping at the queue end; at most K (the last)."""
        if rows.shape[0] > self.K:
            rows = rows[-self.K:]
        r = rows.shape[0]
        ptr = int(self.queue_ptr)
        index = (ptr + torch.arange(r, device=rows.device)) % self.K
        self.queue[:, index] = rows.T.to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + r) % self.K
