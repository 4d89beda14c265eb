#!/usr/bin/env python
"""Fuse the per-sample scores of joint / motion / bone evaluations (reference doc 4.7).

    python tools/ensemble.py --label data/ntu60_frame50/xsub/val_label.pkl \
        --joint work_dir/.../linear_eval/test_result.pkl \
        --motion work_dir/.../test_result.pkl --bone work_dir/.../test_result.pkl \
        [--weights 0.6 0.4 0.6]

    # choose the weights on validation scores, one file per seed and stream (paired by position)
    python tools/ensemble.py --search --label .../val_label.pkl \
        --joint s0/joint.pkl s1/joint.pkl --motion s0/motion.pkl s1/motion.pkl --bone ...

score = w_joint * s_joint + w_motion * s_motion + w_bone * s_bone (raw scores, no softmax), the
reference weights being 0.6 / 0.4 / 0.6. Scores are aligned by sample name (not by file order);
a result file whose sample names differ from the label file's is an error that names them.
Any subset of the streams may be given (at least one). --search tries every weight triple of a
grid (0, 0.1, ..., 1 by default) and ranks them by the mean top-1 over the given runs; among equal
accuracies it keeps the triple whose proportions are nearest the reference's, so the reference
weights stand unless the validation scores say otherwise.
"""
import argparse
import itertools
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from torchlight.files import DataFileError, load_label_pickle, load_pickle  # noqa: E402

STREAMS = ('joint', 'motion', 'bone')
DEFAULT_WEIGHTS = {'joint': 0.6, 'motion': 0.4, 'bone': 0.6}
REFERENCE_WEIGHTS = [DEFAULT_WEIGHTS[s] for s in STREAMS]   # in STREAMS order, as --weights takes them


class EnsembleError(ValueError):
    """Result files that cannot be fused (mismatched sample names or shapes)."""


def _describe(names, limit=10):
    names = sorted(names)
    more = f' ... and {len(names) - limit} more' if len(names) > limit else ''
    return ', '.join(map(str, names[:limit])) + more


def load_labels(path):
    """(sample_names, labels) from a reference label pickle (plain values only)."""
    names, labels = load_label_pickle(path)
    labels = np.asarray(labels, dtype=np.int64)
    if len(set(names)) != len(names):
        raise EnsembleError(f'{path}: duplicate sample names; scores keyed by name cannot be aligned')
    return names, labels


def align(names, scores, where):
    """Stack the {name: score vector} dict `scores` in the order of `names`."""
    if not isinstance(scores, dict):
        raise EnsembleError(f'{where}: expected a {{sample_name: scores}} dict, got {type(scores).__name__}')
    scores = {str(k): v for k, v in scores.items()}
    missing = set(names) - set(scores)
    extra = set(scores) - set(names)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f'{len(missing)} sample(s) of the label file missing: {_describe(missing)}')
        if extra:
            parts.append(f'{len(extra)} sample(s) not in the label file: {_describe(extra)}')
        raise EnsembleError(f'{where}: sample names do not match the label file; ' + '; '.join(parts))
    stacked = np.stack([np.asarray(scores[n], dtype=np.float64).reshape(-1) for n in names])
    return stacked


def topk_accuracy(scores, labels, ks=(1, 5)):
    order = np.argsort(-scores, axis=1, kind='stable')
    return {k: float((order[:, :k] == labels[:, None]).any(axis=1).mean()) for k in ks}


def _labels(label):
    """(names, labels) from a label pickle path or a (names, labels) pair."""
    if isinstance(label, (str, os.PathLike)):
        return load_labels(label)
    return [str(n) for n in label[0]], np.asarray(label[1], dtype=np.int64)


def _stream_scores(names, results):
    """{stream: (N, classes) scores in the order of `names`} for {stream: path or {name: scores}},
    every stream with the same class count."""
    stacked, width = {}, None
    for stream, source in results.items():
        from_file = isinstance(source, (str, os.PathLike))
        where = f'{stream} ({source})' if from_file else stream
        scores = load_pickle(source, f'{stream} result file') if from_file else source
        stacked[stream] = align(names, scores, where)
        if width is not None and stacked[stream].shape[1] != width:
            raise EnsembleError(f'{where}: {stacked[stream].shape[1]} classes, other streams have {width}')
        width = stacked[stream].shape[1]
    return stacked


def ensemble(label, results, weights=None, ks=(1, 5)):
    """Fuse result files.

    label: label pickle path, or (names, labels). results: {stream: path or {name: scores}}.
    weights: {stream: weight}; defaults to 0.6 / 0.4 / 0.6 for joint / motion / bone.
    Returns {'accuracy': {k: fraction}, 'scores': (N, classes) fused scores in label order,
    'names': names, 'per_stream': {stream: {k: fraction}}}.
    """
    names, labels = _labels(label)
    if not results:
        raise EnsembleError('no result files given')
    weights = {**DEFAULT_WEIGHTS, **(weights or {})}
    stacked = _stream_scores(names, results)
    fused = sum(weights[stream] * scores for stream, scores in stacked.items())
    return {'accuracy': topk_accuracy(fused, labels, ks), 'scores': fused, 'names': names,
            'per_stream': {stream: topk_accuracy(scores, labels, ks) for stream, scores in stacked.items()}}


def proportions(weights, streams):
    """The weights of `streams` scaled to sum 1 (rounded), the identity of a fusion."""
    total = sum(weights[s] for s in streams)
    return tuple(round(weights[s] / total, 6) for s in streams)


