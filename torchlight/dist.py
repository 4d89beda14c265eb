"""Device choice, random streams and torch.distributed helpers.

A run is distributed when it was launched by torchrun (WORLD_SIZE > 1 in the environment);
the plain `python main.py ...` path needs no launcher and no process group.
"""
import hashlib
import os
import random

import numpy as np
import torch
import torch.distributed as dist


def resolve_device(device='auto', use_gpu=True, local_rank=0):
    """`device`: 'auto' | 'cpu' | 'cuda' | 'cuda:N' | an int or list of ints (reference style:
    GPU indices). `use_gpu: False` (reference key) forces the CPU."""
    if not use_gpu:
        return torch.device('cpu')
    if isinstance(device, (list, tuple)):
        if len(device) == 0:
            device = 'auto'
        else:
            device = device[local_rank % len(device)] if is_distributed() else device[0]
    if isinstance(device, int):
        if not torch.cuda.is_available():
            return torch.device('cpu')   # reference configs say device: [0]; run anyway
        return torch.device('cuda', device)
    device = str(device)
    if device == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda', local_rank % torch.cuda.device_count())
        return torch.device('cpu')
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise RuntimeError(f'device {device!r} requested but CUDA is not available')
    if device == 'cuda' and is_distributed():
        return torch.device('cuda', local_rank)
    return torch.device(device)


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
