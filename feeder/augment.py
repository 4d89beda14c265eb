"""Batched on-device skeleton augmentations for clips x of shape (N, C=3, T, V, M).

Every op is a pair:
  draw_<op>(n, gen, ...) -> params   parameters for n samples, drawn on the CPU generator `gen`
                                     (so a seed gives the same views on every device);
  apply_<op>(x, params) -> x'        pure and batched on x's device, no Python loop over samples.
Coin-flip ops draw an independent coin per sample; samples whose coin says "skip" come out
bit-identical. Distributions follow the AimCLR reference (normal: crop + shear; extreme: ids
1..6 of `aug_method`). feeder/composite.py composes them into the normal and extreme views.
Parameter arithmetic on (n,)-sized arrays runs in numpy, where a torch op would cost more than
its math; the random numbers themselves always come from `gen`.
"""
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from feeder import native
from feeder.layouts import BUILTIN, NTU, NW_UCLA, get_layout

# Spatial "flip" swaps left/right joint labels (the layout's flip pairs); coordinates are not
# mirrored (reference quirk).
NTU_FLIP_MAP = BUILTIN[NTU].flip_map
NW_UCLA_FLIP_MAP = BUILTIN[NW_UCLA].flip_map
FLIP_MAPS = {NTU: NTU_FLIP_MAP, NW_UCLA: NW_UCLA_FLIP_MAP}

BLUR_RADIUS = 7  # 15-tap kernel, offsets -7..7, zero padding 7
EXTREME_OPS = {'1': 'spatial_flip', '2': 'rotate', '3': 'gaussian_noise',
               '4': 'gaussian_blur', '5': 'axis_mask', '6': 'temporal_flip'}


# ----------------------------------------------------------------------------- parameters

@dataclass(frozen=True)
class CropParams:
    start: torch.Tensor  # (n,) long, window start in the padded sequence, in {0..2*pad}
    pad: int             # P = T // temperal_padding_ratio


@dataclass(frozen=True)
class FlipParams:
    applied: torch.Tensor  # (n,) bool
    joint_map: tuple       # new joint v takes old joint joint_map[v]


@dataclass(frozen=True)
class RotateParams:
    axis: torch.Tensor    # (n,) long, main axis 0/1/2 = x/y/z
    angles: torch.Tensor  # (n, 3) radians about x, y, z

    @property
    def matrix(self):
        return rotation_matrices(self.angles)


@dataclass(frozen=True)
class NoiseParams:
    """The values come from `seed` (drawn from the view generator): sample i's from stream i
    of the fused kernel's generator (feeder/native), so the kernel can draw them where it adds
    them; without the kernel, from a torch generator seeded by `seed` (other values, same
    distribution)."""
    applied: torch.Tensor  # (n,) bool
    seed: int
    sample_shape: tuple    # (C, T, V, M)
    std: float

    def draw(self):
        """(applied.sum(), C, T, V, M) float32 noise; the same values on every call."""
        if native.available():
            return native.draw_normal(self.sample_shape, self.applied.nonzero().squeeze(1).numpy(),
                                      self.seed, self.std)
        gen = torch.Generator().manual_seed(self.seed)
        return torch.empty(int(self.applied.sum()), *self.sample_shape).normal_(0.0, self.std, generator=gen)

    @property
    def noise(self):
        return self.draw()


@dataclass(frozen=True)
class BlurParams:
    applied: torch.Tensor  # (n,) bool
    sigma: torch.Tensor    # (n,) float
    normalized: bool = True

    @property
    def weights(self):
        return blur_kernels(self.sigma, self.normalized)


@dataclass(frozen=True)
class CoinParams:
    """Ops with no parameter besides the per-sample coin (temporal flip)."""
    applied: torch.Tensor  # (n,) bool


@dataclass(frozen=True)
class AxisMaskParams:
    applied: torch.Tensor  # (n,) bool
    axis: torch.Tensor     # (n,) long, channel to zero


# ----------------------------------------------------------------------------- helpers

def _coin(n, gen, p):
    return torch.rand(n, generator=gen) < p


def _uniform(shape, gen, low, high):
    return torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low


def _applied_index(applied, device):
    return applied.nonzero().squeeze(1).to(device)


def _where_applied(x, applied, fn):
    """Copy of x where samples with `applied` are replaced by fn(those samples)."""
    return _update_applied_(x.clone(), applied, fn)


def _update_applied_(x, applied, fn):
    """In place: x[applied] = fn(x[applied]); the other samples are not touched."""
    if applied.any():
        index = _applied_index(applied, x.device)
        x.index_copy_(0, index, fn(x.index_select(0, index)))
    return x


def check_xyz(x):
    """Clear error unless x is a batch of xyz clips (N, 3, T, V, M)."""
    if x.dim() != 5 or x.shape[1] != 3:
        raise ValueError(f'expected clips (N, 3, T, V, M), got {tuple(x.shape)}')


# ----------------------------------------------------------------------------- normal ops

