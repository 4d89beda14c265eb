"""Draw skeleton clips as small multiples of x-y projections (one row per class).

    python tools/plot_skeleton.py --data data/demo/val_data.npy --label data/demo/val_label.pkl \
        --out work_dir/demo_skeletons.png [--num_frames 6] [--classes data/demo/classes.txt]

Reads the standard array format (N, 3, T, V, M); V = 25 (NTU RGB+D layout). The person's
left side is drawn in blue, the right side in red, the trunk in black; absent (all-zero)
bodies are skipped. Camera x points right, so a person facing the camera appears mirrored
(their right hand on the right of the picture).
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools import data_utils as du  # noqa: E402

# NTU bone list, 1-based (child, parent).
NTU_BONES = ((1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21),
             (10, 9), (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1),
             (18, 17), (19, 18), (20, 19), (22, 23), (23, 8), (24, 25), (25, 12))
LEFT_JOINTS = {5, 6, 7, 8, 13, 14, 15, 16, 22, 23}      # 1-based
RIGHT_JOINTS = {9, 10, 11, 12, 17, 18, 19, 20, 24, 25}


def bone_color(child):
    if child in LEFT_JOINTS:
        return 'tab:blue'
    if child in RIGHT_JOINTS:
        return 'tab:red'
    return 'black'


def read_class_names(path, num_class):
    if path and os.path.isfile(path):
        with open(path) as f:
            names = [line.strip() for line in f if line.strip()]
        if len(names) >= num_class:
            return names
    return [f'class {c}' for c in range(num_class)]


def first_clip_per_class(labels, max_classes):
    """Index of the first clip of each class, by class, at most `max_classes` rows."""
    first = {}
    for index, label in enumerate(labels):
        first.setdefault(label, index)
    return [first[c] for c in sorted(first)][:max_classes]


def draw_body(ax, joints):
    """joints (V, 3) of one body in metres; bones as lines, joints as dots."""
    for child, parent in NTU_BONES:
        a, b = joints[child - 1], joints[parent - 1]
        ax.plot([a[0], b[0]], [a[1], b[1]], color=bone_color(child), linewidth=1.2)
    ax.scatter(joints[:, 0], joints[:, 1], s=3, color='dimgray', zorder=3)


def plot_clips(data, labels, names, class_names, out_path, num_frames=6, max_classes=12):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = first_clip_per_class(labels, max_classes)
    frames = np.linspace(0, data.shape[2] - 1, num_frames).round().astype(int)
    fig, axes = plt.subplots(len(rows), num_frames, figsize=(1.6 * num_frames, 2.0 * len(rows)),
                             squeeze=False)
    for row, index in enumerate(rows):
        clip = np.asarray(data[index], dtype=np.float64)           # (3, T, V, M)
        present = [m for m in range(clip.shape[3]) if np.abs(clip[..., m]).sum() > 0]
        points = clip[:2][..., present].reshape(2, -1)
        centre = (points.max(1) + points.min(1)) / 2
        half = max(np.ptp(points, axis=1).max() / 2, 0.5) * 1.1      # same box in every frame
        for col, frame in enumerate(frames):
            ax = axes[row, col]
            for body in present:
                draw_body(ax, clip[:, frame, :, body].T)
            ax.set_xlim(centre[0] - half, centre[0] + half)
            ax.set_ylim(centre[1] - half, centre[1] + half)
            ax.set_aspect('equal')
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f't={frame}', fontsize=8)
        axes[row, 0].set_ylabel(f'{class_names[labels[index]]}\n{names[index]}', fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description='Plot one clip per class as x-y skeletons.')
    parser.add_argument('--data', required=True, help='(N, 3, T, V, M) .npy file')
    parser.add_argument('--label', required=True, help='(sample_names, labels) pickle')
    parser.add_argument('--out', required=True, help='output PNG')
    parser.add_argument('--classes', default=None,
                        help='class names, one per line (default: classes.txt next to --label)')
    parser.add_argument('--num_frames', type=int, default=6, help='frames per clip (default: 6)')
    parser.add_argument('--max_classes', type=int, default=12, help='rows at most (default: 12)')
    args = parser.parse_args(argv)

    data = du.load_npy(args.data, mmap=True, what='data file')
    if data.ndim != 5 or data.shape[1] < 2 or data.shape[3] != 25:
        raise du.DataFormatError(f'{args.data}: expected (N, C, T, V=25, M) clips of the NTU layout, '
                                 f'got {data.shape}')
    names, labels = du.load_labels(args.label)
    if len(labels) != len(data):
        raise du.DataFormatError(f'{args.label}: {len(labels)} labels but {args.data} holds {len(data)} clips')
    classes_path = args.classes or os.path.join(os.path.dirname(args.label), 'classes.txt')
    class_names = read_class_names(classes_path, max(labels) + 1)
    plot_clips(data, labels, names, class_names, args.out, args.num_frames, args.max_classes)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(du.cli(main))
