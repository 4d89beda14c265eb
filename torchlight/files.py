"""Reading data files safely, writing outputs atomically, one run per work_dir.

Needs only numpy (the data tools use it without importing torch):
- `load_pickle`: a restricted unpickler that builds only plain values (containers, numbers,
  strings, numpy arrays and scalars); a pickle that names anything else is refused before
  anything is called, so a crafted label or score file cannot run code.
- `load_label_pickle`: the reference `(sample_names, labels)` pickle, checked.
- `load_npy`: a `.npy` array with a clear message for files that are not one.
- `atomic_write` / `write_json`: temporary file in the same folder, fsync, rename; a kill never
  leaves a truncated output. `remove_stale_temporaries` deletes what a killed write left.
- `WorkDirLock`: an advisory lock (`flock`) on `<work_dir>/.lock`; the OS drops it when the
  holding process dies, so a killed run never blocks its own resume.
"""
import json
import os
import pickle
import sys
import tempfile
import time

import numpy as np


class DataFileError(ValueError):
    """A data file that is missing, unreadable or not what it should be (names the file)."""


class WorkDirError(RuntimeError):
    """The work_dir cannot be used: not writable, or in use by another run."""


# ----------------------------------------------------------------------------- safe pickles
# (module, name) pairs a pickle of plain values may refer to. Lists, tuples, dicts, strings,
# numbers, booleans and None need no global at all. numpy arrays and scalars pickle through
# their reconstructors (numpy 1 names `numpy.core`, numpy 2 `numpy._core`); bytes written by
# protocol 2 come through `_codecs.encode`.
SAFE_PICKLE_GLOBALS = {
    ('builtins', name) for name in ('set', 'frozenset', 'complex', 'bytes', 'bytearray', 'slice', 'range')
} | {
    (f'numpy.{core}.{module}', name)
    for core in ('core', '_core')
    for module, name in (('multiarray', '_reconstruct'), ('multiarray', 'scalar'),
                         ('numeric', '_frombuffer'))
} | {('numpy', 'ndarray'), ('numpy', 'dtype'), ('_codecs', 'encode'), ('collections', 'OrderedDict')}
# Python 2 pickles name the same objects under their old module names.
_PY2_MODULES = {'__builtin__': 'builtins', 'copy_reg': 'copyreg'}


class _PlainUnpickler(pickle.Unpickler):
    refused = None

    def find_class(self, module, name):
        module = _PY2_MODULES.get(module, module)
        if (module, name) not in SAFE_PICKLE_GLOBALS:
            self.refused = f'{module}.{name}'
            raise pickle.UnpicklingError(f'refers to {module}.{name}')
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError('holds a persistent reference')


def load_pickle(path, what='pickle'):
    """The content of the pickle `path`, built only from plain values (see
    SAFE_PICKLE_GLOBALS); Python 2 pickles are read as latin-1. Raises DataFileError naming
    the file for a missing file, a non-pickle or a pickle that refers to anything else
    (nothing named in it is ever called)."""
    if not os.path.isfile(path):
        raise DataFileError(f'{what} not found: {path}')
    for encoding in ('ASCII', 'latin1'):
        with open(path, 'rb') as f:
            unpickler = _PlainUnpickler(f, encoding=encoding)
            try:
                return unpickler.load()
            except UnicodeDecodeError:
                continue            # a Python 2 pickle of byte strings: retry as latin-1
            except Exception as err:   # unpickling raises many classes
                if unpickler.refused:
                    raise DataFileError(
                        f'{what} {path} refused: it refers to {unpickler.refused}; only lists, '
                        'tuples, dicts, strings, numbers and numpy arrays are read from a pickle '
                        '(nothing in the file was run)') from None
                raise DataFileError(f'{what} {path} is not a readable pickle ({_first_line(err)}; '
                                    f'{_starts_with(path)})') from None
    raise DataFileError(f'{what} {path}: text in an unknown encoding')


def _first_line(err):
    text = str(err).strip().split('\n')[0] or type(err).__name__
    return text[:200]


def _starts_with(path, count=16):
    with open(path, 'rb') as f:
        head = f.read(count)
    return f'the file starts with {head!r}' if head else 'the file is empty'


