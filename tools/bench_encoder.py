"""Time the ST-GCN encoder: forward and forward+backward at the AimCLR pretraining shape.

    python tools/bench_encoder.py                 # batch 128, T 50, V 25, M 2, hidden 16
    python tools/bench_encoder.py --profile       # plus a torch.profiler op table
    python tools/bench_encoder.py --threads 1 --clock cpu   # robust when other jobs share the CPU
"""
import argparse
import os
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from net.st_gcn import Model  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--batch', type=int, default=128)
    p.add_argument('--frames', type=int, default=50)
    p.add_argument('--persons', type=int, default=2)
    p.add_argument('--hidden', type=int, default=16)
    p.add_argument('--repeat', type=int, default=5)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: leave default)')
    p.add_argument('--clock', choices=('wall', 'cpu'), default='wall',
                   help='cpu: process CPU time (use with --threads 1 on a shared machine)')
    p.add_argument('--profile', action='store_true', help='print a torch.profiler op table')
    return p.parse_args()


def count_flops(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def best_ms(fn, repeat, warmup, clock=time.perf_counter):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return 1e3 * min(times), 1e3 * sorted(times)[len(times) // 2]


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Model(in_channels=3, hidden_channels=args.hidden, hidden_dim=256, num_class=128).train()
    x = torch.randn(args.batch, 3, args.frames, 25, args.persons)

    def fwd():
        with torch.no_grad():
            model(x)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    print(f'torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch} '
          f'(N*M = {args.batch * args.persons}), T {args.frames}, hidden {args.hidden}, '
          f'{args.clock} clock')
    for name, fn in (('forward', fwd), ('forward+backward', fwd_bwd)):
        flops = count_flops(fn)
        clock = time.process_time if args.clock == 'cpu' else time.perf_counter
        best, median = best_ms(fn, args.repeat, args.warmup, clock)
        print(f'{name:>17}: best {best:8.1f} ms  median {median:8.1f} ms  '
              f'{flops / 1e9:7.1f} GFLOP  {flops / best / 1e6:6.1f} GFLOP/s')

    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fwd_bwd()
        print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=25))


if __name__ == '__main__':
    main()
