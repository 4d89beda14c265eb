"""Device choice, random streams and torch.distributed helpers.

A run is distributed when it was launched by torchrun (WORLD_SIZE > 1 in the environment);
the plain `python main.py ...` path needs no launcher and no process group.
"""
import ctypes
import ctypes.util
import hashlib
import os
import random

import numpy as np
import torch
import torch.distributed as dist

from torchlight.config import ConfigError


# glibc mallopt parameters
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    except OSError:
        return None


def keep_freed_memory(trim_above=2 ** 31 - 1):
    """Ask glibc to serve CPU tensors from its heap instead of fresh mmap'ed memory (threads other
    than the main one still map requests larger than their 64 MB heaps) and to keep up to
    `trim_above` bytes (default 2 GB, mallopt's maximum) of freed heap instead of returning it to
    the OS. SKELETON_SSL_KEEP_MEMORY=0 leaves glibc's defaults (lower resident memory, slower).

    By default glibc maps each allocation above 32 MB (and, after a free, smaller ones) fresh
    from the OS and unmaps it on free, so the next tensor of that size page-faults on every page
    when first written; in this project's VMs that made the batched view pipeline about 1.5-2x
    slower and an AimCLR step at the reference size ~30 % slower (docs/PERFORMANCE.md). The
    resident memory then stays near its peak, as with a caching allocator. Returns False where
    there is no glibc (macOS, Windows, musl): nothing changes there."""
    mallopt = getattr(_libc(), 'mallopt', None)
    if mallopt is None or os.environ.get('SKELETON_SSL_KEEP_MEMORY', '1') == '0':
        return False
    return all(bool(mallopt(param, value)) for param, value in (
        (M_MMAP_THRESHOLD, 32 << 20), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, trim_above)))


def release_freed_memory():
    """Return the heap memory kept by keep_freed_memory to the OS (glibc malloc_trim), e.g.
    before measuring one job's peak resident memory; False without glibc."""
    trim = getattr(_libc(), 'malloc_trim', None)
    return bool(trim(0)) if trim is not None else False


def resolve_device(device='auto', use_gpu=True, local_rank=0):
    """`device`: 'auto' | 'cpu' | 'cuda' | 'cuda:N' | an int or list of ints (reference style:
    GPU indices). `use_gpu: False` (reference key) forces the CPU. 'cuda' / 'cuda:N' on a machine
    without CUDA is a ConfigError; a reference GPU index runs on the CPU, and `cpu_fallback`
    says so, so that the reference YAML files (all `device: [0]`) still run on a CPU machine."""
    if not use_gpu:
        return torch.device('cpu')
    if isinstance(device, (list, tuple)):
        if len(device) == 0:
            device = 'auto'
        else:
            device = device[local_rank % len(device)] if is_distributed() else device[0]
    if isinstance(device, int):   # reference style: a GPU index (reference files say [0])
        if not torch.cuda.is_available():
            return torch.device('cpu')   # the processor logs a warning (cpu_fallback)
        device = f'cuda:{device}'
    device = str(device)
    if device == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda', local_rank % torch.cuda.device_count())
        return torch.device('cpu')
    if device.startswith('cuda'):   # never fall back to the CPU silently
        if not torch.cuda.is_available():
            raise ConfigError(f'option device: {device} asks for a GPU, but CUDA is not available '
                              '(use --device cpu or auto)')
        if device == 'cuda':
            return torch.device('cuda', local_rank) if is_distributed() else torch.device('cuda')
        if int(device[5:]) >= torch.cuda.device_count():
            raise ConfigError(f'option device: {device}, but this machine has '
                              f'{torch.cuda.device_count()} GPU(s)')
    return torch.device(device)


def cpu_fallback(device, use_gpu, resolved):
    """The warning to log when a reference GPU index (`device: [0]`) resolved to the CPU."""
    if use_gpu and isinstance(device, (int, list, tuple)) and resolved.type == 'cpu':
        return (f'warning: device {device} asks for GPU(s), but CUDA is not available: running on the CPU '
                '(set device: cpu to silence this, or use device: cuda to make it an error)')
    return None


