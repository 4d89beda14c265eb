#!/usr/bin/env python
"""Fuse the per-sample scores of joint / motion / bone evaluations (reference doc 4.7).

    python tools/ensemble.py --label data/ntu60_frame50/xsub/val_label.pkl \
        --joint work_dir/.../linear_eval/test_result.pkl \
        --motion work_dir/.../test_result.pkl --bone work_dir/.../test_result.pkl \
        [--weights 0.6 0.4 0.6]

score = w_joint * s_joint + w_motion * s_motion + w_bone * s_bone (raw scores, no softmax), the
reference weights being 0.6 / 0.4 / 0.6. Scores are aligned by sample name (not by file order);
a result file whose sample names differ from the label file's is an error that names them.
Any subset of the streams may be given (at least one).
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from torchlight.files import DataFileError, load_label_pickle, load_pickle  # noqa: E402

STREAMS = ('joint', 'motion', 'bone')
DEFAULT_WEIGHTS = {'joint': 0.6, 'motion': 0.4, 'bone': 0.6}


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


def ensemble(label, results, weights=None, ks=(1, 5)):
    """Fuse result files.

    label: label pickle path, or (names, labels). results: {stream: path or {name: scores}}.
    weights: {stream: weight}; defaults to 0.6 / 0.4 / 0.6 for joint / motion / bone.
    Returns {'accuracy': {k: fraction}, 'scores': (N, classes) fused scores in label order,
    'names': names, 'per_stream': {stream: {k: fraction}}}.
    """
    names, labels = load_labels(label) if isinstance(label, (str, os.PathLike)) else \
        ([str(n) for n in label[0]], np.asarray(label[1], dtype=np.int64))
    if not results:
        raise EnsembleError('no result files given')
    weights = {**DEFAULT_WEIGHTS, **(weights or {})}
    fused, per_stream, width = None, {}, None
    for stream, source in results.items():
        where = f'{stream} ({source})' if isinstance(source, (str, os.PathLike)) else stream
        scores = load_pickle(source, f'{stream} result file') if isinstance(source, (str, os.PathLike)) else source
        stacked = align(names, scores, where)
        if width is not None and stacked.shape[1] != width:
            raise EnsembleError(f'{where}: {stacked.shape[1]} classes, other streams have {width}')
        width = stacked.shape[1]
        per_stream[stream] = topk_accuracy(stacked, labels, ks)
        term = weights[stream] * stacked
        fused = term if fused is None else fused + term
    return {'accuracy': topk_accuracy(fused, labels, ks), 'scores': fused, 'names': names,
            'per_stream': per_stream}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--label', required=True, help='label pickle of the test split (names, labels)')
    for stream in STREAMS:
        parser.add_argument(f'--{stream}', help=f'test_result.pkl of the {stream} evaluation')
    parser.add_argument('--weights', type=float, nargs=3, metavar=('JOINT', 'MOTION', 'BONE'),
                        default=[DEFAULT_WEIGHTS[s] for s in STREAMS],
                        help='fusion weights for joint, motion, bone (default 0.6 0.4 0.6)')
    parser.add_argument('--topk', type=int, nargs='+', default=[1, 5], help='top-k accuracies to report')
    args = parser.parse_args(argv)
    results = {s: getattr(args, s) for s in STREAMS if getattr(args, s)}
    if not results:
        parser.error('give at least one of --joint, --motion, --bone')
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


if __name__ == '__main__':
    sys.exit(main())
