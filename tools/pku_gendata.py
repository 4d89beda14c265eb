"""PKU-MMD part I / part II: untrimmed recordings + label files -> per-instance arrays.

Inputs (official release layout):
  --skeleton_path  one text file per recording, `<id>.txt`, one row per frame with >= 150
                   numbers (2 bodies x 25 joints x xyz); ids `0002-L` (part I) or `A01N01-L`
                   (part II, view L/M/R)
  --label_path     `<id>.txt` with rows `class,start,end,confidence` (frames 1-based, inclusive)
  --split_path     folder with the official split files: part I `cross-subject.txt`,
                   `cross-view.txt`; part II `cross_subject_v2.txt`, `cross_view_v2.txt`
                   (line 2: comma-separated training ids, line 4: test ids)
Every labelled row becomes one sample, named like the reference converter
(`F002V001C005L003.skeleton`: recording 0002, view L, class 5, 3rd row; part II
`A001N001V001C...`), with label class - 1 (51 classes). A sample is `train` when its recording
is in the split file's training list, otherwise `val`. Outputs, per benchmark (xsub, xview):
  <out_folder>/<benchmark>/{train,val}_data.npy  float32 (N, 3, 300, 25, 2)
  <out_folder>/<benchmark>/{train,val}_label.pkl, {train,val}_num_frame.npy
Sample order: sorted names (the reference used an unsorted directory listing). The second body
is kept in a frame only when its 75 values do not sum to zero (as the reference's converter).
Sequences longer than --max_frame are centre-cropped (reference behaviour) unless told otherwise.
Continue with tools/aimclr_preprocess.py for the 50-frame AimCLR data.
"""

import os
import re
import sys

import numpy as np

if __package__ in (None, ''):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools import data_utils as du  # noqa: E402

NUM_CLASSES = 51
NUM_JOINTS = 25
VALUES_PER_FRAME = 150
VIEW_CODES = {'L': 1, 'M': 2, 'R': 3}
RECORDING_PATTERNS = {1: re.compile(r'(\d{4})-([LMR])$'),
                      2: re.compile(r'A(\d{2})N(\d{2})-([LMR])$')}
SPLIT_FILES = {1: {'xsub': 'cross-subject.txt', 'xview': 'cross-view.txt'},
               2: {'xsub': 'cross_subject_v2.txt', 'xview': 'cross_view_v2.txt'}}


def sample_name(part, recording, label_class, row):
    groups = RECORDING_PATTERNS[part].match(recording).groups()
    view = VIEW_CODES[groups[-1]]
    if part == 1:
        prefix = f'F{int(groups[0]):03d}'
    else:
        prefix = f'A{int(groups[0]):03d}N{int(groups[1]):03d}'
    return f'{prefix}V{view:03d}C{label_class:03d}L{row:03d}.skeleton'


def read_split_file(path):
    """(training ids, test ids) from an official split file (lines 2 and 4)."""
    with open(path) as f:
        lines = f.read().split('\n')
    if len(lines) < 4:
        raise du.DataFormatError(f'{path}: expected 4 lines (header, train ids, header, test ids)')
    train, test = ({item.strip() for item in lines[i].split(',') if item.strip()} for i in (1, 3))
    both = train & test
    if both:
        raise du.DataFormatError(f'{path}: ids in both train and test: {sorted(both)[:5]}')
    return train, test


def read_label_file(path):
    """[(class, start, end)] of a label file; frames 1-based inclusive."""
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = [field.strip() for field in line.split(',')]
            try:
                label_class, start, end = (int(float(v)) for v in fields[:3])
            except ValueError:
                raise du.DataFormatError(f'line {number}: expected class,start,end,...') from None
            if not 1 <= label_class <= NUM_CLASSES:
                raise du.DataFormatError(f'line {number}: class {label_class} not in 1..{NUM_CLASSES}')
            if start < 1 or end < start:
                raise du.DataFormatError(f'line {number}: empty or invalid interval {start}..{end}')
            rows.append((label_class, start, end))
    return rows


def read_recording(path):
    """float64 (T, 150) skeleton rows of one recording."""
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            values = line.split()
            if not values:
                continue
            if len(values) < VALUES_PER_FRAME:
                raise du.DataFormatError(f'line {number}: {len(values)} numbers, expected '
                                         f'{VALUES_PER_FRAME} (2 bodies x 25 joints x 3)')
            rows.append(values[:VALUES_PER_FRAME])
    if not rows:
        raise du.DataFormatError('empty recording')
    frames = np.asarray(rows, dtype=np.float64)
    du.check_finite(frames)
    return frames


def instance_sequence(frames):
    """(T, 150) rows -> (3, T, 25, 2) float32; body 2 only where its values do not sum to 0."""
    bodies = frames.reshape(len(frames), 2, NUM_JOINTS, 3).copy()
    bodies[frames[:, 75:].sum(axis=1) == 0, 1] = 0
    return np.ascontiguousarray(bodies.transpose(3, 0, 2, 1), dtype=np.float32)


