"""ISC (skeleton-contrast) / HiCo normalisation: the 2s-AGCN `pre_normalization`, vectorised.

Reads <data_path>/<split>_data.npy (N, 3, T, V, M), <split>_label.pkl and, when present,
<split>_num_frame.npy written by `ntu_gendata.py --body_selection energy`, and writes
  <out_folder>/<split>_data_joint.npy  float32 (N, 3, T, V, M)
  <out_folder>/<split>_num_frame.npy   int64 (N,) frames of the raw sequence (copied; computed
                                       as last non-empty frame + 1 when the input has none)
  <out_folder>/<split>_label.pkl       copy
Per sample (person-major, as the reference):
  1. every non-empty person: if its first frame is empty, its non-empty frames are moved to
     the front; from the first frame after which it is empty, its valid prefix is repeated
     cyclically up to T frames;
  2. subtract person 0's joint 1 (middle of the spine) of each frame from all non-zero joints;
  3. rotate so that person 0's frame-0 bone joint 0 -> joint 1 points along +z;
  4. then rotate so that person 0's frame-0 bone joint 4 -> joint 8 (left -> right shoulder)
     points along +x (about their cross product; may slightly undo step 3, as the reference).
"Empty" / "non-zero" follow the reference: a coordinate sum equal to zero.
"""

import os
import sys

import numpy as np

if __package__ in (None, ''):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools import data_utils as du  # noqa: E402

CENTER_JOINT = 1
Z_BONE = (0, 1)   # hip -> spine
X_BONE = (4, 8)   # left shoulder -> right shoulder


def joint_sums(s):
    """x + y + z of every joint of (N, M, T, V, 3); faster than a reduction over a length-3 axis."""
    return s[..., 0] + s[..., 1] + s[..., 2]


def presence(s):
    """Reference 'non-empty' tests (coordinate sums != 0) of samples, persons, frames, joints."""
    joints = joint_sums(s)
    frames = joints.sum(axis=-1)
    persons = frames.sum(axis=-1)
    return persons.sum(axis=-1) != 0, persons != 0, frames != 0, joints != 0


def pad_null_frames(s):
    """Step 1 on (N, M, T, V, C): compaction when frame 0 is empty, then cyclic padding."""
    num_frames = s.shape[2]
    _, person_present, frame_present, _ = presence(s)
    order = np.broadcast_to(np.arange(num_frames), frame_present.shape).copy()
    compact = person_present & ~frame_present[..., 0]
    order[compact] = np.argsort(~frame_present[compact], axis=-1, kind='stable')
    present_after = np.take_along_axis(frame_present, order, axis=-1)
    # valid prefix length = last present frame + 1 (T for an absent person: nothing to pad)
    last_present = num_frames - 1 - np.argmax(present_after[..., ::-1], axis=-1)
    prefix = np.where(person_present, last_present + 1, num_frames)[..., None]
    time = np.arange(num_frames)
    source = np.take_along_axis(order, np.where(time < prefix, time, time % prefix), axis=-1)
    return np.take_along_axis(s, source[..., None, None], axis=2)


def center_on_main_body(s, joint=CENTER_JOINT):
    """Step 2: subtract person 0's `joint` per frame, keeping zero joints at zero."""
    sample_present, person_present, _, joint_present = presence(s)
    centred = (s - s[:, :1, :, joint:joint + 1, :]) * joint_present[..., None]
    apply = sample_present[:, None] & person_present
    return np.where(apply[:, :, None, None, None], centred, s)


def align_bone(s, bone, target):
    """Steps 3/4: rotate every non-empty frame of every non-empty person by the rotation that
    turns person 0's frame-0 bone (joint bone[0] -> bone[1]) onto `target`."""
    start, end = bone
    rotations = du.aligning_rotations(s[:, 0, 0, end] - s[:, 0, 0, start], target)
    points = s.astype(np.float64).reshape(len(s), -1, 3)
    rotated = np.matmul(points, rotations.transpose(0, 2, 1)).astype(np.float32).reshape(s.shape)
    sample_present, person_present, frame_present, _ = presence(s)
    apply = sample_present[:, None, None] & person_present[:, :, None] & frame_present
    return np.where(apply[..., None, None], rotated, s)


def normalize_batch(batch):
    """(N, C, T, V, M) -> normalised (N, C, T, V, M) float32."""
    s = np.ascontiguousarray(np.asarray(batch, dtype=np.float32).transpose(0, 4, 2, 3, 1))
    s = pad_null_frames(s)
    s = center_on_main_body(s)
    s = align_bone(s, Z_BONE, (0.0, 0.0, 1.0))
    s = align_bone(s, X_BONE, (1.0, 0.0, 0.0))
    return np.ascontiguousarray(s.transpose(0, 4, 2, 3, 1))


def frame_counts_from_data(data, batch_size=1024):
    """Last non-empty frame + 1 over all bodies (0 for an empty sample)."""
    counts = np.zeros(len(data), dtype=np.int64)
    for start in range(0, len(data), batch_size):
        chunk = np.asarray(data[start:start + batch_size])
        present = np.abs(chunk).sum(axis=(1, 3, 4)) != 0  # (n, T)
        last = chunk.shape[2] - np.argmax(present[:, ::-1], axis=1)
        counts[start:start + batch_size] = np.where(present.any(axis=1), last, 0)
    return counts


def normalize_folder(data_path, out_folder, splits=('train', 'val'), batch_size=256,
                     on_error='raise', quiet=False):
    policy = du.ErrorPolicy(on_error)
    counts = {}
    with du.AtomicOutputs() as outputs:
        for split in splits:
            kept, source = du.transform_split(
                outputs, data_path, out_folder, split, f'{split}_data_joint.npy', normalize_batch,
                lambda shape: shape[1:], policy, None, batch_size, f'{split} normalise', quiet)
            frame_count_path = os.path.join(data_path, f'{split}_num_frame.npy')
            if os.path.exists(frame_count_path):
                frame_counts = du.load_npy(frame_count_path, what='num_frame file')
            else:
                frame_counts = frame_counts_from_data(du.load_npy(source, mmap=True, what='data file'))
            outputs.save_npy(os.path.join(out_folder, f'{split}_num_frame.npy'),
                             frame_counts[kept].astype(np.int64))
            counts[split] = len(kept)
    du.summary('isc_preprocess', [' '.join(f'{k} {v}' for k, v in counts.items()),
                                  policy.summary_part()])
    return counts


def build_parser():
    parser = du.make_parser(__doc__)
    parser.add_argument('--data_path', required=True,
                        help='folder with <split>_data.npy, <split>_label.pkl [, <split>_num_frame.npy]')
    parser.add_argument('--out_folder', required=True)
    parser.add_argument('--splits', nargs='+', default=['train', 'val'])
    parser.add_argument('--batch_size', type=int, default=256)
    du.add_common_arguments(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    du.setup_logging(args.verbose)
    return normalize_folder(args.data_path, args.out_folder, args.splits, args.batch_size,
                            args.on_error, args.quiet)


if __name__ == '__main__':
    sys.exit(du.cli(main))
