"""Custom skeleton data: a folder of per-sequence files + a labels CSV -> the standard format.

Sequence files (<data_path>/<name>.npy or <name>.csv; the name is the file stem):
  .npy  array (T, V, C) for one person or (T, M, V, C) for several persons
  .csv  one row per frame of M*V*C numbers, person-major, then joint, then coordinate
        (p0 j0 x, p0 j0 y, p0 j0 z, p0 j1 x, ...); an optional non-numeric header row
Labels CSV (--labels), with a header row: `name,label` and optionally `split`
  name   the sequence's file stem
  label  integer class (0-based; use --one_based for 1-based) or a class name (names are
         mapped to 0..K-1 in sorted order and listed in meta.json)
  split  e.g. train / val / test; without the column every sample goes to --default_split
Outputs in <out_folder>:
  <split>_data.npy   float32 (N, C, length, V, M)
  <split>_label.pkl  (names, labels)
  meta.json          joint layout name, V, M, C, length, options, classes, counts per split
                     (and the whole skeleton under `skeleton` when --layout is a layout file)
  layout.yaml        a copy of the --layout file: point model_args.graph_args.layout at it
  classes.txt        class names, one per line, when the labels CSV uses names
--joint_order lists, for every output joint, the input joint it takes (0-based, comma
separated), so data from another sensor's joint order fits the layout's order (e.g. the
layout of docs/DATA.md's 20-joint example); it can also drop joints. --center_joint and the
layout use the output order.
"""

import csv
import os
import re
import sys

import numpy as np

if __package__ in (None, ''):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools import data_utils as du  # noqa: E402

SPLIT_NAME = re.compile(r'[A-Za-z0-9_-]+$')


def read_labels_csv(path, default_split, one_based):
    """[(name, raw label, split)] sorted by split then name, and the class-name list (or None)."""
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        if 'name' not in columns or 'label' not in columns:
            raise du.DataFormatError(f'{path}: needs a header row with columns name,label[,split]')
        rows = [{k.strip(): (v or '').strip() for k, v in row.items() if k} for row in reader]
    entries, seen = [], set()
    for number, row in enumerate(rows, 2):
        name, split = row['name'], row.get('split') or default_split
        if not name or name in seen:
            raise du.DataFormatError(f'{path} line {number}: empty or repeated name {name!r}')
        if not SPLIT_NAME.match(split):
            raise du.DataFormatError(f'{path} line {number}: bad split name {split!r}')
        seen.add(name)
        entries.append((name, row['label'], split))
    labels, classes = _label_values([label for _, label, _ in entries], one_based)
    entries = sorted((split, name, label) for (name, _, split), label in zip(entries, labels))
    return [(name, label, split) for split, name, label in entries], classes


def _label_values(raw_labels, one_based):
    if all(re.fullmatch(r'-?\d+', label) for label in raw_labels):
        values = [int(label) - (1 if one_based else 0) for label in raw_labels]
        if any(v < 0 for v in values):
            raise du.DataFormatError('labels must be >= 0 (>= 1 with --one_based)')
        return values, None
    classes = sorted(set(raw_labels))
    index = {name: i for i, name in enumerate(classes)}
    return [index[label] for label in raw_labels], classes


def read_sequence(path, num_joints, channels, max_persons):
    """(T, M, V, C) float32 of one sequence file (M = max_persons, absent persons zero)."""
    if path.endswith('.npy'):
        array = du.load_npy(path, what='sequence file')
        if array.ndim == 3:
            array = array[:, None]
        if array.ndim != 4:
            raise du.DataFormatError(f'array of shape {array.shape}, expected (T, V, C) or (T, M, V, C)')
    else:
        array = _read_csv_frames(path)
        per_person = num_joints * channels
        if array.shape[1] % per_person:
            raise du.DataFormatError(f'{array.shape[1]} values per row, not a multiple of '
                                     f'{num_joints} joints x {channels} coordinates')
        array = array.reshape(len(array), -1, num_joints, channels)
    if len(array) == 0:
        raise du.DataFormatError('empty sequence (no frames)')
    if array.shape[2:] != (num_joints, channels):
        raise du.DataFormatError(f'frames of {array.shape[2]} joints x {array.shape[3]} values, '
                                 f'expected {num_joints} x {channels}')
    if array.shape[1] > max_persons:
        raise du.DataFormatError(f'{array.shape[1]} persons, more than --num_persons {max_persons}')
    du.check_finite(array)
    persons = np.zeros((len(array), max_persons, num_joints, channels), dtype=np.float32)
    persons[:, :array.shape[1]] = array
    return persons


