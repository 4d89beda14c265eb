"""NW-UCLA (Northwestern-UCLA Multiview Action3D): per-sequence JSON files -> arrays.

Input: <data_path>/aXX_sYY_eZZ_vWW.json with `file_name`, `label` (1..10) and `skeletons`
(T frames x 20 joints x xyz, one person); see ../shared/data/nw-ucla/README.md.
Output (cross-view protocol by default: views 1+2 train, view 3 val):
  <out_folder>/{train,val}_data.npy   float32 (N, 3, length, 20, 1)
  <out_folder>/{train,val}_label.pkl  (file stems, label - 1)
  <out_folder>/meta.json              layout, options, counts
Processing per sequence: optional view normalisation (`--view_normalise body`: rotate the
whole clip into the body's frame, y = mean hip centre -> shoulder centre, x = mean left -> right
shoulder and hip direction; one rotation per clip, so the camera's azimuth and tilt go and turns
within the clip stay; the view-invariant input of Predict & Cluster and MS2L, built our way),
optional centring (subtract joint 2, the shoulder centre, per frame, as AimCLR centres NTU on
joint 21), then a fixed length: `resize` (OpenCV-style bilinear,
half-pixel centres, like the AimCLR 50-frame step; default) or `pad` (zeros after the end,
longer sequences cropped per --long_sequences).
"""

import json
import os
import re
import sys

import numpy as np

if __package__ in (None, ''):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools import data_utils as du  # noqa: E402
from feeder.class_names import load_class_names  # noqa: E402

NUM_JOINTS = 20
NUM_CLASSES = 10
ACTION_CODES = (1, 2, 3, 4, 5, 6, 8, 9, 11, 12)  # label k (1-based) is action a{ACTION_CODES[k-1]}
NAME_PATTERN = re.compile(r'a(\d+)_s(\d+)_e(\d+)_v(\d+)$')
BODY_UP = (0, 2)                   # hip centre -> shoulder centre
BODY_LATERAL = ((4, 8), (12, 16))  # (left, right) shoulders and hips
VIEW_NORMALISATIONS = ('none', 'body')


def read_sequence(path):
    """(label 0-based, view, float32 (T, 20, 3)) of one JSON file."""
    stem = os.path.basename(path)[:-len('.json')]
    match = NAME_PATTERN.match(stem)
    if match is None:
        raise du.DataFormatError('file name is not aXX_sYY_eZZ_vWW.json')
    action, view = int(match.group(1)), int(match.group(4))
    with open(path) as f:
        record = json.load(f)
    label = int(record['label'])
    if not 1 <= label <= NUM_CLASSES or ACTION_CODES[label - 1] != action:
        raise du.DataFormatError(f'label {label} does not match action a{action:02d} of the name')
    frames = record['skeletons']
    if len(frames) == 0:
        raise du.DataFormatError('empty sequence (no frames)')
    skeleton = np.asarray(frames, dtype=np.float64)
    if skeleton.shape[1:] != (NUM_JOINTS, 3):
        raise du.DataFormatError(f'frames of shape {skeleton.shape[1:]}, expected ({NUM_JOINTS}, 3)')
    du.check_finite(skeleton)
    return label - 1, view, skeleton.astype(np.float32)


def normalise_view(sequence):
    """(T, 20, 3) in the camera's frame -> the same clip in its body frame (float32)."""
    rotation = du.body_frame(sequence, BODY_UP, BODY_LATERAL)
    return (sequence.astype(np.float64) @ rotation.T).astype(np.float32)


def to_array(sequences, length, temporal, long_sequences, center_joint, view_normalise='none'):
    """List of (T_i, 20, 3) -> (N, 3, length, 20, 1) float32 and the number cropped."""
    if not sequences:
        return np.zeros((0, 3, length, NUM_JOINTS, 1), dtype=np.float32), 0
    if view_normalise == 'body':
        sequences = [normalise_view(s) for s in sequences]
    if center_joint is not None:
        sequences = [du.center_on_joint(s, center_joint) for s in sequences]
    fixed, num_cropped = du.fit_sequences(sequences, length, temporal, long_sequences)
    return np.ascontiguousarray(fixed.transpose(0, 3, 1, 2)[..., None]), num_cropped


