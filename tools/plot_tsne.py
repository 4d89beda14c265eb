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
from feeder.class_names import load_class_names  # noqa: E402
from tools import data_utils as du  # noqa: E402


def embed(features, seed=0, perplexity=30.0):
    from sklearn.manifold import TSNE
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    perplexity = min(perplexity, max(2.0, (len(x) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init='pca', random_state=seed).fit_transform(x)


MARKERS = ('o', 's', '^', 'D', 'v', 'P', 'X', '*')


def class_style(index, num_classes):
    """(colour, marker) of a class: tab10/tab20 up to 20 classes; beyond, 60 colours of
    tab20 + tab20b + tab20c, and the marker changes every 60 classes (so 120 classes stay distinct)."""
    import matplotlib.pyplot as plt
    if num_classes <= 10:
        return plt.get_cmap('tab10')(index), 'o'
    if num_classes <= 20:
        return plt.get_cmap('tab20')(index), 'o'
    colours = [plt.get_cmap(name)(i) for name in ('tab20', 'tab20b', 'tab20c') for i in range(20)]
    return colours[index % 60], MARKERS[(index // 60) % len(MARKERS)]


def plot(points, labels, class_names, out, title):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    classes = sorted(set(labels.tolist()))
    columns = 1 + len(classes) // 30
    fig, ax = plt.subplots(figsize=(7 + 2.2 * columns, 6 + max(0, len(classes) - 30) * 0.04))
    for c in classes:
        sel = labels == c
        name = class_names[c] if c < len(class_names) else str(c)
        colour, marker = class_style(c, max(classes) + 1)
        ax.scatter(points[sel, 0], points[sel, 1], s=8, color=colour, marker=marker, label=f'{c} {name[:28]}')
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7 if len(classes) <= 30 else 5, markerscale=2, loc='center left',
              bbox_to_anchor=(1, 0.5), ncol=columns)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--features', required=True, help='(N, D) .npy written by extract_features')
    parser.add_argument('--label', required=True, help='(names, labels) pickle of the same clips')
    parser.add_argument('--classes', help='class names: a file (one per line) or a built-in list (ntu60, '
                                          'ntu120, pkummd, nw-ucla, demo); default: classes.txt beside --label')
    parser.add_argument('--out', required=True, help='PNG to write')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--title', default='t-SNE of encoder features')
    args = parser.parse_args(argv)
    features = du.load_npy(args.features, what='features file')
    _, labels = du.load_labels(args.label)
    if features.ndim != 2 or len(features) != len(labels):
        raise du.DataFormatError(f'{args.features} holds {features.shape}, expected ({len(labels)}, D) '
                                 f'to match {args.label}')
    names = load_class_names(args.classes, None, args.label)
    plot(embed(features, args.seed), np.asarray(labels), names, args.out, args.title)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    sys.exit(du.cli(main))
