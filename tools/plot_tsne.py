"""t-SNE picture of encoder features, coloured by action label.

    python main.py extract_features --config C --weights W --input data/demo/val_data.npy --output feats.npy
    python tools/plot_tsne.py --features feats.npy --label data/demo/val_label.pkl \
        --classes data/demo/classes.txt --out work_dir/tsne.png

Features are L2-normalised first (the metric k-NN retrieval uses).
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools import data_utils as du  # noqa: E402


def embed(features, seed=0, perplexity=30.0):
    from sklearn.manifold import TSNE
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    perplexity = min(perplexity, max(2.0, (len(x) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init='pca', random_state=seed).fit_transform(x)


def plot(points, labels, class_names, out, title):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap('tab20')
    for c in sorted(set(labels)):
        sel = labels == c
        name = class_names[c] if c < len(class_names) else str(c)
        ax.scatter(points[sel, 0], points[sel, 1], s=8, color=cmap(c % 20), label=name)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2, loc='center left', bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--features', required=True, help='(N, D) .npy written by extract_features')
    parser.add_argument('--label', required=True, help='(names, labels) pickle of the same clips')
    parser.add_argument('--classes', help='optional file with one class name per line')
    parser.add_argument('--out', required=True, help='PNG to write')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--title', default='t-SNE of encoder features')
    args = parser.parse_args(argv)
    features = du.load_npy(args.features, what='features file')
    _, labels = du.load_labels(args.label)
    if features.ndim != 2 or len(features) != len(labels):
        raise du.DataFormatError(f'{args.features} holds {features.shape}, expected ({len(labels)}, D) '
                                 f'to match {args.label}')
    names = open(args.classes).read().split('\n') if args.classes else []
    plot(embed(features, args.seed), np.asarray(labels), [n for n in names if n], args.out, args.title)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    sys.exit(du.cli(main))