def _read_csv_frames(path):
    with open(path, newline='') as f:
        rows = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    if rows and not _is_numeric(rows[0]):
        rows = rows[1:]  # header
    if not rows:
        return np.zeros((0, 0))
    if len({len(row) for row in rows}) != 1:
        raise du.DataFormatError('rows of different lengths')
    return np.asarray(rows, dtype=np.float64)


def _is_numeric(row):
    try:
        [float(cell) for cell in row]
        return True
    except ValueError:
        return False


def find_sequence_file(data_path, name):
    for suffix in ('.npy', '.csv'):
        path = os.path.join(data_path, name + suffix)
        if os.path.isfile(path):
            return path
    raise du.DataFormatError(f'no {name}.npy or {name}.csv in {data_path}')


def parse_joint_order(text, num_joints):
    """'3,2,1,0,4,...' -> [3, 2, 1, 0, 4, ...] (indices of input joints), checked."""
    try:
        order = [int(v) for v in text.replace(' ', '').split(',') if v != '']
    except ValueError:
        raise du.DataFormatError(f'--joint_order {text!r}: expected comma-separated 0-based joint indices') from None
    bad = [v for v in order if not 0 <= v < num_joints]
    if not order or bad or len(set(order)) != len(order):
        raise du.DataFormatError(f'--joint_order {text!r}: needs distinct indices in [0, {num_joints - 1}] '
                                 f'(input joints: --num_joints {num_joints})')
    return order


def read_layout(layout, num_joints):
    """(name, skeleton mapping or None) of --layout: a built-in or free name, or a layout file."""
    from feeder.layouts import get_layout, is_layout_file
    if not is_layout_file(layout):
        return layout, None
    try:
        skeleton = get_layout(layout, num_joints)
    except ValueError as err:
        raise du.DataFormatError(f'--layout: {err}') from None
    return skeleton.name, {'name': skeleton.name, 'joints': list(skeleton.joints),
                           'edges': [list(e) for e in skeleton.edges], 'center': skeleton.center,
                           'flip': [list(p) for p in skeleton.flip], 'bones': [list(b) for b in skeleton.bones]}


