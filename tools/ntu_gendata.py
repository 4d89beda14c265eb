"""NTU RGB+D 60 / 120: raw `.skeleton` files -> (N, 3, 300, 25, 2) float32 arrays + label pickles.

Writes, for every benchmark (NTU60: xsub, xview; NTU120: xsub, xset) and part (train, val):
  <out_folder>/<benchmark>/<part>_data.npy       float32 (N, 3, max_frame, 25, 2), zero padded
  <out_folder>/<benchmark>/<part>_label.pkl      (sample names with '.skeleton', action - 1)
  <out_folder>/<benchmark>/<part>_num_frame.npy  int64 (N,) frames stored per sample
Files are processed in sorted order; samples in the missing-skeleton list are left out.
Body selection: `file_order` (st-gcn / AimCLR / AS-CAL: the first two bodies listed in each
frame) or `energy` (ISC / HiCo: of the first four bodies, the two with the highest motion
energy, highest first). Follow with tools/aimclr_preprocess.py or tools/isc_preprocess.py.
"""

import os
import re
import sys

import numpy as np

if __package__ in (None, ''):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools import data_utils as du  # noqa: E402

NUM_JOINTS = 25
MAX_BODIES_KEPT = 2
MAX_BODIES_READ_FOR_ENERGY = 4

TRAIN_SUBJECTS_60 = (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38)
TRAIN_SUBJECTS_120 = TRAIN_SUBJECTS_60 + (
    45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86,
    89, 91, 92, 93, 94, 95, 97, 98, 100, 103)
TRAIN_CAMERAS = (2, 3)

BENCHMARKS = {'ntu60': ('xsub', 'xview'), 'ntu120': ('xsub', 'xset')}
MAX_SETUP = {'ntu60': 17, 'ntu120': 32}
RESOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'resources')
DEFAULT_MISSING_LIST = {'ntu60': os.path.join(RESOURCES, 'ntu60_missing_skeletons.txt'),
                        'ntu120': os.path.join(RESOURCES, 'ntu120_missing_skeletons.txt')}

NAME_PATTERN = re.compile(r'S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})')


# --------------------------------------------------------------------------------------------
# names, lists, splits
# --------------------------------------------------------------------------------------------

def parse_sample_name(name):
    """`S001C002P003R004A005...` -> dict of setup, camera, performer, replication, action."""
    match = NAME_PATTERN.match(name)
    if match is None:
        raise du.DataFormatError(f'not an NTU sample name: {name}')
    setup, camera, performer, replication, action = (int(g) for g in match.groups())
    return dict(setup=setup, camera=camera, performer=performer, replication=replication,
                action=action)


def read_missing_list(path):
    """Sample names (without extension) of a missing-skeleton list; lines that are not a sample
    name (comments, the official file's English header) are ignored."""
    with open(path) as f:
        return {line.strip() for line in f if NAME_PATTERN.fullmatch(line.strip())}


def is_training(benchmark, fields, dataset):
    if benchmark == 'xsub':
        subjects = TRAIN_SUBJECTS_60 if dataset == 'ntu60' else TRAIN_SUBJECTS_120
        return fields['performer'] in subjects
    if benchmark == 'xview':
        return fields['camera'] in TRAIN_CAMERAS
    if benchmark == 'xset':
        return fields['setup'] % 2 == 0
    raise ValueError(f'unknown benchmark {benchmark}')


# --------------------------------------------------------------------------------------------
# .skeleton reading
# --------------------------------------------------------------------------------------------

class _Lines:
    """Cursor over a text file's lines with format errors that say where it went wrong."""

    def __init__(self, text):
        self.lines = text.split('\n')
        self.position = 0

    def next_int(self, what):
        line = self.take(1, what)[0]
        try:
            return int(line)
        except ValueError:
            raise du.DataFormatError(
                f'line {self.position}: expected the {what}, found {line.strip()[:40]!r}') from None

    def take(self, count, what):
        end = self.position + count
        if end > len(self.lines) or (end == len(self.lines) and not self.lines[-1].strip()):
            raise du.DataFormatError(f'truncated file: ended while reading the {what}')
        block = self.lines[self.position:end]
        self.position = end
        return block

    def expect_end(self):
        for offset, line in enumerate(self.lines[self.position:]):
            if line.strip():
                raise du.DataFormatError(f'line {self.position + offset + 1}: unexpected content after '
                                         f'the last frame: {line.strip()[:40]!r}')


BODY_INFO_FIELDS = 10   # bodyID clipedEdges handLeft/RightConfidence/State isRestricted leanX leanY trackingState
JOINT_FIELDS = 12       # x y z depthX depthY colorX colorY orientationW/X/Y/Z trackingState


