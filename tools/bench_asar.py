"""Cost of ASAR's active sampling: one training step (forward, backward, SGD step) with active
sampling off (epoch <= active_epoch) and on (epoch > active_epoch), on the same inputs, plus the
active-sampling part alone (gradient embedding, k-means, tiering, queue write).

    python tools/bench_asar.py [--batch 128] [--queue 32768] [--hidden 16] [--frames 50]
                               [--steps 3] [--threads 0 (= all)] [--device cpu]

Steps alternate off/on so that load from other processes affects both alike; the median is
reported.
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from net.asar import ASAR  # noqa: E402


def build(args, device):
    torch.manual_seed(0)
    model = ASAR(base_encoder='net.st_gcn.Model', in_channels=3, hidden_channels=args.hidden,
                 hidden_dim=256, dropout=0.5, edge_importance_weighting=True,
                 graph_args={'layout': 'ntu-rgb+d', 'strategy': 'spatial'},
                 feature_dim=128, queue_size=args.queue, active_epoch=150).to(device)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1,
                                momentum=0.9, weight_decay=1e-4)
    return model, optimizer


def timed(fn, device):
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--queue', type=int, default=32768)
    parser.add_argument('--hidden', type=int, default=16)
    parser.add_argument('--frames', type=int, default=50)
    parser.add_argument('--joints', type=int, default=25)
    parser.add_argument('--persons', type=int, default=2)
    parser.add_argument('--steps', type=int, default=3, help='timed steps per setting')
    parser.add_argument('--active-reps', type=int, default=20, help='timed runs of the active part alone')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: all)')
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, optimizer = build(args, device)
    gen = torch.Generator().manual_seed(1)
    shape = (args.batch, 3, args.frames, args.joints, args.persons)
    x_q, x_k = (torch.randn(shape, generator=gen).to(device) for _ in range(2))

    def step(epoch):
        out = model(x_q, x_k, epoch=epoch)
        optimizer.zero_grad(set_to_none=True)
        out['loss'].backward()
        optimizer.step()
        return out

    print(f'ASAR step: batch {args.batch}, K {args.queue}, ST-GCN hidden {args.hidden}, '
          f'T {args.frames}, V {args.joints}, M {args.persons}, device {device}, '
          f'{torch.get_num_threads()} threads')
    t_off = None
    if args.steps > 0:
        t_off = bench_steps(args, model, step, device)
    bench_active(args, model, gen, device, t_off)


def bench_steps(args, model, step, device):
    step(1)
    step(151)                                   # warm-up of both paths
    off, on, written = [], [], []
    for _ in range(args.steps):
        seconds, _ = timed(lambda: step(1), device)
        off.append(seconds)
        seconds, out = timed(lambda: step(151), device)
        on.append(seconds)
        written.append(int(out['enqueued']))
    t_off, t_on = statistics.median(off), statistics.median(on)
    print(f'step, active sampling off: {t_off * 1e3:9.1f} ms  (runs: {", ".join(f"{s:.2f}" for s in off)} s)')
    print(f'step, active sampling on : {t_on * 1e3:9.1f} ms  (runs: {", ".join(f"{s:.2f}" for s in on)} s; '
          f'rows written {written})')
    print(f'ratio on/off: {t_on / t_off:.3f}')
    return t_off


def bench_active(args, model, gen, device, t_off):

    q = F.normalize(torch.randn(args.batch, 128, generator=gen), dim=1).to(device)
    k = F.normalize(torch.randn(args.batch, 128, generator=gen), dim=1).to(device)
    model.active_sample(q, k, 151)
    part = [timed(lambda: model.active_sample(q, k, 151), device)[0] for _ in range(args.active_reps)]
    t_part = statistics.median(part)
    share = f' ({100 * t_part / t_off:.2f}% of the step without it)' if t_off else ''
    print(f'active sampling alone    : {t_part * 1e3:9.2f} ms median of {args.active_reps}{share}')
    model.kmeans_tol = -1.0                     # worst case: k-means never converges early
    part = [timed(lambda: model.active_sample(q, k, 151), device)[0] for _ in range(args.active_reps)]
    print(f'  with all {model.kmeans_iters} k-means iterations: {statistics.median(part) * 1e3:9.2f} ms')


if __name__ == '__main__':
    main()