def plan_instances(part, label_path, policy):
    """Sorted recordings with their instances: {recording: [(name, class, start, end)]}."""
    plan = {}
    for file_name in du.sorted_files(label_path, '.txt'):
        recording = file_name[:-len('.txt')]
        path = os.path.join(label_path, file_name)
        try:
            if not RECORDING_PATTERNS[part].match(recording):
                raise du.DataFormatError(f'not a part {part} recording id')
            rows = read_label_file(path)
        except du.SAMPLE_ERRORS as error:
            policy.handle(path, error)
            continue
        plan[recording] = [(sample_name(part, recording, c, k), c, s, e)
                           for k, (c, s, e) in enumerate(rows, 1)]
    return plan


def convert(part, skeleton_path, label_path, split_path, out_folder, benchmarks=('xsub', 'xview'),
            max_frame=300, long_sequences='crop_center', on_error='raise', quiet=False):
    policy = du.ErrorPolicy(on_error)
    splits = {b: read_split_file(os.path.join(split_path, SPLIT_FILES[part][b])) for b in benchmarks}
    plan = plan_instances(part, label_path, policy)
    instances = sorted((name, recording, c) for recording, rows in plan.items()
                       for name, c, _, _ in rows)
    row_of = {}  # (benchmark, sample name) -> (part, row)
    members = {}
    for benchmark in benchmarks:
        train_ids = splits[benchmark][0]
        for name, recording, _ in instances:
            key = (benchmark, 'train' if recording in train_ids else 'val')
            row_of[(benchmark, name)] = (key, len(members.setdefault(key, [])))
            members[key].append(name)
    class_of = {name: c for name, _, c in instances}
    counters = dict(cropped=0, clipped=0)
    buffer = np.zeros((3, max_frame, NUM_JOINTS, 2), dtype=np.float32)
    frame_counts = {}

    with du.AtomicOutputs() as outputs:
        writers = {}
        for benchmark in benchmarks:
            for split in ('train', 'val'):
                key = (benchmark, split)
                writers[key] = outputs.row_writer(
                    os.path.join(out_folder, benchmark, f'{split}_data.npy'),
                    len(members.get(key, [])), buffer.shape)
        for recording, rows in du.progress(plan.items(), f'pku part {part}', quiet=quiet):
            path = os.path.join(skeleton_path, recording + '.txt')
            try:
                frames = read_recording(path)
            except du.SAMPLE_ERRORS as error:
                policy.handle(f'{path} ({len(rows)} instances)', error)
                continue
            for name, _, start, end in rows:
                try:
                    if start > len(frames):
                        raise du.DataFormatError(
                            f'starts at frame {start}, the recording has {len(frames)} frames')
                    counters['clipped'] += end > len(frames)  # the reference slices silently
                    sequence, cropped = du.fit_frames(instance_sequence(frames[start - 1:end]),
                                                      max_frame, long_sequences, axis=1)
                except du.SAMPLE_ERRORS as error:
                    policy.handle(f'{name} of {path}', error)
                    continue
                counters['cropped'] += cropped
                frame_counts[name] = sequence.shape[1]
                buffer[:] = 0
                buffer[:, :sequence.shape[1]] = sequence
                for benchmark in benchmarks:
                    key, row = row_of[(benchmark, name)]
                    writers[key].write(row, buffer)

        counts = {}
        for (benchmark, split), writer in writers.items():
            names = [members.get((benchmark, split), [])[i] for i in writer.finish()]
            folder = os.path.join(out_folder, benchmark)
            outputs.save_labels(os.path.join(folder, f'{split}_label.pkl'), names,
                                [class_of[n] - 1 for n in names])
            outputs.save_npy(os.path.join(folder, f'{split}_num_frame.npy'),
                             np.array([frame_counts[n] for n in names], dtype=np.int64))
            counts[f'{benchmark}/{split}'] = len(names)

    du.summary(f'pku_gendata part {part}', [
        ' '.join(f'{k} {v}' for k, v in counts.items()), policy.summary_part(),
        f"{counters['cropped']} longer than {max_frame} frames cropped ({long_sequences})",
        f"{counters['clipped']} intervals ending past the recording clipped to its end"])
    return counts


def build_parser():
    parser = du.make_parser(__doc__)
    parser.add_argument('--part', type=int, choices=(1, 2), required=True)
    parser.add_argument('--skeleton_path', required=True, help='folder of recording skeleton files')
    parser.add_argument('--label_path', required=True, help='folder of recording label files')
    parser.add_argument('--split_path', required=True, help='folder with the official split files')
    parser.add_argument('--out_folder', required=True)
    parser.add_argument('--benchmark', nargs='+', choices=('xsub', 'xview'),
                        default=['xsub', 'xview'])
    parser.add_argument('--max_frame', type=int, default=300)
    parser.add_argument('--long_sequences', choices=du.OVERFLOW_POLICIES, default='crop_center')
    du.add_common_arguments(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    du.setup_logging(args.verbose)
    return convert(args.part, args.skeleton_path, args.label_path, args.split_path,
                   args.out_folder, tuple(args.benchmark), args.max_frame, args.long_sequences,
                   args.on_error, args.quiet)


if __name__ == '__main__':
    sys.exit(du.cli(main))
