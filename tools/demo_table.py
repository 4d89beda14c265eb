"""The demo's closing table: the self-supervised encoder vs its untrained twin vs a 1-NN on
the raw coordinates, on the same test clips.

    python tools/demo_table.py --work_dir work_dir/demo/skeletonclr \
        --train data/demo_frame50/train_position.npy --test data/demo_frame50/val_position.npy
    python tools/demo_table.py --work_dir W0 W1 W2 --out work_dir/demo/seeds_summary.json

Reads `<work_dir>/{linear,knn,untrained_linear,untrained_knn}/` (results.json, knn_results.json),
computes the raw-coordinate 1-NN with the k-NN task's rule (cosine similarity of the
flattened, preprocessed clips), prints the table and writes `<work_dir>/demo_summary.json`.
With several work_dirs (one per seed) it also prints each figure as a range over them (min-max)
and writes that to `--out`.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from feeder.array_feeder import read_labels  # noqa: E402
from processor.knn_retrieval import knn_predict  # noqa: E402
from torchlight import files  # noqa: E402


def raw_knn_top1(train_path, test_path, k=1):
    """Top-1 of a k-NN on the flattened clips (cosine similarity, as knn_retrieval)."""
    def load(path):
        data = np.load(path, mmap_mode='r')
        _, labels = read_labels(path.replace('_position.npy', '_label.pkl').replace('_data.npy', '_label.pkl'),
                                expected=len(data))
        return torch.from_numpy(np.array(data, dtype=np.float32).reshape(len(data), -1)), torch.tensor(labels)
    train_x, train_y = load(train_path)
    test_x, test_y = load(test_path)
    return (knn_predict(train_x, train_y, test_x, k) == test_y).float().mean().item()


def read_row(work_dir, linear, knn):
    lin = json.load(open(os.path.join(work_dir, linear, 'results.json')))
    neighbours = json.load(open(os.path.join(work_dir, knn, 'knn_results.json')))
    return {'linear_top1_final': lin['final_epoch']['accuracy']['1'],
            'linear_top1_best': lin['best_epoch']['top1'],
            'knn_top1': neighbours['k=1']}


def fmt(value):
    return '      -' if value is None else f'{100 * value:6.2f}%'


def one_run(work_dir, ssl, untrained, raw_top1):
    """Print one run's table and write its demo_summary.json; returns the summary."""
    rows = {'self-supervised encoder': ssl, 'untrained encoder (same seed)': untrained,
            'raw coordinates': {'linear_top1_final': None, 'linear_top1_best': None, 'knn_top1': raw_top1}}
    print(f"\n{'':32s} {'k-NN top-1':>10s} {'linear final':>13s} {'linear best*':>13s}")
    for name, row in rows.items():
        print(f"{name:32s} {fmt(row['knn_top1']):>10s} {fmt(row['linear_top1_final']):>13s} "
              f"{fmt(row['linear_top1_best']):>13s}")
    print('* best epoch selected on the test split (reference protocol); k-NN: k=1, cosine similarity')
    gain = {key: ssl[key] - untrained[key] for key in ('knn_top1', 'linear_top1_final')}
    print(f"self-supervision gain over the untrained twin: k-NN {100 * gain['knn_top1']:+.2f} points, "
          f"linear {100 * gain['linear_top1_final']:+.2f} points\n")
    summary = {'rows': rows, 'gain': gain}
    files.write_json(os.path.join(work_dir, 'demo_summary.json'), summary)
    return summary


def seed_ranges(summaries):
    """{figure: [min, max]} over runs, for the SSL and untrained rows and the gains."""
    figures = {}
    for row, short in (('self-supervised encoder', 'ssl'), ('untrained encoder (same seed)', 'untrained')):
        for key in ('knn_top1', 'linear_top1_final'):
            figures[f'{short}_{key}'] = [s['rows'][row][key] for s in summaries]
    for key in ('knn_top1', 'linear_top1_final'):
        figures[f'gain_{key}'] = [s['gain'][key] for s in summaries]
    return {name: [min(values), max(values)] for name, values in figures.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work_dir', nargs='+', default=['work_dir/demo/skeletonclr'],
                        help='one run folder, or one per seed')
    parser.add_argument('--train', default='data/demo_frame50/train_position.npy')
    parser.add_argument('--test', default='data/demo_frame50/val_position.npy')
    parser.add_argument('--out', help='with several work_dirs: where to write the ranges (JSON)')
    args = parser.parse_args(argv)
    runs = {}
    for work_dir in args.work_dir:   # every run is read before anything is printed or written
        try:
            runs[work_dir] = (read_row(work_dir, 'linear', 'knn'),
                              read_row(work_dir, 'untrained_linear', 'untrained_knn'))
        except (OSError, ValueError, KeyError) as err:
            print(f'error: {work_dir}: not a finished demo run ({type(err).__name__}: {err})', file=sys.stderr)
            return 2
    raw_top1 = raw_knn_top1(args.train, args.test)
    summaries = []
    for work_dir, (ssl, untrained) in runs.items():
        if len(runs) > 1:
            print(f'\n{work_dir}')
        summaries.append(one_run(work_dir, ssl, untrained, raw_top1))
    if len(summaries) > 1:
        ranges = seed_ranges(summaries)
        print(f'over {len(summaries)} runs (min-max):')
        for name, (low, high) in ranges.items():
            print(f'  {name:30s} {100 * low:+7.2f} .. {100 * high:+7.2f}' if name.startswith('gain')
                  else f'  {name:30s} {100 * low:6.2f}% .. {100 * high:6.2f}%')
        if args.out:
            files.write_json(args.out, {'work_dirs': args.work_dir, 'min_max': ranges,
                                        'runs': summaries})
    return 0


if __name__ == '__main__':
    sys.exit(main())
