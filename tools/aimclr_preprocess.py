"""AimCLR / SkeletonCLR / CrosSCLR / ASAR 50-frame preprocessing.

Reads <data_path>/<split>_data.npy (N, 3, T, V, M) and <split>_label.pkl written by
ntu_gendata.py (--body_selection file_order) or pku_gendata.py and writes
<out_folder>/<split>_position.npy (N, 3, 50, V, M) float32 plus a copy of the label pickle
(and of classes.txt when the input folder has one).
Per sample, exactly as the reference `feeder/preprocess_ntu.py`:
  1. valid length L = number of frames whose body-0 joint-0 xyz is non-zero;
  2. centre: subtract joint 21 (index 20, spine-shoulder) per frame and body;
  3. resize frames [0, L) to 50 frames, OpenCV bilinear with half-pixel centres;
  4. per-frame rotation about y that makes the shoulders (joints 5 -> 9, indices 4 -> 8)
     parallel to x, with one sign decision per sequence and body.
The reference's unused side outputs (`_motion.npy`, shifted `_label.npy`) are not written.
Run it once per benchmark folder (e.g. xsub, then xview).
"""

import os
import sys

import numpy as np

if __package__ in (None, ''):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools import data_utils as du  # noqa: E402

CENTER_JOINT = 20    # NTU joint 21, spine at the shoulders
LEFT_SHOULDER = 4    # NTU joint 5
RIGHT_SHOULDER = 8   # NTU joint 9


def valid_lengths(batch):
    """Frames whose body-0 joint-0 coordinates are not all zero, counted (the reference
    assumes the sequence is front-aligned)."""
    return np.count_nonzero(np.abs(batch[:, :, :, 0, 0]).sum(axis=1) != 0, axis=1)


def parallel_shoulders(batch, left=LEFT_SHOULDER, right=RIGHT_SHOULDER):
    """Rotates each frame about y by the angle between the shoulder vector (y dropped) and x.

    theta_t = arccos(v_x / (|v| + 1e-4)); all angles of a (sample, body) are negated when the
    shoulder z components sum to >= 0 over the frames (one sign per sequence, as the reference).
    """
    shoulders = batch[:, :, :, right, :] - batch[:, :, :, left, :]  # (N, 3, T, M), float32
    along_x, along_z = shoulders[:, 0].astype(np.float64), shoulders[:, 2].astype(np.float64)
    # float64 trigonometry: float32 arccos is coarse for the near-zero angles that dominate
    theta = np.arccos(along_x / (np.sqrt(along_x * along_x + along_z * along_z) + 1e-4))
    negate = along_z.sum(axis=1, keepdims=True) >= 0
    theta = np.where(negate, -theta, theta)
    coordinates_first = np.moveaxis(batch, 1, 0).astype(np.float64)  # (3, N, T, V, M)
    rotated = du.rotate_about_y(coordinates_first, theta[:, :, None, :])
    return np.moveaxis(rotated, 0, 1).astype(np.float32)


def preprocess_batch(batch, frames=50, center_joint=CENTER_JOINT):
    """(N, 3, T, V, M) raw buffers -> (N, 3, frames, V, M), vectorised over samples and frames."""
    batch = np.asarray(batch, dtype=np.float32)
    lengths = valid_lengths(batch)
    centred = batch - batch[:, :, :, center_joint:center_joint + 1, :]
    resized = du.resize_frames(centred, lengths, frames, axis=2)
    return parallel_shoulders(resized)


def empty_samples(batch):
    return [(row, 'no valid frame (body 0, joint 0 is zero in every frame)')
            for row in np.flatnonzero(valid_lengths(batch) == 0)]


def preprocess_folder(data_path, out_folder, splits=('train', 'val'), frames=50,
                      batch_size=256, on_error='raise', quiet=False):
    policy = du.ErrorPolicy(on_error)
    counts = {}
    with du.AtomicOutputs() as outputs:
        for split in splits:
            kept, _ = du.transform_split(
                outputs, data_path, out_folder, split, f'{split}_position.npy',
                lambda batch: preprocess_batch(batch, frames), lambda shape: (3, frames) + shape[3:],
                policy, empty_samples, batch_size, f'{split} -> {frames} frames', quiet)
            counts[split] = len(kept)
        names = os.path.join(data_path, 'classes.txt')
        if os.path.isfile(names):   # class names travel with the data (predict, plots, confusion)
            outputs.copy_file(names, os.path.join(out_folder, 'classes.txt'))
    du.summary('aimclr_preprocess', [' '.join(f'{k} {v}' for k, v in counts.items()),
                                     policy.summary_part()])
    return counts


def build_parser():
    parser = du.make_parser(__doc__)
    parser.add_argument('--data_path', required=True,
                        help='folder with <split>_data.npy and <split>_label.pkl')
    parser.add_argument('--out_folder', required=True)
    parser.add_argument('--splits', nargs='+', default=['train', 'val'])
    parser.add_argument('--frames', type=int, default=50, help='output length (reference: 50)')
    parser.add_argument('--batch_size', type=int, default=256,
                        help='samples processed at once (memory vs. speed)')
    du.add_common_arguments(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    du.setup_logging(args.verbose)
    return preprocess_folder(args.data_path, args.out_folder, args.splits, args.frames,
                             args.batch_size, args.on_error, args.quiet)


if __name__ == '__main__':
    sys.exit(du.cli(main))