def convert(data_path, out_folder, length=50, temporal='resize', center=True, center_joint=2,
            train_views=(1, 2), val_views=(3,), long_sequences='crop_center', on_error='raise',
            quiet=False, view_normalise='none'):
    if view_normalise not in VIEW_NORMALISATIONS:
        raise ValueError(f'view_normalise must be one of {VIEW_NORMALISATIONS}, not {view_normalise!r}')
    if set(train_views) & set(val_views):
        raise ValueError('a view cannot be both in train and val')
    policy = du.ErrorPolicy(on_error)
    splits = {'train': ([], [], []), 'val': ([], [], [])}  # names, labels, sequences
    num_other_views = 0
    for file_name in du.progress(du.sorted_files(data_path, '.json'), 'nw-ucla', quiet=quiet):
        path = os.path.join(data_path, file_name)
        try:
            label, view, sequence = read_sequence(path)
            if temporal == 'pad':
                du.crop_window(len(sequence), length, long_sequences)  # raises for 'error'
        except du.SAMPLE_ERRORS as error:
            policy.handle(path, error)
            continue
        split = 'train' if view in train_views else 'val' if view in val_views else None
        if split is None:
            num_other_views += 1
            continue
        for bucket, value in zip(splits[split], (file_name[:-len('.json')], label, sequence)):
            bucket.append(value)

    counts, num_cropped = {}, 0
    with du.AtomicOutputs() as outputs:
        for split, (names, labels, sequences) in splits.items():
            data, cropped = to_array(sequences, length, temporal, long_sequences,
                                    center_joint if center else None, view_normalise)
            num_cropped += cropped
            outputs.save_npy(os.path.join(out_folder, f'{split}_data.npy'), data)
            outputs.save_labels(os.path.join(out_folder, f'{split}_label.pkl'), names, labels)
            counts[split] = {'samples': len(names),
                             'per_class': du.class_counts(labels, NUM_CLASSES).tolist()}
        outputs.save_json(os.path.join(out_folder, 'meta.json'), {
            'dataset': 'nw-ucla', 'layout': 'nw-ucla', 'num_joints': NUM_JOINTS,
            'classes': load_class_names('nw-ucla', NUM_CLASSES),   # read by evaluation, predict and plots
            'num_persons': 1, 'length': length, 'temporal': temporal,
            'center_joint': center_joint if center else None, 'view_normalise': view_normalise,
            'train_views': list(train_views), 'val_views': list(val_views), 'counts': counts})

    parts = [f"{split} {c['samples']} (per class {c['per_class']})" for split, c in counts.items()]
    parts.append(policy.summary_part())
    if temporal == 'pad':
        parts.append(f'{num_cropped} longer than {length} frames cropped ({long_sequences})')
    if num_other_views:
        parts.append(f'{num_other_views} sequences of other views ignored')
    du.summary('nw_ucla_gendata', parts)
    return counts


def build_parser():
    parser = du.make_parser(__doc__)
    parser.add_argument('--data_path', required=True, help='folder of the per-sequence JSON files')
    parser.add_argument('--out_folder', required=True)
    parser.add_argument('--length', type=int, default=50, help='output frames (default 50)')
    parser.add_argument('--temporal', choices=('resize', 'pad'), default='resize',
                        help='bilinear resize to --length (default) or zero-pad/crop')
    parser.add_argument('--long_sequences', choices=du.OVERFLOW_POLICIES, default='crop_center',
                        help='with --temporal pad: sequences longer than --length')
    parser.add_argument('--no_center', dest='center', action='store_false',
                        help='keep raw camera coordinates (default: subtract --center_joint)')
    parser.add_argument('--center_joint', type=int, default=2,
                        help='0-based joint subtracted per frame (default 2, shoulder centre)')
    parser.add_argument('--view_normalise', choices=VIEW_NORMALISATIONS, default='none',
                        help="'body': rotate each clip into its body frame (camera azimuth and tilt "
                             "removed, one rotation per clip); default 'none' (camera coordinates)")
    parser.add_argument('--train_views', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--val_views', type=int, nargs='+', default=[3])
    du.add_common_arguments(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    du.setup_logging(args.verbose)
    return convert(args.data_path, args.out_folder, args.length, args.temporal, args.center,
                   args.center_joint, args.train_views, args.val_views, args.long_sequences,
                   args.on_error, args.quiet, args.view_normalise)


if __name__ == '__main__':
    sys.exit(du.cli(main))
