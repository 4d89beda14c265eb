"""Training curves of one or more runs from their tensorboard event files.

    python tools/plot_curves.py --work_dir work_dir/demo/skeletonclr/pretrain \
        work_dir/demo/aimclr/pretrain --out work_dir/curves.png

Draws every scalar tag found (e.g. loss, lr, top1 of linear evaluation) in its own panel,
one line per run.
"""
import argparse
import glob
import math
import os
import sys


def read_scalars(work_dir):
    """{tag: [(step, value), ...]} over the event files under work_dir (train/, val/)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    series = {}
    for events in sorted(glob.glob(os.path.join(work_dir, '**', 'events.out.tfevents.*'), recursive=True)):
        acc = EventAccumulator(events)
        acc.Reload()
        prefix = os.path.relpath(os.path.dirname(events), work_dir)
        for tag in acc.Tags()['scalars']:
            key = tag if prefix == '.' else f'{prefix}/{tag}'
            series.setdefault(key, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {k: sorted(v) for k, v in series.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work_dir', nargs='+', required=True, help='run folders')
    parser.add_argument('--out', required=True, help='PNG to write')
    parser.add_argument('--tags', nargs='*', help='only these tags (default: all but batch-level ones)')
    args = parser.parse_args(argv)
    runs = {d: read_scalars(d) for d in args.work_dir}
    tags = sorted({t for series in runs.values() for t in series})
    tags = [t for t in tags if (t in args.tags if args.tags else not t.endswith(('batch_loss', '/lr', 'epoch')))]
    if not tags:
        sys.exit(f'error: no scalar curves found under {args.work_dir}')
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    cols = min(3, len(tags))
    rows = math.ceil(len(tags) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, tag in zip(axes.flat, tags):
        for run, series in runs.items():
            if tag in series:
                steps, values = zip(*series[tag])
                ax.plot(steps, values, label=os.path.basename(os.path.dirname(run.rstrip('/'))) or run)
        ax.set_title(tag)
        ax.set_xlabel('epoch')
    for ax in list(axes.flat)[len(tags):]:
        ax.axis('off')
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