def stream_seed(*parts):
    """A 63-bit seed derived from any tuple (seed, purpose, epoch, step, rank, ...): every
    (rank, epoch, step) gets its own, reproducible stream, so a resumed run replays exactly."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, 'little') & ((1 << 63) - 1)


def generator(*parts):
    gen = torch.Generator()
    gen.manual_seed(stream_seed(*parts))
    return gen


def seed_everything(seed, deterministic=False):
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


# ----------------------------------------------------------------------------- distributed
def is_distributed():
    return int(os.environ.get('WORLD_SIZE', '1')) > 1


def init_distributed(device):
    """Join the process group torchrun set up (NCCL on GPU, gloo on CPU). Idempotent."""
    if not is_distributed() or (dist.is_available() and dist.is_initialized()):
        return
    backend = 'nccl' if device.type == 'cuda' else 'gloo'
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)


def rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank():
    return int(os.environ.get('LOCAL_RANK', '0'))


def is_main():
    return rank() == 0


def barrier():
    if world_size() > 1:
        dist.barrier()


@torch.no_grad()
def all_gather_cat(tensor):
    """Concatenate a (N, ...) tensor from every rank along dim 0, in rank order (no gradient).
    Ranks may hold different N (e.g. the last evaluation batch)."""
    if world_size() == 1:
        return tensor
    sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([tensor.shape[0]], device=tensor.device))
    sizes = [int(s.item()) for s in sizes]
    padded = tensor.new_zeros((max(sizes),) + tuple(tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor
    chunks = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(chunks, padded)
    return torch.cat([c[:n] for c, n in zip(chunks, sizes)])


def all_reduce_mean(value):
    if world_size() == 1:
        return value
    tensor = torch.as_tensor(value, dtype=torch.float64, device='cpu' if not torch.cuda.is_available()
                             or not dist.get_backend() == 'nccl' else 'cuda')
    dist.all_reduce(tensor)
    return (tensor / world_size()).item()


def cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- synchronised BN
class _GlobalBatchNorm(torch.autograd.Function):
    """Batch norm over the union of every rank's batch (two all-reduces forward, one backward).

    Forward: global mean, then the global sum of squared deviations (two-pass, as accurate as
    the local kernel). Backward: each rank's input gradient uses the global sums of the
    upstream gradients, so it is the gradient of the sum of all ranks' losses; the weight/bias
    gradients are local and DDP averages them, like every other parameter gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        c = x.shape[1]
        stats = torch.cat([x.sum(dims, dtype=torch.float64),
                           torch.tensor([x.numel() // c], dtype=torch.float64, device=x.device)])
        dist.all_reduce(stats)
        count = stats[-1]
        mean = (stats[:-1] / count).to(x.dtype)
        centred = x - mean.view(shape)
        sq = centred.pow(2).sum(dims, dtype=torch.float64)
        dist.all_reduce(sq)
        var = sq / count
        invstd = torch.rsqrt(var + eps).to(x.dtype)
        xhat = centred.mul_(invstd.view(shape))
        y = xhat * weight.view(shape) + bias.view(shape) if weight is not None else xhat.clone()
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.count = count
        unbiased = var * count / (count - 1).clamp(min=1)
        return y, mean, unbiased.to(x.dtype)

    @staticmethod
    def backward(ctx, grad, _mean_grad, _var_grad):
        xhat, invstd, weight = ctx.saved_tensors
        dims = [0] + list(range(2, grad.dim()))
        shape = [1, -1] + [1] * (grad.dim() - 2)
        local_g = grad.sum(dims)
        local_gx = (grad * xhat).sum(dims)
        sums = torch.cat([local_g, local_gx]).double()
        dist.all_reduce(sums)
        c = local_g.shape[0]
        mean_g = (sums[:c] / ctx.count).to(grad.dtype).view(shape)
        mean_gx = (sums[c:] / ctx.count).to(grad.dtype).view(shape)
        scale = invstd if weight is None else invstd * weight
        gx = (grad - mean_g - xhat * mean_gx) * scale.view(shape)
        gw = local_gx if weight is not None and ctx.needs_input_grad[1] else None
        gb = local_g if weight is not None and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


class SyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics span all ranks, on any backend (gloo on the
    CPU, where torch.nn.SyncBatchNorm refuses to run). Same parameters, buffers and state-dict
    keys as BatchNorm1d/2d; single-process or eval mode falls back to the plain kernel."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f'expected at least 2-D input, got {x.dim()}-D')

    def forward(self, x):
        if not (self.training and world_size() > 1):
            return super().forward(x)
        momentum = self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        y, mean, var = _GlobalBatchNorm.apply(x, self.weight, self.bias, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(var.detach(), alpha=momentum)
        return y


def convert_sync_batchnorm(module):
    """Replace every BatchNorm1d/2d/3d by a synchronised one sharing its parameters and buffers
    (state-dict keys and the optimiser's parameter objects stay the same). CUDA uses
    torch.nn.SyncBatchNorm; other devices use `SyncBatchNorm` above."""
    if any(p.is_cuda for p in module.parameters()):
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        new = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new_child = convert_sync_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
