"""Builds and calls the fused CPU view kernel (linear_map.c) with ctypes.

The kernel is compiled on first use with the system C compiler (`$CC`, default `cc`) into a
cache folder (`$SKELETON_SSL_CACHE`, default `~/.cache/skeleton-ssl`), under a name that hashes
the source, the compiler and the flags, so an edit or another machine type builds anew. Without
a compiler, or with `SKELETON_SSL_NATIVE=0`, `available()` is False and the views run as
PyTorch ops: the same values up to float rounding, except the Gaussian noise, whose values then
come from a torch generator (same distribution). The kernel serves float32 contiguous CPU
clips; CUDA clips take the PyTorch path (with the kernel's noise values, drawn on the CPU).
"""
import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings

import numpy as np
import torch

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'linear_map.c')
_lock = threading.Lock()
_state = {'loaded': False, 'library': None, 'enabled': True}
_CPUS = os.cpu_count() or 1
_STATUS = {-1: 'scratch allocation failed', -2: 'blur kernel longer than the 65 taps the kernel supports'}


def _cpu_flags():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags'):
                    return set(line.split(':', 1)[1].split())
    except OSError:
        pass
    return set()


def _compile_flags():
    flags = ['-O3', '-shared', '-fPIC', '-pthread', '-fno-math-errno']
    if {'avx2', 'fma'} <= _cpu_flags():
        flags += ['-mavx2', '-mfma']
    return flags


def _cache_dir():
    return os.environ.get('SKELETON_SSL_CACHE') or os.path.join(os.path.expanduser('~'), '.cache', 'skeleton-ssl')


def _build():
    """Path of the compiled library, building it when absent. Raises OSError / CalledProcessError."""
    compiler = shutil.which(os.environ.get('CC', 'cc'))
    if compiler is None:
        raise OSError(f"no C compiler ({os.environ.get('CC', 'cc')!r} not on PATH)")
    flags = _compile_flags()
    with open(SOURCE, 'rb') as f:
        source = f.read()
    version = subprocess.run([compiler, '--version'], capture_output=True, timeout=30).stdout
    key = hashlib.sha256(source + version + ' '.join(flags).encode()).hexdigest()[:16]
    folder = _cache_dir()
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f'linear_map-{key}.so')
    if not os.path.exists(path):   # build beside it, then rename: concurrent builders never see half a file
        handle, partial = tempfile.mkstemp(suffix='.so', dir=folder)
        os.close(handle)
        try:
            subprocess.run([compiler, *flags, SOURCE, '-o', partial], check=True, capture_output=True,
                           timeout=120)
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
    return path


def _load():
    with _lock:
        if _state['loaded']:
            return _state['library']
        _state['loaded'] = True
        if os.environ.get('SKELETON_SSL_NATIVE', '1') == '0':
            return None
        try:
            library = ctypes.CDLL(_build())
        except (OSError, subprocess.SubprocessError) as error:
            detail = getattr(error, 'stderr', b'') or b''
            warnings.warn(f'fused CPU view kernel unavailable, using PyTorch ops: {error} '
                          f'{detail.decode(errors="replace")[-500:]}')
            return None
        pointer, size, flag = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        library.apply_linear_map.argtypes = [
            pointer, pointer, size, size, size, size, size, pointer, pointer, pointer, pointer,
            pointer, size, pointer, flag, ctypes.c_uint64, ctypes.c_float, flag]
        library.apply_linear_map.restype = flag
        library.draw_normal.argtypes = [pointer, size, size, pointer, ctypes.c_uint64, ctypes.c_float, flag]
        library.draw_normal.restype = None
        _state['library'] = library
        return library


def available():
    return _state['enabled'] and _load() is not None


def serves(x):
    """True when the kernel applies to clips x: float32, contiguous, on the CPU."""
    return x.device.type == 'cpu' and x.dtype == torch.float32 and x.is_contiguous() and available()


@contextlib.contextmanager
def disabled():
    """Run the block on the PyTorch path (tests compare the two)."""
    before = _state['enabled']
    _state['enabled'] = False
    try:
        yield
    finally:
        _state['enabled'] = before


def _array(values, dtype):
    return None if values is None else np.ascontiguousarray(values, dtype=dtype)


def _address(array):
    return None if array is None else array.ctypes.data


