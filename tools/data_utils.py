"""Helpers shared by the data preparation tools.

- all-or-nothing outputs: every file is written under a temporary name in its final directory
  and renamed into place only when the whole run succeeded (`AtomicOutputs`);
- streamed `.npy` outputs through `np.lib.format.open_memmap` (`NpyRowWriter`), so large datasets
  never have to fit in RAM;
- the label pickle `(sample_names, labels)` read/write;
- the per-sample error policy (`--on_error raise|skip`) with its summary;
- temporal length handling: OpenCV-compatible bilinear resize (half-pixel centres), pad/crop;
- rotation helpers (rotation about y, Euler-Rodrigues axis/angle matrices).
"""

import argparse
import contextlib
import io
import json
import logging
import os
import pickle
import shutil
import sys

import numpy as np
from tqdm import tqdm

from torchlight.files import DataFileError, load_label_pickle, load_npy  # noqa: F401  (numpy only)

LOG = logging.getLogger('skeleton_ssl.data')

# Errors a malformed input can raise while being read; anything else is a bug and propagates.
SAMPLE_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError)

OVERFLOW_POLICIES = ('crop_center', 'crop_head', 'error')


class DataFormatError(ValueError):
    """An input file does not follow its documented format."""


# --------------------------------------------------------------------------------------------
# logging, progress, command line
# --------------------------------------------------------------------------------------------

class _TqdmLoggingHandler(logging.Handler):
    """Writes log lines through tqdm so they do not break an active progress bar."""

    def emit(self, record):
        tqdm.write(self.format(record), file=sys.stderr)


def setup_logging(verbose=False):
    LOG.handlers[:] = [_TqdmLoggingHandler()]
    LOG.handlers[0].setFormatter(logging.Formatter('[%(levelname)s] %(message)s'))
    LOG.setLevel(logging.DEBUG if verbose else logging.INFO)
    LOG.propagate = False


def progress(iterable, desc, total=None, quiet=False):
    return tqdm(iterable, desc=desc, total=total, unit='seq', dynamic_ncols=True,
                disable=quiet, file=sys.stderr)


def add_common_arguments(parser):
    """Options every tool shares."""
    parser.add_argument('--on_error', choices=('raise', 'skip'), default='raise',
                        help='corrupt or invalid input sample: stop with an error naming it '
                             '(default) or log it, skip it and report the count at the end')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    parser.add_argument('--verbose', action='store_true', help='debug logging')


def cli(main, argv=None):
    """Run a tool's `main(argv)` as a command: exit code 0, or 2 with one line `error: ...`
    naming the file or sample at fault when the input (or the output folder) is bad, instead
    of a traceback. `main` itself raises, so tests and scripts can call it directly."""
    try:
        main(argv)
    except (ValueError, OSError) as err:   # DataFormatError, DataFileError, missing files, ...
        print('error: ' + ' '.join(str(err).split()), file=sys.stderr)
        return 2
    return 0