def parse_rows(rows, line_numbers, width, what):
    """float64 (len(rows), width) of rows that must each hold exactly `width` numbers. One C
    parse of all rows (np.loadtxt); only a failing file is scanned row by row to name the
    first bad line (1-based `line_numbers`)."""
    try:
        values = np.loadtxt(rows, dtype=np.float64, comments=None, ndmin=2)
        if values.shape == (len(rows), width):
            return values
    except ValueError:
        pass
    for row, number in zip(rows, line_numbers):
        fields = row.split()
        if len(fields) != width:
            raise du.DataFormatError(f'line {number}: {what} {row.strip()[:60]!r} has {len(fields)} '
                                     f'fields, expected {width}')
        for column, token in enumerate(fields, 1):
            try:
                float(token)
            except ValueError:
                raise du.DataFormatError(f'line {number}: {what} field {column} is {token[:20]!r}, '
                                         'not a number') from None
    raise du.DataFormatError(f'{what} rows cannot be read as {width} numbers each')


def read_skeleton_file(path, max_bodies):
    """x, y, z of the first `max_bodies` bodies listed in each frame: float64
    (max_bodies, num_frames, 25, 3), absent bodies zero. Every row is checked: body info rows
    hold 10 numbers, joint rows 12, counts are integers, nothing follows the last frame."""
    with open(path) as f:
        lines = _Lines(f.read())
    num_frames = lines.next_int('frame count')
    if num_frames <= 0:
        raise du.DataFormatError('empty sequence (frame count 0)')
    blocks, info_rows, info_lines, joint_rows, joint_lines = [], [], [], [], []
    for frame in range(num_frames):
        for body in range(lines.next_int(f'body count of frame {frame}')):
            info_lines.append(lines.position + 1)
            info_rows.extend(lines.take(1, f'body info of frame {frame}'))
            num_joints = lines.next_int(f'joint count of frame {frame}')
            if num_joints != NUM_JOINTS:
                raise du.DataFormatError(
                    f'frame {frame} body {body}: {num_joints} joints, expected {NUM_JOINTS}')
            joint_lines.extend(range(lines.position + 1, lines.position + 1 + num_joints))
            joint_rows.extend(lines.take(num_joints, f'joints of frame {frame}'))
            blocks.append((body, frame))
    if not blocks:
        raise du.DataFormatError('no body in any frame')
    lines.expect_end()
    parse_rows(info_rows, info_lines, BODY_INFO_FIELDS, 'body info row')
    xyz = parse_rows(joint_rows, joint_lines, JOINT_FIELDS, 'joint row')[:, :3].reshape(-1, NUM_JOINTS, 3)
    kept = np.array([i for i, (body, _) in enumerate(blocks) if body < max_bodies])
    du.check_finite(xyz[kept])
    bodies = np.zeros((max_bodies, num_frames, NUM_JOINTS, 3))
    body_index, frame_index = np.array(blocks, dtype=np.int64)[kept].T
    bodies[body_index, frame_index] = xyz[kept]
    return bodies


def motion_energy(body):
    """ISC/HiCo body energy: over the body's non-zero frames, std(x) + std(y) + std(z), each
    std taken over all joints and frames; 0 for a body that is never present."""
    present = body.sum(-1).sum(-1) != 0
    frames = body[present]
    if len(frames) == 0:
        return 0.0
    return sum(frames[:, :, c].std() for c in range(3))


