"""AS-CAL augmentations (reference doc 5.2, `feeders/tools.py`) as batched ops on (N, C, T, V, M).

A view is a transform string such as 'subtract_randomFlip_shear': tokens split on '_', each
matched by substring in the reference order (so 'subtract1' is 'subtract'), and token i takes
the arguments (list_args[2i], list_args[2i+1]) (reference `list_args` = [1, None, ...]).
Every op is a draw_<op>(n, gen, ...) -> params / apply_<op>(x, params) pair with independent
per-sample parameters (feeder/augment.py conventions); ops shared with AimCLR are reused.

| token         | op (per sample)                                         | arguments (None: random)          |
|---------------|---------------------------------------------------------|-----------------------------------|
| selectFrames  | keep frames [0, F)                                      | F                                 |
| subtract      | every joint minus joint j (same frame and person)       | j                                 |
| randomFlip    | temporal reversal with p = 0.5                           | ignored (as the reference)        |
| shear         | p -> S p, off-diagonals U(-1, 1)                         | s1, s2: 3 fixed coefficients each |
| rotate        | about axis a by theta ~ U(0, 30) degrees                 | a; theta, or [c, r] -> U(c-r, c+r)|
| zeroOutJoints | zero k joints x f frames (random subsets)               | k or joint list; f or frame list  |
| zeroOutAxis   | zero one coordinate channel                              | axis                              |
| gausNoise     | add N(0, 0.05^2)                                         | ignored (as the reference)        |
| gausFilter    | p = 0.5: temporal Gaussian blur, 15 taps, sigma U(0.1, 2)| ignored (as the reference)        |

Fixed reference bugs: `subtract` with j = None draws j per sample (the reference drew one joint
for the whole run); the blur kernel is normalised unless `blur_normalized=False` (the reference
kernel sums to up to ~5 and amplifies the clip); zeroOutJoints clamps its default frame count
to T (the reference fails when T < the drawn count).
"""
import math
from dataclasses import dataclass

import torch

from feeder import augment

DEFAULT_TRANSFORM = 'subtract_randomFlip_shear'
DEFAULT_LIST_ARGS = (1,)   # the reference [1, None, None, ...]: subtract uses joint 1
# substring match in the reference's order of tests (`aug_look`)
TOKENS = ('selectFrames', 'subtract', 'randomFlip', 'zeroOutAxis', 'rotate', 'zeroOutJoints',
          'gausNoise', 'gausFilter', 'shear')
NOISE_STD = 0.05
MAX_ANGLE_DEG = 30.0


@dataclass(frozen=True)
class ZeroJointsParams:
    joints: torch.Tensor  # (n, V) bool, joints zeroed
    frames: torch.Tensor  # (n, T) bool, frames where they are zeroed


# ----------------------------------------------------------------------------- parsing

def parse_transform(transform, list_args=DEFAULT_LIST_ARGS):
    """[(op, a, b), ...] for a transform string; 'None' (or '') is no op."""
    if transform in (None, '', 'None'):
        return []
    args = list(list_args or [])
    ops = []
    for i, token in enumerate(str(transform).split('_')):
        op = next((name for name in TOKENS if name in token), None)
        if op is None:
            raise ValueError(f'AS-CAL transform {transform!r}: unknown token {token!r}; valid: {TOKENS}')
        a = args[2 * i] if 2 * i < len(args) else None
        b = args[2 * i + 1] if 2 * i + 1 < len(args) else None
        ops.append((op, a, b))
    return ops


# ----------------------------------------------------------------------------- subtract

def draw_subtract(n, gen, joint=None, num_joints=25):
    """(n,) long: the joint every sample is centred on (fixed `joint`, or uniform per sample)."""
    if joint is None:
        return torch.randint(0, num_joints, (n,), generator=gen)
    if not 0 <= int(joint) < num_joints:
        raise ValueError(f'subtract joint {joint} is outside 0..{num_joints - 1}')
    return torch.full((n,), int(joint), dtype=torch.long)


def apply_subtract(x, joints):
    n, c, t, _, m = x.shape
    index = joints.to(x.device).view(n, 1, 1, 1, 1).expand(n, c, t, 1, m)
    return x - x.gather(3, index)


# ----------------------------------------------------------------------------- coordinate maps

def draw_shear(n, gen, s1=None, s2=None):
    """(n, 3, 3): S = [[1, s1[0], s2[0]], [s1[1], 1, s2[1]], [s1[2], s2[2], 1]], random halves
    U(-1, 1) per sample (augment.draw_shear with amplitude 1 has this layout)."""
    matrix = augment.draw_shear(n, gen, 1.0)
    for values, cells in ((s1, ([0, 1, 2], [1, 0, 0])), (s2, ([0, 1, 2], [2, 2, 1]))):
        if values is not None:
            if len(values) != 3:
                raise ValueError(f'shear coefficients must be 3 numbers, got {values!r}')
            matrix[:, cells[0], cells[1]] = torch.tensor(values, dtype=matrix.dtype)
    return matrix


