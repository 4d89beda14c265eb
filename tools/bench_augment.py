"""Throughput of the AimCLR view pipeline (`feeder.views.make_views`, as training runs it):
clips/s = N / time to make (extreme, normal, normal) for one batch.

    python tools/bench_augment.py [--batch 128] [--frames 50] [--iters 50] [--aug-method 12345]
                                  [--threads 2] [--glibc-default-malloc]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from feeder import views  # noqa: E402
from torchlight import dist  # noqa: E402

KINDS = ('extreme', 'normal', 'normal')


def make_views(x, gen, aug_method):
    args = {'shear_amplitude': 0.5, 'temperal_padding_ratio': 6, 'aug_method': aug_method}
    return views.make_views(x, KINDS, gen, args)


def clips_per_second(x, aug_method, iters, warmup=5):
    """(median, best) clips/s over `iters` timed batches; the median resists a busy machine."""
    gen = torch.Generator().manual_seed(0)
    synchronize = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for _ in range(warmup):
        make_views(x, gen, aug_method)
    seconds = []
    for _ in range(iters):
        synchronize()
        start = time.perf_counter()
        make_views(x, gen, aug_method)
        synchronize()
        seconds.append(time.perf_counter() - start)
    seconds.sort()
    return x.shape[0] / seconds[len(seconds) // 2], x.shape[0] / seconds[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--frames', type=int, default=50)
    parser.add_argument('--joints', type=int, default=25)
    parser.add_argument('--persons', type=int, default=2)
    parser.add_argument('--iters', type=int, default=50)
    parser.add_argument('--aug-method', default='12345')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--glibc-default-malloc', action='store_true',
                        help='skip dist.keep_freed_memory(), which main.py applies (for comparison)')
    args = parser.parse_args()
    if not args.glibc_default_malloc:
        dist.keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = (args.batch, 3, args.frames, args.joints, args.persons)
    devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    for device in devices:
        x = torch.randn(shape, device=device)
        median, best = clips_per_second(x, args.aug_method, args.iters)
        threads = f', {torch.get_num_threads()} threads' if device == 'cpu' else ''
        print(f'{device}{threads}: {median:,.0f} clips/s median, {best:,.0f} best  (shape {shape}, '
              f'aug_method={args.aug_method!r}, views: extreme + 2 normal)')


if __name__ == '__main__':
    main()