def make_parser(description, epilog=None):
    return argparse.ArgumentParser(description=description, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def summary(tool, parts):
    """The one summary line each tool prints at the end (stdout, so scripts can capture it)."""
    line = f'{tool}: ' + '; '.join(parts)
    print(line)
    return line


# --------------------------------------------------------------------------------------------
# per-sample error policy
# --------------------------------------------------------------------------------------------

class ErrorPolicy:
    """`raise`: stop at the first bad sample with its name; `skip`: log, count, go on."""

    def __init__(self, mode='raise'):
        if mode not in ('raise', 'skip'):
            raise ValueError(f'unknown on_error mode {mode!r}')
        self.mode = mode
        self.skipped = []  # (sample, message)

    def handle(self, sample, error):
        message = f'{sample}: {error}'
        if self.mode == 'raise':
            raise DataFormatError(message) from error
        LOG.warning('skipped %s', message)
        self.skipped.append((str(sample), str(error)))

    def summary_part(self):
        return f'skipped {len(self.skipped)} invalid sample(s)'


# --------------------------------------------------------------------------------------------
# all-or-nothing outputs
# --------------------------------------------------------------------------------------------

def _temporary_name(final_path):
    directory, base = os.path.split(os.path.abspath(final_path))
    # Keep the final suffix: np.save appends '.npy' to names that do not end with it.
    return os.path.join(directory, f'.tmp-{os.getpid()}-{base}')


class AtomicOutputs:
    """Collects a run's outputs under temporary names; `commit` renames them into place.

    Use as a context manager: leaving the block normally finishes the row writers and commits
    everything; leaving it with an exception removes every temporary file, so a failed run never
    leaves half-written outputs (and never clobbers the outputs of an earlier good run).
    """

    def __init__(self):
        self._pending = []  # (temporary path, final path)
        self._writers = []
        self._created = []  # folders this run created (removed again when it fails)

    def temporary_path(self, final_path):
        final_path = os.path.abspath(os.fspath(final_path))
        folder = os.path.dirname(final_path)
        missing = []
        while not os.path.isdir(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
        os.makedirs(os.path.dirname(final_path), exist_ok=True)
        self._created.extend(missing)
        if any(final == final_path for _, final in self._pending):
            raise ValueError(f'{final_path} is written twice in one run')
        temporary = _temporary_name(final_path)
        self._pending.append((temporary, final_path))
        return temporary

    def save_npy(self, final_path, array):
        np.save(self.temporary_path(final_path), np.asarray(array))

    def save_pickle(self, final_path, obj):
        with open(self.temporary_path(final_path), 'wb') as f:
            pickle.dump(obj, f)

    def save_labels(self, final_path, sample_names, labels):
        self.save_pickle(final_path, label_tuple(sample_names, labels))

    def save_json(self, final_path, obj):
        with open(self.temporary_path(final_path), 'w') as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write('\n')

    def copy_file(self, source, final_path):
        shutil.copyfile(source, self.temporary_path(final_path))

    def row_writer(self, final_path, capacity, row_shape, dtype=np.float32):
        writer = NpyRowWriter(self.temporary_path(final_path), capacity, row_shape, dtype)
        self._writers.append(writer)
        return writer

    def commit(self):
        for writer in self._writers:
            writer.finish()
        for temporary, final in self._pending:
            os.replace(temporary, final)
        self._pending.clear()

    def discard(self):
        for writer in self._writers:
            writer.close()
        for temporary, _ in self._pending:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)
        self._pending.clear()
        for folder in sorted(self._created, key=len, reverse=True):   # deepest first
            with contextlib.suppress(OSError):   # left alone when something else is inside
                os.rmdir(folder)
        self._created.clear()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.discard()
                raise
        else:
            self.discard()
        return False


class NpyRowWriter:
    """Streams rows (samples) into a `.npy` file through a memory map.

    Rows are written by index; rows never written (skipped samples) are squeezed out by
    `finish`, which moves the kept rows down in order and shrinks the file in place.
    `kept` (after `finish`) holds the original indices of the rows that remain.
    """

    def __init__(self, path, capacity, row_shape, dtype=np.float32):
        self.path = path
        self.capacity = int(capacity)
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self.written = np.zeros(self.capacity, dtype=bool)
        self.kept = None
        shape = (self.capacity,) + self.row_shape
        if self.capacity == 0:  # a zero-length file cannot be memory-mapped
            np.save(path, np.zeros(shape, self.dtype))
            self.array = None
        else:
            self.array = np.lib.format.open_memmap(path, mode='w+', dtype=self.dtype, shape=shape)

    def write(self, index, row):
        self.array[index] = row
        self.written[index] = True

    def write_rows(self, indices, rows):
        self.array[indices] = rows
        self.written[indices] = True

    def finish(self):
        if self.kept is not None:
            return self.kept
        self.kept = np.flatnonzero(self.written)
        if self.array is not None:
            for new_index, old_index in enumerate(self.kept):
                if new_index != old_index:
                    self.array[new_index] = self.array[old_index]
            self.array.flush()
            self.close()
            if len(self.kept) < self.capacity:
                shrink_npy_rows(self.path, len(self.kept))
        return self.kept

    def close(self):
        if self.array is not None:
            self.array.flush()
            self.array = None  # dropping the last reference unmaps the file


def shrink_npy_rows(path, num_rows):
    """Keeps the first `num_rows` rows of a C-ordered `.npy` file: rewrites its header in place
    (numpy pads headers so the first dimension can change without moving the data) and
    truncates the file."""
    with open(path, 'r+b') as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
            write_header = np.lib.format.write_array_header_1_0
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
            write_header = np.lib.format.write_array_header_2_0
        data_offset = f.tell()
        if fortran_order:
            raise ValueError(f'{path}: cannot shrink a Fortran-ordered array')
        header = {'descr': np.lib.format.dtype_to_descr(dtype), 'fortran_order': False,
                  'shape': (num_rows,) + tuple(shape[1:])}
        candidate = io.BytesIO()
        write_header(candidate, header)
        if candidate.tell() != data_offset:
            raise RuntimeError(f'{path}: new header does not fit the old one')
        f.seek(0)
        f.write(candidate.getvalue())
        f.truncate(data_offset + num_rows * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)


# --------------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------------

def label_tuple(sample_names, labels):
    """The label pickle content: `(list[str], list[int])`, labels 0-based."""
    names = [str(name) for name in sample_names]
    values = [int(label) for label in labels]
    if len(names) != len(values):
        raise ValueError(f'{len(names)} names but {len(values)} labels')
    if any(value < 0 for value in values):
        raise ValueError('labels must be 0-based (found a negative label)')
    return names, values


def load_labels(path):
    """(names, labels) of a label pickle, read with the restricted unpickler (plain values
    only; Python 2 pickles too) and checked."""
    return load_label_pickle(path)


def class_counts(labels, num_classes=None):
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes or 0)


