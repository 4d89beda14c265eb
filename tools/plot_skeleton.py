"""Draw skeleton clips: small multiples (PNG) or an animation (GIF, or MP4 with ffmpeg).

    # one clip per class, a few frames each (x-y view)
    python tools/plot_skeleton.py --data data/demo/val_data.npy --label data/demo/val_label.pkl \
        --out work_dir/demo_skeletons.png
    # one clip animated, next to its augmented views (the views pretraining makes)
    python tools/plot_skeleton.py --data data/demo_frame50/val_position.npy \
        --label data/demo_frame50/val_label.pkl --index 3 --views raw normal extreme crop_pose \
        --out work_dir/clip3_views.gif

Reads the standard array format (N, 3, T, V, M). The bones come from the skeleton layout
(`--layout`: ntu-rgb+d, nw-ucla or your layout YAML; default: the built-in layout with V
joints). The person's left side is drawn in blue, the right side in red, the trunk in black;
absent (all-zero) bodies are skipped. Camera x points right, so a person facing the camera
appears mirrored (their right hand on the right of the picture). Axes are fixed over the whole
clip (and over all views of an animation) so motion is not hidden by rescaling.
View kinds: raw, normal / extreme (AimCLR, with --shear_amplitude, --temperal_padding_ratio,
--aug_method), crop_pose / crop_resize (ISC/HiCo, with --l_ratio, --input_size); views with
another frame count are shown at the same relative time.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from feeder.class_names import load_class_names  # noqa: E402
from feeder.layouts import get_layout  # noqa: E402
from tools import data_utils as du  # noqa: E402
from torchlight.config import ConfigError  # noqa: E402

SIDE_COLOURS = {'left': 'tab:blue', 'right': 'tab:red', 'centre': 'black'}
VIEW_TITLES = {'raw': 'clip', 'normal': 'normal view', 'extreme': 'extreme view',
               'crop_pose': 'ISC crop + pose', 'crop_resize': 'crop + resize', 'center_crop': 'centre crop'}


def first_clip_per_class(labels, max_classes):
    """Index of the first clip of each class, by class, at most `max_classes` rows."""
    first = {}
    for index, label in enumerate(labels):
        first.setdefault(label, index)
    return [first[c] for c in sorted(first)][:max_classes]


def present_bodies(clip):
    """Bodies (M axis of a (C, T, V, M) clip) that are not all zero."""
    return [m for m in range(clip.shape[3]) if np.abs(clip[..., m]).sum() > 0]


def fixed_box(clips):
    """(centre, half width) of a square x-y box holding every present joint of `clips`."""
    points = np.concatenate([c[:2][..., present_bodies(c)].reshape(2, -1) for c in clips], axis=1)
    points = points[:, np.abs(points).sum(0) > 0] if points.size else np.zeros((2, 1))
    if points.size == 0:
        points = np.zeros((2, 1))
    centre = (points.max(1) + points.min(1)) / 2
    half = max(np.ptp(points, axis=1).max() / 2, 0.5) * 1.1
    return centre, half


def draw_body(ax, joints, layout):
    """joints (V, 3) of one body; bones as lines coloured by side, joints as dots."""
    for child, parent in layout.edges:
        a, b = joints[child], joints[parent]
        ax.plot([a[0], b[0]], [a[1], b[1]], color=SIDE_COLOURS[layout.side(child)], linewidth=1.2)
    ax.scatter(joints[:, 0], joints[:, 1], s=3, color='dimgray', zorder=3)


def setup_axes(ax, centre, half):
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_aspect('equal')
    ax.set_xticks([])
    ax.set_yticks([])


def plot_clips(data, labels, names, class_names, out_path, num_frames=6, max_classes=12, layout=None):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    layout = get_layout(layout, data.shape[3])
    rows = first_clip_per_class(labels, max_classes)
    frames = np.linspace(0, data.shape[2] - 1, num_frames).round().astype(int)
    fig, axes = plt.subplots(len(rows), num_frames, figsize=(1.6 * num_frames, 2.0 * len(rows)),
                             squeeze=False)
    for row, index in enumerate(rows):
        clip = np.asarray(data[index], dtype=np.float64)           # (3, T, V, M)
        centre, half = fixed_box([clip])                             # same box in every frame
        for col, frame in enumerate(frames):
            ax = axes[row, col]
            for body in present_bodies(clip):
                draw_body(ax, clip[:, frame, :, body].T, layout)
            setup_axes(ax, centre, half)
            if row == 0:
                ax.set_title(f't={frame}', fontsize=8)
        axes[row, 0].set_ylabel(f'{class_names[labels[index]]}\n{names[index]}', fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def make_clip_views(clip, kinds, view_args, seed=0):
    """The clip (C, T, V, M) and its views as numpy arrays, drawn as pretraining draws them."""
    import torch
    from feeder.views import make_views
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.array(clip, dtype=np.float32))[None]
    return [v[0].numpy().astype(np.float64) for v in make_views(x, tuple(kinds), gen, view_args)]


def animate(clips, titles, layout, out_path, fps=10, frames=None, caption=''):
    """Animate the clips side by side (each (C, T_i, V, M)) with one fixed box for all;
    `frames` animation frames (default: the first clip's T) at the same relative time."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib import animation

    frames = frames or clips[0].shape[1]
    centre, half = fixed_box(clips)
    fig, axes = plt.subplots(1, len(clips), figsize=(3.0 * len(clips), 3.4), squeeze=False)
    artists = []
    for ax, clip, title in zip(axes[0], clips, titles):
        setup_axes(ax, centre, half)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel('x (m)', fontsize=7)
        lines = {m: [ax.plot([], [], color=SIDE_COLOURS[layout.side(c)], linewidth=1.5)[0]
                     for c, _ in layout.edges] for m in present_bodies(clip)}
        dots = {m: ax.plot([], [], 'o', color='dimgray', markersize=2)[0] for m in lines}
        counter = ax.text(0.02, 0.98, '', transform=ax.transAxes, fontsize=7, va='top')
        artists.append((clip, lines, dots, counter))
    axes[0, 0].set_ylabel('y (m)', fontsize=7)
    if caption:
        fig.suptitle(caption, fontsize=9)
    fig.tight_layout()

    def update(i):
        for clip, lines, dots, counter in artists:
            t = int(round(i * (clip.shape[1] - 1) / max(1, frames - 1)))
            for m, bone_lines in lines.items():
                joints = clip[:, t, :, m].T
                for line, (child, parent) in zip(bone_lines, layout.edges):
                    line.set_data([joints[child, 0], joints[parent, 0]], [joints[child, 1], joints[parent, 1]])
                dots[m].set_data(joints[:, 0], joints[:, 1])
            counter.set_text(f't={t + 1}/{clip.shape[1]}')
        return []

    movie = animation.FuncAnimation(fig, update, frames=frames, interval=1000 / fps, blit=False)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    if out_path.endswith('.mp4'):
        if not animation.FFMpegWriter.isAvailable():
            plt.close(fig)
            raise ConfigError('MP4 needs ffmpeg on the PATH; write a .gif instead')
        writer = animation.FFMpegWriter(fps=fps)
    else:
        writer = animation.PillowWriter(fps=fps)
    tmp = out_path + '.tmp' + os.path.splitext(out_path)[1]
    movie.save(tmp, writer=writer, dpi=80)
    os.replace(tmp, out_path)
    plt.close(fig)


def view_args_from(args):
    view_args = {'shear_amplitude': args.shear_amplitude, 'temperal_padding_ratio': args.temperal_padding_ratio,
                 'aug_method': args.aug_method, 'l_ratio': args.l_ratio, 'input_size': args.input_size}
    if args.layout:
        view_args['layout'] = args.layout
    return view_args


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', required=True, help='(N, 3, T, V, M) .npy file')
    parser.add_argument('--label', help='(sample_names, labels) pickle (required for the PNG grid)')
    parser.add_argument('--out', required=True, help='output: .png (one clip per class), .gif or .mp4 (animation)')
    parser.add_argument('--layout', default=None,
                        help='skeleton layout: ntu-rgb+d | nw-ucla | a layout YAML (default: from V)')
    parser.add_argument('--classes', default=None,
                        help='class names: a file (one per line) or a built-in list (ntu60, ...); '
                             'default: classes.txt / meta.json next to --label')
    parser.add_argument('--num_frames', type=int, default=6, help='PNG: frames per clip (default: 6)')
    parser.add_argument('--max_classes', type=int, default=12, help='PNG: rows at most (default: 12)')
    parser.add_argument('--index', type=int, default=0, help='animation: clip index (default: 0)')
    parser.add_argument('--sample', default=None, help='animation: clip by sample name (needs --label)')
    parser.add_argument('--views', nargs='+', default=['raw'],
                        help='animation panels, side by side: raw normal extreme crop_pose ... (default: raw)')
    parser.add_argument('--fps', type=float, default=10, help='animation frames per second (default: 10)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the augmented views (default: 0)')
    parser.add_argument('--shear_amplitude', type=float, default=0.5)
    parser.add_argument('--temperal_padding_ratio', type=int, default=6)
    parser.add_argument('--aug_method', default='12345', help='extreme view ops (AimCLR ids, default 12345)')
    parser.add_argument('--l_ratio', type=float, nargs='+', default=[0.1, 1.0], help='ISC crop ratio range')
    parser.add_argument('--input_size', type=int, default=64, help='ISC frames after the crop resize')
    return parser


def main(argv=None):
    """Raises on bad input (ValueError / OSError naming the file); as a command, exit code 2."""
    args = build_parser().parse_args(argv)
    data = du.load_npy(args.data, mmap=True, what='data file')
    if data.ndim != 5 or data.shape[1] < 2:
        raise du.DataFormatError(f'{args.data}: expected (N, C, T, V, M) clips, got {data.shape}')
    layout = get_layout(args.layout, data.shape[3])
    names, labels = du.load_labels(args.label) if args.label else (None, None)
    if labels is not None and len(labels) != len(data):
        raise du.DataFormatError(f'{args.label}: {len(labels)} labels but {args.data} holds {len(data)} clips')
    class_names = load_class_names(args.classes, max(labels) + 1 if labels else None, args.label)
    if args.out.endswith('.png'):
        if labels is None:
            raise ConfigError('the PNG grid needs --label (one clip per class)')
        plot_clips(data, labels, names, class_names, args.out, args.num_frames, args.max_classes, layout)
    else:
        index = args.index
        if args.sample is not None:
            if names is None or args.sample not in names:
                raise ConfigError(f'sample {args.sample!r} not found in {args.label}')
            index = names.index(args.sample)
        if not 0 <= index < len(data):
            raise ConfigError(f'--index {index} outside the {len(data)} clips of {args.data}')
        clip = np.asarray(data[index], dtype=np.float32)
        view_args = view_args_from(args)
        view_args['layout'] = layout
        clips = make_clip_views(clip, args.views, view_args, args.seed)
        caption = f'{names[index]}: {class_names[labels[index]]}' if names else f'clip {index}'
        animate(clips, [VIEW_TITLES.get(v, v) for v in args.views], layout, args.out, args.fps,
                caption=caption)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(du.cli(main))