def draw_temporal_crop(n, gen, num_frames, temperal_padding_ratio=6):
    pad = num_frames // temperal_padding_ratio
    return CropParams(torch.randint(0, 2 * pad + 1, (n,), generator=gen), pad)


def crop_frame_index(params, num_frames):
    """(n, T) source frame of every output frame: window of the symmetric-padded sequence."""
    return torch.from_numpy(crop_frames(params.start.numpy(), params.pad, num_frames))


def crop_frames(start, pad, num_frames):
    """numpy (n, T) frame index of the crop windows starting at `start` (n,) in the sequence
    padded by `pad` frames on each side."""
    padded_pos = start[:, None] + np.arange(num_frames) - pad
    # symmetric padding duplicates the edge frame: -1 -> 0, -2 -> 1; T -> T-1, T+1 -> T-2
    return np.where(padded_pos < 0, -padded_pos - 1,
                    np.where(padded_pos >= num_frames, 2 * num_frames - 1 - padded_pos, padded_pos))


def apply_temporal_crop(x, params):
    t = x.shape[2]
    if params.pad > t:
        raise ValueError(f'crop padding {params.pad} exceeds T={t}')
    return gather_frames(x, crop_frame_index(params, t))


def gather_frames(x, frames):
    """x[i, :, frames[i]] for per-sample frame indices frames (n, T'), as one row gather of x
    viewed as (N*C*T, V*M) rows."""
    n, c, t = x.shape[:3]
    length = frames.shape[1]
    rows = (torch.arange(n * c).view(n, c, 1) * t + frames.view(n, 1, length)).reshape(-1)
    return x.reshape(n * c * t, -1).index_select(0, rows.to(x.device)).view(n, c, length, *x.shape[3:])


def draw_shear(n, gen, shear_amplitude=0.5):
    alpha, beta = _uniform((2, n, 3), gen, -shear_amplitude, shear_amplitude).float().numpy()
    return torch.from_numpy(shear_matrices(np.concatenate([alpha, beta], 1)).astype(np.float32))


def shear_matrices(entries):
    """numpy float64 (n, 3, 3) [[1, a0, b0], [a1, 1, b1], [a2, b2, 1]] of entries (n, 6) =
    (a0, a1, a2, b0, b1, b2)."""
    matrix = np.ones((len(entries), 3, 3))
    matrix[:, [0, 1, 2, 0, 1, 2], [1, 0, 0, 2, 2, 1]] = entries
    return matrix


def apply_channel_matrix(x, matrix):
    """x'[n] = matrix[n] @ xyz for every frame, joint and body (matrix (n, 3, 3))."""
    check_xyz(x)
    n = x.shape[0]
    matrix = matrix.to(device=x.device, dtype=x.dtype)
    return torch.bmm(matrix, x.reshape(n, 3, -1)).view(x.shape)


def apply_shear(x, matrix):
    return apply_channel_matrix(x, matrix)


# ----------------------------------------------------------------------------- extreme ops

def draw_spatial_flip(n, gen, layout=NTU, p=0.5):
    return FlipParams(_coin(n, gen, p), get_layout(layout).flip_map)


def apply_spatial_flip(x, params):
    if len(params.joint_map) != x.shape[3]:
        raise ValueError(f'flip map has {len(params.joint_map)} joints, clips have V={x.shape[3]}')
    return _where_applied(x, params.applied, lambda xs: permute_joints(xs, params.joint_map))


@functools.lru_cache(maxsize=None)
def _source_runs(joint_map):
    """Split a joint map into runs of consecutive source joints, as (start, stop) slices."""
    runs = []
    for source in joint_map:
        if runs and runs[-1][1] == source:
            runs[-1][1] += 1
        else:
            runs.append([source, source + 1])
    return tuple((start, stop) for start, stop in runs)


def permute_joints(x, joint_map):
    """x[:, :, :, joint_map]; concatenating a few contiguous slices is much faster on CPU than
    a gather with M=2 floats per index."""
    return torch.cat([x[:, :, :, start:stop] for start, stop in _source_runs(tuple(joint_map))], 3)


def draw_rotate(n, gen, main_max_deg=30.0, other_max_deg=1.0):
    axis = torch.randint(0, 3, (n,), generator=gen)
    main = _uniform(n, gen, 0.0, math.radians(main_max_deg))
    others = _uniform((n, 3), gen, 0.0, math.radians(other_max_deg))
    return RotateParams(axis, torch.from_numpy(rotation_angles(axis.numpy(), main.numpy(), others.numpy())))


def rotation_angles(axis, main, others):
    """numpy (n, 3) angles: `main` (n,) about the main axis (n,), `others` (n, 3) elsewhere."""
    return np.where(np.arange(3) == axis[:, None], main[:, None], others)


def rotation_matrices(angles):
    """(n, 3, 3) = Rz @ Ry @ Rx: rotate about x, then y, then z (reference matrices)."""
    return torch.from_numpy(rotation_products(angles.double().numpy()).astype(np.float32))