def write_label_subset(outputs, source_label_path, target_label_path, kept, total):
    """The label pickle of the kept rows: a byte copy when nothing was dropped."""
    if len(kept) == total:
        outputs.copy_file(source_label_path, target_label_path)
    else:
        names, labels = load_labels(source_label_path)
        outputs.save_labels(target_label_path, [names[i] for i in kept], [labels[i] for i in kept])


def transform_array_file(outputs, source_path, target_path, transform, out_row_shape,
                         sample_names, policy, find_invalid=None, batch_size=256, desc='',
                         quiet=False):
    """Streams `source_path` (N, ...) through `transform` (batch -> batch) in chunks into
    `target_path`; samples flagged by `find_invalid(chunk) -> [(row, problem)]` go to the error
    policy and are left out. Returns the indices of the rows kept."""
    data = load_npy(source_path, mmap=True, what='data file')
    if len(data) != len(sample_names):
        raise DataFormatError(f'{source_path}: {len(data)} samples but {len(sample_names)} labels')
    writer = outputs.row_writer(target_path, len(data), out_row_shape)
    bar = progress(None, desc, total=len(data), quiet=quiet)
    for start in range(0, len(data), batch_size):
        chunk = np.asarray(data[start:start + batch_size], dtype=np.float32)
        valid = np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
        problems = [(row, 'non-finite (NaN/inf) coordinates') for row in np.flatnonzero(~valid)]
        if find_invalid is not None:
            problems += [(row, problem) for row, problem in find_invalid(chunk) if valid[row]]
        for row, problem in problems:
            policy.handle(sample_names[start + row], DataFormatError(problem))
            valid[row] = False
        if valid.any():
            writer.write_rows(start + np.flatnonzero(valid), transform(chunk[valid]))
        bar.update(len(chunk))
    bar.close()
    return writer.finish()


# --------------------------------------------------------------------------------------------
# temporal length
# --------------------------------------------------------------------------------------------


def transform_split(outputs, data_path, out_folder, split, target_name, transform, out_row_shape,
                    policy, find_invalid=None, batch_size=256, desc='', quiet=False):
    """One split of a preprocessing step: `<data_path>/<split>_data.npy` through
    `transform_array_file` into `<out_folder>/<target_name>`, and the label pickle of the kept
    samples next to it. `out_row_shape(source_shape)` gives the output sample shape.
    Returns (indices kept, source path)."""
    label_path = os.path.join(data_path, f'{split}_label.pkl')
    names, _ = load_labels(label_path)
    source = os.path.join(data_path, f'{split}_data.npy')
    shape = load_npy(source, mmap=True, what='data file').shape
    kept = transform_array_file(outputs, source, os.path.join(out_folder, target_name), transform,
                                out_row_shape(shape), names, policy, find_invalid, batch_size,
                                desc, quiet)
    write_label_subset(outputs, label_path, os.path.join(out_folder, f'{split}_label.pkl'),
                       kept, len(names))
    return kept, source