def select_bodies(path, body_selection):
    """(3, T, 25, 2) float32 sequence of the two selected bodies."""
    if body_selection == 'file_order':
        bodies = read_skeleton_file(path, MAX_BODIES_KEPT)
    else:
        bodies = read_skeleton_file(path, MAX_BODIES_READ_FOR_ENERGY)
        energies = np.array([motion_energy(body) for body in bodies])
        # Reference: argsort()[::-1]; numpy sorts 4 values stably, so on ties the body listed
        # later comes first (this decides which of several zero-energy bodies is kept).
        bodies = bodies[np.argsort(energies, kind='stable')[::-1][:MAX_BODIES_KEPT]]
    return np.ascontiguousarray(bodies.transpose(3, 1, 2, 0), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# conversion
# --------------------------------------------------------------------------------------------

def list_samples(data_path, dataset, missing, policy):
    """Sorted `.skeleton` file names to convert, with their parsed name fields.
    Returns (samples, number left out as missing, number left out as not in this dataset)."""
    samples, num_missing, num_foreign = [], 0, 0
    for file_name in du.sorted_files(data_path, '.skeleton'):
        stem = file_name[:-len('.skeleton')]
        try:
            fields = parse_sample_name(stem)
        except du.DataFormatError as error:
            policy.handle(os.path.join(data_path, file_name), error)
            continue
        if stem in missing:
            num_missing += 1
        elif fields['setup'] > MAX_SETUP[dataset]:
            num_foreign += 1
        else:
            samples.append((file_name, fields))
    return samples, num_missing, num_foreign


def plan_outputs(samples, dataset, benchmarks):
    """For every (benchmark, part): the indices (into `samples`) it receives, in order."""
    plan = {}
    for benchmark in benchmarks:
        train = [i for i, (_, f) in enumerate(samples) if is_training(benchmark, f, dataset)]
        train_set = set(train)
        plan[(benchmark, 'train')] = train
        plan[(benchmark, 'val')] = [i for i in range(len(samples)) if i not in train_set]
    return plan


def convert(data_path, out_folder, dataset='ntu60', benchmarks=None, ignored_sample_path=None,
            body_selection='file_order', max_frame=300, long_sequences='crop_center',
            on_error='raise', quiet=False):
    benchmarks = tuple(benchmarks or BENCHMARKS[dataset])
    if ignored_sample_path is None:
        ignored_sample_path = DEFAULT_MISSING_LIST[dataset]
    missing = read_missing_list(ignored_sample_path) if ignored_sample_path else set()
    policy = du.ErrorPolicy(on_error)
    samples, num_missing, num_foreign = list_samples(data_path, dataset, missing, policy)
    plan = plan_outputs(samples, dataset, benchmarks)
    num_cropped = 0
    frame_counts = np.zeros(len(samples), dtype=np.int64)

    with du.AtomicOutputs() as outputs:
        writers, slots = {}, [[] for _ in samples]  # slots[i]: (writer, row) receiving sample i
        for key, indices in plan.items():
            path = os.path.join(out_folder, key[0], f'{key[1]}_data.npy')
            writers[key] = outputs.row_writer(
                path, len(indices), (3, max_frame, NUM_JOINTS, MAX_BODIES_KEPT))
            for row, index in enumerate(indices):
                slots[index].append((writers[key], row))

        buffer = np.zeros((3, max_frame, NUM_JOINTS, MAX_BODIES_KEPT), dtype=np.float32)
        for index, (file_name, _) in enumerate(du.progress(samples, f'{dataset} gendata',
                                                            quiet=quiet)):
            try:
                sequence, cropped = du.fit_frames(
                    select_bodies(os.path.join(data_path, file_name), body_selection),
                    max_frame, long_sequences, axis=1)
            except du.SAMPLE_ERRORS as error:
                policy.handle(os.path.join(data_path, file_name), error)
                continue
            num_cropped += cropped
            frame_counts[index] = sequence.shape[1]
            buffer[:] = 0
            buffer[:, :sequence.shape[1]] = sequence
            for writer, row in slots[index]:
                writer.write(row, buffer)

        counts = {}
        for (benchmark, part), indices in plan.items():
            kept = np.asarray(indices, dtype=np.int64)[writers[(benchmark, part)].finish()]
            folder = os.path.join(out_folder, benchmark)
            outputs.save_labels(os.path.join(folder, f'{part}_label.pkl'),
                                [samples[i][0] for i in kept],
                                [samples[i][1]['action'] - 1 for i in kept])
            outputs.save_npy(os.path.join(folder, f'{part}_num_frame.npy'), frame_counts[kept])
            counts[f'{benchmark}/{part}'] = len(kept)

    parts = [' '.join(f'{k} {v}' for k, v in counts.items()),
             f'{num_missing} missing-listed left out', policy.summary_part(),
             f'{num_cropped} longer than {max_frame} frames cropped ({long_sequences})']
    if num_foreign:
        parts.append(f'{num_foreign} files of setups > {MAX_SETUP[dataset]} ignored')
    du.summary('ntu_gendata', parts)
    return counts


def build_parser():
    parser = du.make_parser(__doc__)
    parser.add_argument('--data_path', required=True,
                        help='folder of raw .skeleton files (NTU120: both zips in one folder)')
    parser.add_argument('--out_folder', required=True, help='output root; one sub-folder per benchmark')
    parser.add_argument('--dataset', choices=sorted(BENCHMARKS), default='ntu60')
    parser.add_argument('--ignored_sample_path', default=None,
                        help='missing-skeleton list (default: the official list shipped in '
                             'tools/resources for --dataset); pass an empty string for none')
    parser.add_argument('--benchmark', nargs='+', default=None,
                        help='benchmarks to write (default: NTU60 xsub xview, NTU120 xsub xset)')
    parser.add_argument('--body_selection', choices=('file_order', 'energy'), default='file_order',
                        help='file_order: AimCLR/st-gcn/AS-CAL; energy: ISC/HiCo')
    parser.add_argument('--max_frame', type=int, default=300, help='frame buffer length')
    parser.add_argument('--long_sequences', choices=du.OVERFLOW_POLICIES, default='crop_center',
                        help='sequences longer than --max_frame: keep the centre window '
                             '(default), the first frames, or treat as an error (see --on_error)')
    du.add_common_arguments(parser)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    du.setup_logging(args.verbose)
    for benchmark in args.benchmark or ():
        if benchmark not in BENCHMARKS[args.dataset]:
            parser.error(f'benchmark {benchmark} is not defined for {args.dataset}')
    return convert(args.data_path, args.out_folder, args.dataset, args.benchmark,
                   args.ignored_sample_path, args.body_selection,
                   args.max_frame, args.long_sequences, args.on_error, args.quiet)


if __name__ == '__main__':
    sys.exit(du.cli(main))