def load_label_pickle(path, what='label file'):
    """(sample_names: list[str], labels: list[int]) from a reference label pickle, checked:
    a pair of equally long sequences, integer labels >= 0."""
    content = load_pickle(path, what)
    if not (isinstance(content, (tuple, list)) and len(content) == 2):
        raise DataFileError(f'{path}: expected a pickle of (sample_names, labels), got '
                            f'{type(content).__name__}' + (f' of length {len(content)}'
                                                           if isinstance(content, (tuple, list)) else ''))
    try:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in content[0]]
        labels = [int(x) for x in content[1]]
    except (TypeError, ValueError) as err:
        raise DataFileError(f'{path}: sample names must be strings and labels integers ({err})') from None
    if len(names) != len(labels):
        raise DataFileError(f'{path}: {len(names)} sample names but {len(labels)} labels')
    if labels and min(labels) < 0:
        raise DataFileError(f'{path}: labels must be >= 0 (found {min(labels)})')
    return names, labels


# ----------------------------------------------------------------------------- .npy arrays
NPY_MAGIC = b'\x93NUMPY'


def load_npy(path, mmap=False, what='array file'):
    """A `.npy` array (memory-mapped when `mmap`), never unpickling anything; a file that is
    not a `.npy` array (a text file, a pickle, a truncated download) is a DataFileError."""
    if not os.path.isfile(path):
        raise DataFileError(f'{what} not found: {path}')
    with open(path, 'rb') as f:
        head = f.read(len(NPY_MAGIC))
    if head != NPY_MAGIC:
        raise DataFileError(f'{what} {path} is not a .npy array ({_starts_with(path)})')
    try:
        return np.load(path, mmap_mode='r' if mmap else None, allow_pickle=False)
    except ValueError as err:
        if 'pickle' in str(err):
            raise DataFileError(f'{what} {path} holds Python objects, not numbers') from None
        raise DataFileError(f'{what} {path} is a damaged .npy file ({_first_line(err)})') from None
    except OSError as err:
        raise DataFileError(f'cannot read {what} {path}: {_first_line(err)}') from None


# ----------------------------------------------------------------------------- atomic writes
def atomic_write(path, write, binary=True):
    """Call `write(file)` on a temporary file in `path`'s folder, then fsync and rename it onto
    `path`: readers see the old file or the complete new one, never a part. The temporary name
    is `.<name>.<random>.tmp` (see remove_stale_temporaries)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb' if binary else 'w') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path, obj):
    atomic_write(path, lambda f: (json.dump(obj, f, indent=1), f.write('\n')), binary=False)


def write_pickle(path, obj):
    atomic_write(path, lambda f: pickle.dump(obj, f))


def remove_stale_temporaries(folder):
    """Delete the `.<name>.<random>.tmp` files an atomic write killed mid-way left in `folder`
    (call it only while holding the folder's WorkDirLock). Returns the names removed."""
    if not os.path.isdir(folder):
        return []
    stale = sorted(n for n in os.listdir(folder) if n.startswith('.') and n.endswith('.tmp')
                   and os.path.isfile(os.path.join(folder, n)))
    for name in stale:
        os.remove(os.path.join(folder, name))
    return stale


# ----------------------------------------------------------------------------- work-dir lock
class WorkDirLock:
    """Exclusive advisory lock on `<work_dir>/.lock` for the lifetime of a run.

    `acquire()` raises WorkDirError naming the holder (pid, start time, command) when another
    live process holds it. The lock is an flock on an open file, so the kernel releases it
    when the holder exits or is killed: a stale `.lock` file never blocks a resume. Where
    flock is unavailable (Windows) the lock is a no-op."""

    NAME = '.lock'
    _held = {}   # real path -> [open file, count]: this process's locks (tasks run in sequence)

    def __init__(self, work_dir):
        self.path = os.path.join(work_dir, self.NAME)
        self._key = None

    def acquire(self):
        try:
            import fcntl
        except ImportError:
            return self
        key = os.path.realpath(self.path)
        if key in self._held:    # a task of this same process (run one after another)
            self._held[key][1] += 1
            self._key = key
            return self
        try:
            handle = open(self.path, 'a+')
        except OSError as err:
            raise WorkDirError(f'cannot write to work_dir {os.path.dirname(self.path)}: '
                               f'{err.strerror or err}') from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or 'another process'
            handle.close()
            raise WorkDirError(f'work_dir {os.path.dirname(self.path)} is in use by another run '
                               f'({holder}); wait for it to end or choose another work_dir') from None
        handle.seek(0)
        handle.truncate()
        handle.write(f'pid {os.getpid()}, started {time.strftime("%Y-%m-%d %H:%M:%S")}: '
                     + ' '.join([os.path.basename(sys.argv[0])] + sys.argv[1:])[:300] + '\n')
        handle.flush()
        self._held[key] = [handle, 1]
        self._key = key
        return self

    def release(self):
        if self._key is None:
            return
        entry = self._held[self._key]
        entry[1] -= 1
        if entry[1] == 0:
            entry[0].close()   # closing drops the flock
            del self._held[self._key]
        self._key = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