def convert(data_path, labels_path, out_folder, num_joints, layout='custom', channels=3,
            num_persons=1, length=300, temporal='pad', long_sequences='crop_center',
            center_joint=None, default_split='train', one_based=False, on_error='raise',
            quiet=False, joint_order=None):
    policy = du.ErrorPolicy(on_error)
    order = parse_joint_order(joint_order, num_joints) if joint_order else None
    out_joints = len(order) if order else num_joints
    layout_name, skeleton = read_layout(layout, out_joints)
    entries, classes = read_labels_csv(labels_path, default_split, one_based)
    listed = {name for name, _, _ in entries}
    unlisted = [f for f in du.sorted_files(data_path, '') if os.path.splitext(f)[1] in ('.npy', '.csv')
                and os.path.splitext(f)[0] not in listed]
    by_split = {}
    for entry in entries:
        by_split.setdefault(entry[2], []).append(entry)

    counts, num_cropped = {}, 0
    with du.AtomicOutputs() as outputs:
        for split, split_entries in by_split.items():
            writer = outputs.row_writer(os.path.join(out_folder, f'{split}_data.npy'),
                                        len(split_entries),
                                        (channels, length, out_joints, num_persons))
            for row, (name, _, _) in enumerate(du.progress(split_entries, split, quiet=quiet)):
                try:
                    path = find_sequence_file(data_path, name)
                    sequence = read_sequence(path, num_joints, channels, num_persons)
                    if order:
                        sequence = sequence[:, :, order]
                    if temporal == 'pad':
                        du.crop_window(len(sequence), length, long_sequences)
                except du.SAMPLE_ERRORS as error:
                    policy.handle(name, error)
                    continue
                if center_joint is not None:
                    sequence = du.center_on_joint(sequence, center_joint)
                fixed, cropped = du.fit_sequences([sequence], length, temporal, long_sequences)
                num_cropped += cropped
                writer.write(row, fixed[0].transpose(3, 0, 2, 1))  # (T,M,V,C) -> (C,T,V,M)
            kept = writer.finish()
            outputs.save_labels(os.path.join(out_folder, f'{split}_label.pkl'),
                                [split_entries[i][0] for i in kept],
                                [split_entries[i][1] for i in kept])
            counts[split] = len(kept)
        if skeleton:
            outputs.copy_file(layout, os.path.join(out_folder, 'layout.yaml'))
        if classes:
            with open(outputs.temporary_path(os.path.join(out_folder, 'classes.txt')), 'w') as f:
                f.write(''.join(name + '\n' for name in classes))
        outputs.save_json(os.path.join(out_folder, 'meta.json'), {
            'dataset': 'custom', 'layout': layout_name, 'num_joints': out_joints,
            'joint_order': order, 'skeleton': skeleton, 'layout_file': 'layout.yaml' if skeleton else None,
            'num_persons': num_persons, 'channels': channels, 'length': length,
            'temporal': temporal, 'center_joint': center_joint, 'classes': classes,
            'num_classes': len(classes) if classes else
            1 + max((label for _, label, _ in entries), default=-1),
            'counts': counts, 'array_layout': 'N, C, T, V, M'})

    parts = [' '.join(f'{k} {v}' for k, v in counts.items()), policy.summary_part()]
    if temporal == 'pad':
        parts.append(f'{num_cropped} longer than {length} frames cropped ({long_sequences})')
    if unlisted:
        parts.append(f'{len(unlisted)} sequence files without a label row ignored')
    du.summary('custom_gendata', parts)
    return counts


def build_parser():
    parser = du.make_parser(__doc__)
    parser.add_argument('--data_path', required=True, help='folder of per-sequence .npy/.csv files')
    parser.add_argument('--labels', required=True, help='labels CSV: name,label[,split]')
    parser.add_argument('--out_folder', required=True)
    parser.add_argument('--num_joints', type=int, required=True, help='V')
    parser.add_argument('--layout', default='custom',
                        help='joint layout: a name written to meta.json (ntu-rgb+d, nw-ucla), or a layout '
                             'YAML (docs/DATA.md), checked against the joints and copied to layout.yaml')
    parser.add_argument('--joint_order', default=None,
                        help='output joint v = input joint ORDER[v], comma-separated 0-based indices '
                             '(reorders or selects joints to fit the layout)')
    parser.add_argument('--channels', type=int, default=3, help='C, values per joint (default 3)')
    parser.add_argument('--num_persons', type=int, default=1, help='M; fewer persons are zero-padded')
    parser.add_argument('--length', type=int, default=300, help='output frames')
    parser.add_argument('--temporal', choices=('pad', 'resize'), default='pad',
                        help='zero-pad/crop (default) or bilinear resize to --length')
    parser.add_argument('--long_sequences', choices=du.OVERFLOW_POLICIES, default='crop_center')
    parser.add_argument('--center_joint', type=int, default=None,
                        help='subtract this 0-based joint per frame and person (default: off)')
    parser.add_argument('--default_split', default='train',
                        help='split of every sample when the CSV has no split column')
    parser.add_argument('--one_based', action='store_true', help='integer labels start at 1')
    du.add_common_arguments(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    du.setup_logging(args.verbose)
    return convert(args.data_path, args.labels, args.out_folder, args.num_joints, args.layout,
                   args.channels, args.num_persons, args.length, args.temporal,
                   args.long_sequences, args.center_joint, args.default_split, args.one_based,
                   args.on_error, args.quiet, args.joint_order)


if __name__ == '__main__':
    sys.exit(du.cli(main))
