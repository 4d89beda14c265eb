#!/usr/bin/env python
"""Linear top-1 (final epoch) against pretraining time, one point per method and stream, from
the JSON rows that tools/run_benchmark.py writes; baselines (no pretraining) as horizontal lines.

    python tools/plot_results.py --results docs/results/nw_ucla.json --out docs/results/nw_ucla_time.png
"""
import argparse
import itertools
import json
import os
import sys

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt   # noqa: E402

MARKERS = {'joint': 'o', 'motion': 's', 'bone': '^'}


def plot(rows, out, title):
    groups = {}
    for r in rows:
        if r.get('kind') == 'ensemble':
            continue
        groups.setdefault((r['method'], r['stream'], r['kind'], r.get('epochs') or 0), []).append(r)
    fig, ax = plt.subplots(figsize=(11, 5.5))
    methods = sorted({m for (m, _, k, _) in groups if k == 'ssl'})
    epoch_counts = {}   # several pretraining lengths of one method and stream: say which point is which
    for (m, stream, k, epochs) in groups:
        epoch_counts.setdefault((m, stream), set()).add(epochs)
    palette = 10 if len(methods) <= 10 else 20   # distinct colours for up to 20 methods
    colours = plt.get_cmap(f'tab{palette}')
    baseline_styles = itertools.cycle(['--', ':', '-.', (0, (5, 1)), (0, (1, 3))])
    for (method, stream, kind, epochs), rs in sorted(groups.items()):
        acc = [r['linear_top1_final'] for r in rs]
        mean = sum(acc) / len(acc)
        if kind != 'ssl':
            if stream == 'joint':
                ax.axhline(mean, color='grey', linestyle=next(baseline_styles), linewidth=1,
                           label=f'{method} ({mean:.1f}%)')
            continue
        minutes = [r['pretrain_seconds'] / 60 for r in rs]
        x = sum(minutes) / len(minutes)
        colour = colours(methods.index(method) % palette)
        ax.errorbar(x, mean, yerr=[[mean - min(acc)], [max(acc) - mean]] if len(acc) > 1 else None,
                    marker=MARKERS.get(stream, 'o'), color=colour, capsize=3, linestyle='none',
                    label=f'{method}, {stream}'
                    + (f', {epochs} epochs' if len(epoch_counts[(method, stream)]) > 1 else '')
                    + (f' ({len(acc)} seeds)' if len(acc) > 1 else ''))
    ax.set_xlim(left=0)
    ax.set_xlabel('pretraining time (minutes, as measured: see each row\'s device)')
    ax.set_ylabel('linear top-1, final epoch (%)')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))   # outside: no point hidden
    # a long legend (one entry per row and baseline) gets the height it needs, not a clipped tail
    entries = len(ax.get_legend_handles_labels()[0])
    fig.set_size_inches(11, max(5.5, 0.15 * entries + 0.8))
    fig.tight_layout()
    os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches='tight')
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--results', required=True, help='JSON rows of tools/run_benchmark.py')
    p.add_argument('--out', required=True, help='PNG to write')
    p.add_argument('--title', default='NW-UCLA cross-view (test view 3)')
    args = p.parse_args(argv)
    try:
        with open(args.results) as f:
            rows = json.load(f)
    except (OSError, ValueError) as err:
        print(f'error: cannot read {args.results}: {err}', file=sys.stderr)
        return 2
    if not isinstance(rows, list) or not all(isinstance(r, dict) and 'linear_top1_final' in r for r in rows):
        print(f'error: {args.results}: expected a list of result rows with linear_top1_final', file=sys.stderr)
        return 2
    plot(rows, args.out, args.title)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