def linear_resize_taps(lengths, out_len):
    """Source rows and weights of OpenCV's INTER_LINEAR resize from L to `out_len` rows.

    Half-pixel centres: src = (dst + 0.5) * L / out_len - 0.5, computed in double and rounded
    to float32 as OpenCV does, then floor / fraction, clamped at both ends.
    Returns `(low, high, weight)` of shape (N, out_len): value = row[low]*(1-w) + row[high]*w.
    """
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1, 1)
    if np.any(lengths < 1):
        raise ValueError('cannot resize an empty sequence')
    scale = 1.0 / (out_len / lengths)  # OpenCV keeps 1 / (dsize / ssize) in double
    position = ((np.arange(out_len) + 0.5) * scale - 0.5).astype(np.float32)
    low = np.floor(position)
    weight = (position - low).astype(np.float32)
    low = low.astype(np.int64)
    before_start = low < 0
    low[before_start] = 0
    weight[before_start] = 0
    past_end = low >= lengths - 1
    low = np.where(past_end, lengths - 1, low)
    weight[past_end] = 0
    high = np.minimum(low + 1, lengths - 1)
    return low, high, weight


def resize_frames(x, lengths, out_len, axis):
    """Bilinear (OpenCV, half-pixel centres) resize of frames [0, L_n) of each sample n to
    `out_len` frames, along `axis` of the batch `x` (axis 0 = samples); float32 arithmetic."""
    x = np.asarray(x, dtype=np.float32)
    low, high, weight = linear_resize_taps(lengths, out_len)
    index_shape = [1] * x.ndim
    index_shape[0], index_shape[axis] = low.shape
    low, high = low.reshape(index_shape), high.reshape(index_shape)
    weight = weight.reshape(index_shape)
    first = np.take_along_axis(x, low, axis=axis)
    second = np.take_along_axis(x, high, axis=axis)
    return first * (np.float32(1) - weight) + second * weight


def crop_window(num_frames, max_frames, policy):
    """Start of the `max_frames` window kept from a longer sequence (None: it fits)."""
    if num_frames <= max_frames:
        return None
    if policy == 'crop_center':
        return (num_frames - max_frames) // 2
    if policy == 'crop_head':
        return 0
    raise DataFormatError(f'{num_frames} frames exceed the {max_frames}-frame buffer '
                          '(choose a crop policy to keep it)')


def fit_frames(sequence, max_frames, policy, axis=0):
    """Crops `sequence` along `axis` to at most `max_frames` frames according to `policy`.
    Returns `(sequence, was_cropped)`; padding is left to the caller's zero buffer."""
    start = crop_window(sequence.shape[axis], max_frames, policy)
    if start is None:
        return sequence, False
    return np.take(sequence, np.arange(start, start + max_frames), axis=axis), True


def fit_sequences(sequences, length, temporal, long_sequences='crop_center'):
    """Variable-length sequences (T_i, ...) -> (N, length, ...) float32 and the number cropped.

    `resize`: bilinear resize of each sequence (OpenCV rules, half-pixel centres), vectorised
    over the batch; `pad`: zeros after the end, longer sequences cropped per `long_sequences`.
    """
    if not sequences:
        raise ValueError('no sequences')
    frame_shape = sequences[0].shape[1:]
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    if temporal == 'resize':
        padded = np.zeros((len(sequences), lengths.max()) + frame_shape, dtype=np.float32)
        for n, sequence in enumerate(sequences):
            padded[n, :len(sequence)] = sequence
        return resize_frames(padded, lengths, length, axis=1), 0
    if temporal != 'pad':
        raise ValueError(f'unknown temporal mode {temporal!r}')
    fixed = np.zeros((len(sequences), length) + frame_shape, dtype=np.float32)
    num_cropped = 0
    for n, sequence in enumerate(sequences):
        sequence, cropped = fit_frames(sequence, length, long_sequences)
        fixed[n, :len(sequence)] = sequence
        num_cropped += cropped
    return fixed, num_cropped


def center_on_joint(sequence, joint):
    """Subtracts `joint` from every joint, per frame (and person), on (..., V, C) arrays;
    all-zero skeletons (absent persons, padding) stay zero."""
    present = np.any(sequence != 0, axis=(-2, -1), keepdims=True)
    return (sequence - sequence[..., joint:joint + 1, :]) * present


# --------------------------------------------------------------------------------------------
# rotations
# --------------------------------------------------------------------------------------------

def rotate_about_y(xyz, theta, trig_dtype=None):
    """Applies R_y(theta) = [[cos, 0, -sin], [0, 1, 0], [sin, 0, cos]] (as new = R @ xyz).

    `xyz` has the coordinate on axis 0 (3, ...); `theta` (radians) broadcasts against xyz[0].
    `trig_dtype`: the precision of cos / sin (the product runs in xyz's dtype).
    """
    theta = np.asarray(theta) if trig_dtype is None else np.asarray(theta, dtype=trig_dtype)
    cos, sin = np.cos(theta), np.sin(theta)
    x, y, z = xyz[0], xyz[1], xyz[2]
    return np.stack([cos * x - sin * z, y, sin * x + cos * z])