def rotation_products(a):
    """numpy float64 (n, 3, 3) Rz @ Ry @ Rx of the angles a (n, 3)."""
    cos, sin = np.cos(a), np.sin(a)
    n = len(a)
    rx, ry, rz = (np.zeros((n, 3, 3)) for _ in range(3))
    c, s = cos[:, 0], sin[:, 0]
    rx[:, 0, 0] = 1
    rx[:, 1, 1], rx[:, 1, 2], rx[:, 2, 1], rx[:, 2, 2] = c, s, -s, c
    c, s = cos[:, 1], sin[:, 1]
    ry[:, 1, 1] = 1
    ry[:, 0, 0], ry[:, 0, 2], ry[:, 2, 0], ry[:, 2, 2] = c, -s, s, c
    c, s = cos[:, 2], sin[:, 2]
    rz[:, 2, 2] = 1
    rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1] = c, s, -s, c
    return rz @ ry @ rx


def apply_rotate(x, params):
    return apply_channel_matrix(x, params.matrix)


def draw_random_rot(n, gen, theta=0.3):
    """(n, 3, 3) rotation matrices Rz @ Ry @ Rx with the three angles ~ U(-theta, theta) (MAMP /
    CTR-GCN `random_rot`: one rotation per clip, the same for every frame and person); apply
    with apply_channel_matrix."""
    return rotation_matrices(_uniform((n, 3), gen, -theta, theta))


def draw_gaussian_noise(n, gen, sample_shape, std=0.01, p=0.5):
    """Noise is drawn only for the samples whose coin says apply."""
    applied = _coin(n, gen, p)
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=gen))
    return NoiseParams(applied, seed, tuple(sample_shape), std)


def apply_gaussian_noise(x, params):
    out = x.clone()
    if params.applied.any():
        out.index_add_(0, _applied_index(params.applied, x.device), params.draw().to(device=x.device, dtype=x.dtype))
    return out


def draw_gaussian_blur(n, gen, p=0.5, sigma_range=(0.1, 2.0), normalized=True):
    applied = _coin(n, gen, p)
    return BlurParams(applied, _uniform(n, gen, *sigma_range), normalized)


def blur_kernels(sigma, normalized=True):
    """(n, 15) weights exp(-k^2 / 2 sigma^2), k = -7..7; the reference leaves them unnormalised."""
    return torch.from_numpy(gaussian_taps(sigma.double().numpy(), normalized))


def gaussian_taps(sigma, normalized=True):
    """numpy (n, 15) of blur_kernels."""
    offsets = np.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, dtype=np.float64)
    weights = np.exp(-offsets ** 2 / (2 * sigma[:, None] ** 2))
    if normalized:
        weights /= weights.sum(1, keepdims=True)
    return weights


def blur_along_time(xs, weights):
    """Each sample's 15-tap kernel `weights` (k, 15) along time with zero padding, as 15 shifted
    multiply-adds (on the CPU cheaper than a banded T x T matrix product or a depthwise
    convolution)."""
    k, c, t = xs.shape[:3]
    weights = weights.to(device=xs.device, dtype=xs.dtype)
    radius = weights.shape[1] // 2
    x = xs.reshape(k, c, t, -1)
    tap = lambda offset: weights[:, radius + offset].view(k, 1, 1, 1)
    out = x * tap(0)
    for j in range(1, min(radius, t - 1) + 1):
        out[:, :, :-j].addcmul_(x[:, :, j:], tap(j))     # out[t] += w_j * x[t + j]
        out[:, :, j:].addcmul_(x[:, :, :-j], tap(-j))    # out[t] += w_-j * x[t - j]
    return out.view(xs.shape)


def apply_gaussian_blur(x, params):
    weights = params.weights[params.applied]
    return _where_applied(x, params.applied, lambda xs: blur_along_time(xs, weights))


def draw_axis_mask(n, gen, p=0.5):
    applied = _coin(n, gen, p)
    return AxisMaskParams(applied, torch.randint(0, 3, (n,), generator=gen))


def axis_mask_matrices(params):
    """(n, 3, 3) identity with the masked axis' diagonal entry zeroed where applied."""
    return torch.from_numpy(axis_masks(params.applied.numpy(), params.axis.numpy()).astype(np.float32))


def axis_masks(applied, axis):
    """numpy float64 (n, 3, 3) of axis_mask_matrices."""
    matrices = np.zeros((len(applied), 3, 3))
    matrices[:, [0, 1, 2], [0, 1, 2]] = 1.0
    index = np.flatnonzero(applied)
    matrices[index, axis[index], axis[index]] = 0.0
    return matrices


def apply_axis_mask(x, params):
    check_xyz(x)
    out = x.clone()
    if params.applied.any():
        index = _applied_index(params.applied, x.device)
        out[index, params.axis.to(x.device)[index]] = 0.0
    return out


def draw_temporal_flip(n, gen, p=0.5):
    return CoinParams(_coin(n, gen, p))


def apply_temporal_flip(x, params):
    return _where_applied(x, params.applied, lambda xs: xs.flip(2))