def search_weights(label, runs, grid=None):
    """Rank fusion weight triples by their mean top-1 over `runs`.

    runs: a list of {stream: path or {name: scores}}, one per seed, all with the same streams.
    grid: the weights each stream may take (default 0, 0.1, ..., 1). Triples with the same
    proportions are one candidate (the smallest is kept, the reference 0.6 / 0.4 / 0.6 as itself,
    and it is always a candidate); the all-zero triple is skipped.
    Returns [(weights {stream: w}, mean top-1, [top-1 per run])], best first (by the count of
    correct clips over all runs); ties go to the proportions nearest the reference's (L1).
    """
    names, labels = _labels(label)
    if not runs:
        raise EnsembleError('no runs to choose weights on')
    streams = [s for s in STREAMS if s in runs[0]]
    stacked = []   # per run: (streams, N, classes)
    for i, run in enumerate(runs):
        if sorted(run) != sorted(streams):
            raise EnsembleError(f'run {i + 1} has streams {sorted(run)}, run 1 has {sorted(streams)}')
        by_stream = _stream_scores(names, run)
        stacked.append(np.stack([by_stream[s] for s in streams]))
    grid = sorted({round(float(w), 6) for w in (np.linspace(0, 1, 11) if grid is None else grid)})
    if any(w < 0 for w in grid):
        raise EnsembleError(f'weights must not be negative: {grid}')
    reference = proportions(DEFAULT_WEIGHTS, streams)
    candidates = {reference: [DEFAULT_WEIGHTS[s] for s in streams]}
    for triple in itertools.product(grid, repeat=len(streams)):
        if sum(triple) > 0:   # product() is ascending, so the first of a proportion is the smallest
            candidates.setdefault(proportions(dict(zip(streams, triple)), streams), list(triple))
    ranked = []
    for key, w in candidates.items():
        correct = [int((np.tensordot(np.array(w), s, axes=1).argmax(1) == labels).sum()) for s in stacked]
        distance = sum(abs(a - b) for a, b in zip(key, reference))
        ranked.append((-sum(correct), distance, dict(zip(streams, w)), [c / len(labels) for c in correct]))
    ranked.sort(key=lambda r: (r[0], r[1]))
    return [(w, float(np.mean(accs)), accs) for _, _, w, accs in ranked]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--label', required=True, help='label pickle of the evaluated split (names, labels); '
                        'with --search, the validation split')
    for stream in STREAMS:
        parser.add_argument(f'--{stream}', nargs='+', metavar='PKL',
                            help=f'test_result.pkl of the {stream} evaluation (with --search: one per run)')
    parser.add_argument('--weights', type=float, nargs=3, metavar=('JOINT', 'MOTION', 'BONE'),
                        default=list(REFERENCE_WEIGHTS),
                        help='fusion weights for joint, motion, bone (default 0.6 0.4 0.6)')
    parser.add_argument('--topk', type=int, nargs='+', default=[1, 5], help='top-k accuracies to report')
    parser.add_argument('--search', action='store_true',
                        help='rank weight triples of --grid by the mean top-1 over the runs given '
                             '(validation scores; never choose weights on the test split)')
    parser.add_argument('--grid', type=float, nargs='+', help='weights tried by --search (default 0 0.1 ... 1)')
    parser.add_argument('--show', type=int, default=10, help='--search: how many triples to list')
    args = parser.parse_args(argv)
    results = {s: getattr(args, s) for s in STREAMS if getattr(args, s)}
    if not results:
        parser.error('give at least one of --joint, --motion, --bone')
    if args.search:
        return _search(parser, args, results)
    if any(len(files) > 1 for files in results.values()):
        parser.error('one result file per stream (several only with --search)')
    results = {s: files[0] for s, files in results.items()}
    try:
        out = ensemble(args.label, results, dict(zip(STREAMS, args.weights)), tuple(args.topk))
    except (EnsembleError, DataFileError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    fmt = lambda acc: '  '.join(f'top{k} {100 * v:.2f}%' for k, v in acc.items())
    for stream, acc in out['per_stream'].items():
        print(f'{stream:<8} (w {dict(zip(STREAMS, args.weights))[stream]:g}): {fmt(acc)}')
    print(f'ensemble ({len(out["names"])} samples): {fmt(out["accuracy"])}')
    return 0


def _search(parser, args, results):
    counts = {s: len(files) for s, files in results.items()}
    if len(set(counts.values())) != 1:
        parser.error(f'--search needs the same number of result files for every stream, got {counts}')
    runs = [{s: files[i] for s, files in results.items()} for i in range(next(iter(counts.values())))]
    try:
        ranked = search_weights(args.label, runs, args.grid)
    except (EnsembleError, DataFileError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    streams = list(ranked[0][0])
    print(f'{len(ranked)} weight triples over {len(runs)} run(s); mean top-1 (per run):')
    for weights, mean, accs in ranked[:args.show]:
        print(' '.join(f'{s} {weights[s]:g}' for s in streams) +
              f': {100 * mean:.2f}% (' + ' / '.join(f'{100 * a:.2f}' for a in accs) + ')')
    reference = next(m for w, m, _ in ranked if w == {s: DEFAULT_WEIGHTS[s] for s in streams})
    print(f'reference {" ".join(f"{DEFAULT_WEIGHTS[s]:g}" for s in streams)}: {100 * reference:.2f}%')
    print('chosen: --weights ' + ' '.join(f'{ranked[0][0].get(s, 0):g}' for s in STREAMS))
    return 0


if __name__ == '__main__':
    sys.exit(main())