def _axes(n, gen, axis, op):
    """Per-sample coordinate axis (x/y/z = 0/1/2): drawn when `axis` is None, else fixed."""
    if axis is None:
        return torch.randint(0, 3, (n,), generator=gen)
    if int(axis) in (0, 1, 2):
        return torch.full((n,), int(axis), dtype=torch.long)
    raise ValueError(f'{op} axis must be 0, 1 or 2, got {axis!r}')


def draw_rotate(n, gen, axis=None, angle=None):
    """augment.RotateParams rotating about one axis (x/y/z = 0/1/2) by one angle per sample."""
    axes = _axes(n, gen, axis, 'rotate')
    if angle is None:
        low, high = 0.0, MAX_ANGLE_DEG
    elif isinstance(angle, (list, tuple)):
        low, high = angle[0] - angle[1], angle[0] + angle[1]
    else:
        low = high = float(angle)
    degrees = torch.rand(n, generator=gen, dtype=torch.float64) * (high - low) + low
    angles = torch.zeros(n, 3, dtype=torch.float64)
    angles[torch.arange(n), axes] = degrees * (math.pi / 180)
    return augment.RotateParams(axes, angles)


def draw_zero_axis(n, gen, axis=None):
    return augment.AxisMaskParams(torch.ones(n, dtype=torch.bool), _axes(n, gen, axis, 'zeroOutAxis'))


# ----------------------------------------------------------------------------- zeroOutJoints

def _random_subsets(n, size, counts, gen):
    """(n, size) bool: a uniformly random subset of counts[i] elements per row."""
    rank = torch.rand(n, size, generator=gen).argsort(1).argsort(1)
    return rank < counts[:, None]


def _subset_mask(n, size, spec, default_range, gen, what):
    if isinstance(spec, (list, tuple)):             # fixed indices for every sample
        mask = torch.zeros(n, size, dtype=torch.bool)
        mask[:, list(spec)] = True
        return mask
    if spec is None:
        low, high = default_range
        counts = torch.randint(low, high + 1, (n,), generator=gen).clamp(max=size)
    else:
        if not 0 <= int(spec) <= size:
            raise ValueError(f'zeroOutJoints: cannot choose {spec} of {size} {what}')
        counts = torch.full((n,), int(spec), dtype=torch.long)
    return _random_subsets(n, size, counts, gen)


def draw_zero_joints(n, gen, num_joints, num_frames, joints=None, frames=None):
    """Joints: 5..15 random (None), k random (int) or a list; frames: 20..50 (T < 100) or
    50..100 random (None), f random (int) or a list. Subsets are drawn without replacement."""
    joint_mask = _subset_mask(n, num_joints, joints, (5, 15), gen, 'joints')
    frame_range = (20, 50) if num_frames < 100 else (50, 100)
    frame_mask = _subset_mask(n, num_frames, frames, frame_range, gen, 'frames')
    return ZeroJointsParams(joint_mask, frame_mask)


def apply_zero_joints(x, params):
    n, _, t, v, _ = x.shape
    if params.joints.shape != (n, v) or params.frames.shape != (n, t):
        raise ValueError(f'zeroOutJoints masks {tuple(params.joints.shape)}, {tuple(params.frames.shape)} '
                         f'do not fit clips {tuple(x.shape)}')
    zero = params.frames.to(x.device)[:, None, :, None, None] & params.joints.to(x.device)[:, None, None, :, None]
    return x.masked_fill(zero, 0.0)


# ----------------------------------------------------------------------------- composite

def ascal_view(x, gen, transform=DEFAULT_TRANSFORM, list_args=DEFAULT_LIST_ARGS, blur_normalized=True):
    """One AS-CAL view of the batch: the transform's ops in order, fresh draws per sample."""
    if x.dim() != 5 or x.shape[1] != 3:
        raise ValueError(f'AS-CAL views need clips (N, 3, T, V, M), got {tuple(x.shape)}')
    for op, a, b in parse_transform(transform, list_args):
        n, _, t, v = x.shape[:4]
        if op == 'selectFrames':
            x = x[:, :, :int(a)] if a is not None else x
        elif op == 'subtract':
            x = apply_subtract(x, draw_subtract(n, gen, a, v))
        elif op == 'randomFlip':
            x = augment.apply_temporal_flip(x, augment.draw_temporal_flip(n, gen))
        elif op == 'shear':
            x = augment.apply_channel_matrix(x, draw_shear(n, gen, a, b))
        elif op == 'rotate':
            x = augment.apply_rotate(x, draw_rotate(n, gen, a, b))
        elif op == 'zeroOutJoints':
            x = apply_zero_joints(x, draw_zero_joints(n, gen, v, t, a, b))
        elif op == 'zeroOutAxis':
            x = augment.apply_axis_mask(x, draw_zero_axis(n, gen, a))
        elif op == 'gausNoise':
            x = augment.apply_gaussian_noise(x, augment.draw_gaussian_noise(n, gen, x.shape[1:], NOISE_STD, p=1.0))
        elif op == 'gausFilter':
            x = augment.apply_gaussian_blur(x, augment.draw_gaussian_blur(n, gen, normalized=blur_normalized))
    return x