def _threads(n):
    """torch's thread count, but at least 16 samples per thread (a thread costs ~20 us)."""
    return max(1, min(torch.get_num_threads(), _CPUS, n // 16))


def _check_clips(x, name):
    if x.dim() != 5 or x.shape[1] != 3 or x.dtype != torch.float32 or not x.is_contiguous() \
            or x.device.type != 'cpu':
        raise ValueError(f'{name}: the fused kernel takes contiguous float32 CPU clips (N, 3, T, V, M), '
                         f'got {x.dtype} {tuple(x.shape)} on {x.device}'
                         f'{"" if x.is_contiguous() else ", not contiguous"}')


def _check_range(values, high, what):
    if values is not None and values.size and (values.min() < 0 or values.max() >= high):
        raise IndexError(f'{what} outside [0, {high})')


def _map_arrays(linear, n, t, v):
    """The map's fields as the kernel reads them, checked: it trusts every index."""
    frames = _array(linear.frames, np.int64)
    joints = _array(linear.joints, np.int64)
    channel = _array(linear.channel, np.float32)
    for name, values, shape in (('frames', frames, (n, t)), ('joints', joints, (n, v)), ('channel', channel, (n, 3, 3))):
        if values is not None and values.shape != shape:
            raise ValueError(f'LinearMap.{name}: expected shape {shape}, got {values.shape}')
    _check_range(frames, t, 'LinearMap.frames')
    _check_range(joints, v, 'LinearMap.joints')
    if len(linear.blurs) > 1:
        raise ValueError('the fused kernel applies at most one blur op; use LinearMap.apply_torch')
    blur_slot = taps = None
    radius = 0
    if linear.blurs and len(linear.blurs[0][0]):
        blurred, weights = linear.blurs[0]
        _check_range(blurred, n, 'LinearMap.blurs sample index')
        blur_slot = np.full(n, -1, dtype=np.int64)
        blur_slot[blurred] = np.arange(len(blurred))
        taps = _array(weights, np.float32)
        radius = taps.shape[1] // 2
    return frames, joints, channel, blur_slot, taps, radius


def _run(linear, src, out, shape, dst_index, accumulate, seed=0, std=0.0):
    n, _, t, v, m = shape
    _check_clips(out, 'out')
    if tuple(out.shape[1:]) != tuple(shape[1:]):
        raise ValueError(f'out: samples of shape {tuple(shape[1:])} expected, got {tuple(out.shape[1:])}')
    frames, joints, channel, blur_slot, taps, radius = _map_arrays(linear, n, t, v)
    dst_index = _array(dst_index, np.int64)
    if dst_index is not None:
        if len(dst_index) != n:
            raise ValueError(f'dst_index: one output sample per source sample ({n}), got {len(dst_index)}')
        _check_range(dst_index, out.shape[0], 'dst_index')
        if len(np.unique(dst_index)) != n:   # threads would add to one sample at once
            raise ValueError('dst_index repeats an output sample')
    elif out.shape[0] < n:
        raise ValueError(f'out has {out.shape[0]} samples, the source {n}')
    status = _load().apply_linear_map(
        src, out.data_ptr(), n, t, t, v, m, _address(frames), _address(joints), _address(channel),
        _address(blur_slot), _address(taps), radius, _address(dst_index), int(accumulate), seed, std,
        _threads(n))
    if status:
        raise RuntimeError(f'fused view kernel: {_STATUS.get(status, f"status {status}")}')


def apply_linear_map(x, linear, out=None, dst_index=None):
    """linear (feeder.composite.LinearMap, numpy fields) applied to x (n, 3, T, V, M), written
    to a new tensor, or added to `out` at the samples `dst_index` (numpy int64, one per sample
    of x)."""
    _check_clips(x, 'x')
    accumulate = out is not None
    if out is None:
        out = torch.empty_like(x)
    _run(linear, x.data_ptr(), out, x.shape, dst_index, accumulate)
    return out


def add_mapped_noise(out, linear, dst_index, seed, std):
    """out[dst_index[i]] += linear(noise_i), noise_i ~ N(0, std^2) of shape out.shape[1:] drawn
    in the kernel from the stream dst_index[i] of `seed` (the values `draw_normal` gives)."""
    _run(linear, None, out, (len(dst_index), *out.shape[1:]), dst_index, True, seed, std)
    return out


def draw_normal(shape, ids, seed, std):
    """(len(ids), *shape) float32 N(0, std^2) noise; row i from the stream ids[i] of `seed`."""
    ids = _array(ids, np.int64)
    out = torch.empty(len(ids), *shape)
    if len(ids):
        _load().draw_normal(out.data_ptr(), len(ids), int(np.prod(shape)), _address(ids), seed, std,
                            _threads(len(ids)))
    return out