def angle_to(vectors, target):
    """Angle between each row of `vectors` (n, 3) and `target` (3,); 0 for (near) zero
    vectors. The unit vector is formed in the dtype of `vectors` (float32 data stays float32)."""
    vectors = np.asarray(vectors)
    target = np.asarray(target, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    degenerate = np.abs(vectors).sum(-1) < 1e-6
    with np.errstate(invalid='ignore', divide='ignore'):
        units = vectors / norms
    cosine = np.clip(units.astype(np.float64) @ (target / np.linalg.norm(target)), -1.0, 1.0)
    return np.where(degenerate, 0.0, np.arccos(cosine))


def axis_angle_matrices(axes, angles):
    """Euler-Rodrigues rotation matrices (n, 3, 3) for rotations by `angles` about `axes`;
    identity where the axis or the angle is (near) zero."""
    axes = np.asarray(axes, dtype=np.float64)
    angles = np.asarray(angles, dtype=np.float64)
    identity = (np.abs(axes).sum(-1) < 1e-6) | (np.abs(angles) < 1e-6)
    norms = np.sqrt((axes * axes).sum(-1, keepdims=True))
    with np.errstate(invalid='ignore', divide='ignore'):
        units = axes / norms
    a = np.cos(angles / 2.0)
    b, c, d = np.moveaxis(-units * np.sin(angles / 2.0)[:, None], -1, 0)
    matrices = np.stack([
        np.stack([a * a + b * b - c * c - d * d, 2 * (b * c + a * d), 2 * (b * d - a * c)], -1),
        np.stack([2 * (b * c - a * d), a * a + c * c - b * b - d * d, 2 * (c * d + a * b)], -1),
        np.stack([2 * (b * d + a * c), 2 * (c * d - a * b), a * a + d * d - b * b - c * c], -1),
    ], -2)
    matrices[identity] = np.eye(3)
    return matrices


def aligning_rotations(vectors, target):
    """Rotations (n, 3, 3) that turn each of `vectors` (n, 3) onto the direction `target`
    (about vector x target), as the 2s-AGCN normaliser builds them."""
    vectors = np.asarray(vectors)
    axes = np.cross(vectors.astype(np.float64), np.asarray(target, dtype=np.float64))
    return axis_angle_matrices(axes, angle_to(vectors, target))


def body_frame(sequence, up, lateral):
    """Rotation (3, 3) whose rows are the body's axes in camera coordinates, one per sequence:
    y along the mean over frames of the `up` bone (joint up[0] -> up[1], e.g. hip centre ->
    shoulder centre), x along the mean of the `lateral` (left, right) joint pairs made
    perpendicular to y, z = x cross y (a proper rotation, never a mirror). `sequence @ R.T`
    expresses every frame in that body frame, so the camera's azimuth and tilt are removed while
    turns within the clip remain. Identity when either direction is degenerate (e.g. all zeros).
    """
    sequence = np.asarray(sequence, dtype=np.float64)
    y = (sequence[:, up[1]] - sequence[:, up[0]]).mean(0)
    x = sum((sequence[:, right] - sequence[:, left]).mean(0) for left, right in lateral)
    y_norm = np.linalg.norm(y)
    if y_norm < 1e-9:
        return np.eye(3)
    y = y / y_norm
    x = x - (x @ y) * y
    x_norm = np.linalg.norm(x)
    if x_norm < 1e-9:
        return np.eye(3)
    x = x / x_norm
    return np.stack([x, y, np.cross(x, y)])


# --------------------------------------------------------------------------------------------
# misc
# --------------------------------------------------------------------------------------------

def sorted_files(directory, suffix):
    """Names (not paths) of the files in `directory` ending with `suffix`, sorted, so outputs
    never depend on the file system's listing order."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f'not a directory: {directory}')
    return sorted(name for name in os.listdir(directory)
                  if name.endswith(suffix) and os.path.isfile(os.path.join(directory, name)))


def check_finite(array, what='coordinates'):
    if not np.all(np.isfinite(array)):
        raise DataFormatError(f'non-finite (NaN/inf) {what}')
