"""AimCLR / SkeletonCLR / CrosSCLR / ASAR 50-frame preprocessing.

Reads <data_path>/<split>_data.npy (N, 3, T, V, M) and <split>_label.pkl written by
ntu_gendata.py (--body_selection file_order) or pku_gendata.py and writes
<out_folder>/<split>_position.npy (N, 3, 50, V, M) float32 plus a copy of the label pickle
(and of classes.txt when the input folder has one).
Per sample, as the reference `feeder/preprocess_ntu.py`:
  1. valid length L = number of frames whose body-0 joint-0 xyz is non-zero;
  2. centre: subtract joint 21 (index 20, spine-shoulder) per frame and body;
  3. resize frames [0, L) to 50 frames, OpenCV bilinear with half-pixel centres;
  4. per-frame rotation about y that makes the shoulders (joints 5 -> 9, indices 4 -> 8)
     parallel to x, with one sign decision per sequence and body. With the default
     `--rotation_precision float32` the angle and its cosine / sine are computed in float32
     (degrees and back, as the reference) and the rotation in float64, which reproduces the
     reference's arithmetic; `float64` computes the angle in float64 (differs by up to ~2e-6).
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


ROTATION_PRECISIONS = ('float32', 'float64')


def parallel_shoulders(batch, left=LEFT_SHOULDER, right=RIGHT_SHOULDER, precision='float32'):
    """Rotates each frame about y by the angle between the shoulder vector (y dropped) and x.

    theta_t = arccos(v_x / (|v| + 1e-4)); all angles of a (sample, body) are negated when the
    shoulder z components sum to >= 0 over the frames (one sign per sequence, as the reference).
    precision 'float32': the reference's arithmetic (float32 angle, converted to degrees and
    back, float32 cosine / sine, float64 matrix product); 'float64': the angle in float64.
    """
    if precision not in ROTATION_PRECISIONS:
        raise ValueError(f'precision must be one of {ROTATION_PRECISIONS}, got {precision!r}')
    shoulders = batch[:, :, :, right, :] - batch[:, :, :, left, :]  # (N, 3, T, M), float32
    dtype = np.float32 if precision == 'float32' else np.float64
    along_x, along_z = shoulders[:, 0].astype(dtype), shoulders[:, 2].astype(dtype)
    theta = np.arccos(along_x / (np.sqrt(along_x * along_x + along_z * along_z) + dtype(1e-4)))
    if precision == 'float32':   # reference: degrees = arccos * (180 / pi); radians = deg * pi / 180
        theta = theta * np.float32(180 / np.pi) * np.float32(np.pi) / np.float32(180)
    negate = shoulders[:, 2].sum(axis=1, keepdims=True, dtype=dtype) >= 0
    theta = np.where(negate, -theta, theta)
    if precision == 'float32':   # float32 cosine / sine entries, product in float64
        theta = theta.astype(np.float32)
    coordinates_first = np.moveaxis(batch, 1, 0).astype(np.float64)  # (3, N, T, V, M)
    rotated = du.rotate_about_y(coordinates_first, theta[:, :, None, :], trig_dtype=theta.dtype)
    return np.moveaxis(rotated, 0, 1).astype(np.float32)


def preprocess_batch(batch, frames=50, center_joint=CENTER_JOINT, precision='float32'):
    """(N, 3, T, V, M) raw buffers -> (N, 3, frames, V, M), vectorised over samples and frames."""
    batch = np.asarray(batch, dtype=np.float32)
    lengths = valid_lengths(batch)
    centred = batch - batch[:, :, :, center_joint:center_joint + 1, :]
    resized = du.resize_frames(centred, lengths, frames, axis=2)
    return parallel_shoulders(resized, precision=precision)


def empty_samples(batch):
    return [(row, 'no valid frame (body 0, joint 0 is zero in every frame)')
            for row in np.flatnonzero(valid_lengths(batch) == 0)]


def preprocess_folder(data_path, out_folder, splits=('train', 'val'), frames=50,
                      batch_size=256, on_error='raise', quiet=False, precision='float32'):
    policy = du.ErrorPolicy(on_error)
    counts = {}
    with du.AtomicOutputs() as outputs:
        for split in splits:
            kept, _ = du.transform_split(
                outputs, data_path, out_folder, split, f'{split}_position.npy',
                lambda batch: preprocess_batch(batch, frames, precision=precision), lambda shape: (3, frames) + shape[3:],
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
    parser.add_argument('--rotation_precision', choices=ROTATION_PRECISIONS, default='float32',
                        help="shoulder-rotation angle arithmetic: float32 = the reference's (default), "
                             'float64 = angle in double precision (differs by up to ~2e-6)')
    du.add_common_arguments(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    du.setup_logging(args.verbose)
    return preprocess_folder(args.data_path, args.out_folder, args.splits, args.frames,
                             args.batch_size, args.on_error, args.quiet, args.rotation_precision)


if __name__ == '__main__':
    sys.exit(du.cli(main))
