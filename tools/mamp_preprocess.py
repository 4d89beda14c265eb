"""MAMP (CTR-GCN) translation: the `seq_translation` step of maoyunyao/MAMP data/ntu/seq_transformation.py.

Reads <data_path>/<split>_data.npy (N, 3, T, V, M) from `ntu_gendata.py --body_selection energy`
(or pku_gendata.py), <split>_label.pkl and, when present, <split>_num_frame.npy, and writes
  <out_folder>/<split>_data.npy       float32 (N, 3, T, V, M)
  <out_folder>/<split>_num_frame.npy  int64 (N,) (copied; last non-empty frame + 1 when absent)
  <out_folder>/<split>_label.pkl      copy
Per sample: the origin is person 0's joint 1 (middle of the spine) in its first frame with a
non-zero coordinate; it is subtracted from every joint of every frame in which that person is
present (coordinate sum non-zero), so empty frames and the zero padding stay zero. No rotation,
no resizing: MAMP crops and resizes to 120 frames on the fly (feeder keys l_ratio / input_size).
The original's body denoising (get_raw_denoised_data.py) is not reproduced; energy selection
(the two most active of the first four bodies) is the closest step this project has.
"""

import os
import sys

import numpy as np

if __package__ in (None, ''):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools import data_utils as du  # noqa: E402
from tools.isc_preprocess import frame_counts_from_data  # noqa: E402

ORIGIN_JOINT = 1


def translate_batch(batch, joint=ORIGIN_JOINT):
    """(N, C, T, V, M) -> translated (N, C, T, V, M) float32."""
    x = np.asarray(batch, dtype=np.float32)
    n = len(x)
    first = np.argmax((x[..., 0] != 0).any(axis=(1, 3)), axis=1)          # person 0's first frame
    origin = x[np.arange(n), :, first, joint, 0]                          # (N, C)
    present = x.sum(axis=(1, 3)) != 0                                      # (N, T, M)
    moved = x - origin[:, :, None, None, None]
    return np.where(present[:, None, :, None, :], moved, 0.0).astype(np.float32)


def translate_folder(data_path, out_folder, splits=('train', 'val'), batch_size=256, on_error='raise',
                     quiet=False):
    policy = du.ErrorPolicy(on_error)
    counts = {}
    with du.AtomicOutputs() as outputs:
        for split in splits:
            kept, source = du.transform_split(
                outputs, data_path, out_folder, split, f'{split}_data.npy', translate_batch,
                lambda shape: shape[1:], policy, None, batch_size, f'{split} translate', quiet)
            frame_count_path = os.path.join(data_path, f'{split}_num_frame.npy')
            if os.path.exists(frame_count_path):
                frame_counts = du.load_npy(frame_count_path, what='num_frame file')
            else:
                frame_counts = frame_counts_from_data(du.load_npy(source, mmap=True, what='data file'))
            outputs.save_npy(os.path.join(out_folder, f'{split}_num_frame.npy'),
                             frame_counts[kept].astype(np.int64))
            counts[split] = len(kept)
    du.summary('mamp_preprocess', [' '.join(f'{k} {v}' for k, v in counts.items()), policy.summary_part()])
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
    return translate_folder(args.data_path, args.out_folder, args.splits, args.batch_size,
                            args.on_error, args.quiet)


if __name__ == '__main__':
    sys.exit(du.cli(main))
