"""The AimCLR normal and extreme views, each as one per-sample linear map plus noise.

Every extreme op but the noise is linear and acts on one axis: frames (crop, temporal flip),
joints (spatial flip), time (blur) or coordinates (shear, rotation, axis mask). So a view is one
`LinearMap` of the clip, plus every noise draw passed through the map of the ops written after
it (L (y + e) = L y + L e). A map is applied in one pass per sample by the fused CPU kernel
(feeder/native) or as a few batched PyTorch ops (CUDA, or no C compiler): same values up to
float rounding (without the kernel the noise values come from a torch generator instead).

Views are drawn first (`draw_normal`, `draw_extreme`: parameters in the order of the ops, from
the CPU generator, so a seed gives the same views on every device) and then applied
(`apply_views`); the kernel draws the noise values itself, sample by sample, where it adds them.
"""
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from feeder import augment, native
from feeder.layouts import NTU, get_layout


class LinearMap:
    """A per-sample linear map of clips (n, 3, T, V, M), factored by axis. numpy fields, None
    for the identity:
      frames (n, T) int64: output frame t reads input frame frames[i, t];
      joints (n, V) int64: output joint v reads input joint joints[i, v];
      blurs: [(index (k,) int64 ascending, weights (k, 15) float32)], one entry per blur op in
        the written order: those samples are blurred along time (zero padding);
      channel (n, 3, 3) float64: coordinate map.
    Along time the frame selection (the crop) comes first and the blurs after it; temporal
    flips commute with the blurs (symmetric kernel, symmetric zero padding), so they fold into
    `frames` wherever they were written."""

    def __init__(self, n, num_frames, num_joints, frames=None):
        self.n, self.num_frames, self.num_joints = n, num_frames, num_joints
        self.frames = frames
        self.joints = None
        self.blurs = []
        self.channel = None

    # ------------------------------------------------------------------ composition: "then ..."

    def map(self, matrices):
        matrices = np.asarray(matrices, dtype=np.float64)
        self.channel = matrices if self.channel is None else matrices @ self.channel
        return self

    def flip_frames(self, applied):
        applied = np.asarray(applied)
        frames = np.broadcast_to(np.arange(self.num_frames), (self.n, self.num_frames)) \
            if self.frames is None else self.frames
        self.frames = np.where(applied[:, None], frames[:, ::-1], frames)
        return self

    def permute_joints(self, applied, joint_map):
        applied = np.asarray(applied)
        joints = np.broadcast_to(np.arange(self.num_joints), (self.n, self.num_joints)) \
            if self.joints is None else self.joints
        self.joints = np.where(applied[:, None], joints[:, list(joint_map)], joints)
        return self

    def blur_with(self, applied, weights):
        """The samples `applied` (n,) are blurred with their 15-tap kernels `weights` (n, 15)."""
        index = np.flatnonzero(np.asarray(applied))
        self.blurs.append((index, np.asarray(weights, dtype=np.float32)[index]))
        return self

    # ------------------------------------------------------------------ application

    def fits_kernel(self):
        """The fused kernel applies at most one blur op (two '4's in aug_method take PyTorch)."""
        return len(self.blurs) <= 1

    def apply(self, x, out=None, index=None, fused=None):
        """The map applied to x, as a new tensor; or, with `out`, added to out[index] (index:
        numpy int64, one output sample per sample of x). `fused`: use the CPU kernel (default:
        when it serves x)."""
        fused = native.serves(x) if fused is None else fused
        if fused and self.fits_kernel() and (out is None or native.serves(out)):
            return native.apply_linear_map(x, self, out, index)
        y = self.apply_torch(x)
        if out is None:
            return y
        return out.index_add_(0, torch.from_numpy(np.asarray(index, dtype=np.int64)).to(out.device), y)

    def apply_torch(self, x):
        """The reference formulation: one gather, one permutation per distinct joint map, the
        blurs of the blurred samples, one batched 3x3 product."""
        y = x if self.frames is None else augment.gather_frames(x, torch.from_numpy(np.ascontiguousarray(self.frames)))
        if self.joints is not None:
            moved = (self.joints != np.arange(self.num_joints)).any(1)
            if moved.any():
                maps, group = np.unique(self.joints[moved], axis=0, return_inverse=True)
                samples = np.flatnonzero(moved)
                y = y.clone() if y is x else y
                for g, joint_map in enumerate(maps):
                    index = torch.from_numpy(samples[group.reshape(-1) == g]).to(y.device)
                    y.index_copy_(0, index, augment.permute_joints(y.index_select(0, index), tuple(joint_map.tolist())))
        for blurred, weights in self.blurs:
            if len(blurred):
                y = y.clone() if y is x else y
                index = torch.from_numpy(blurred).to(y.device)
                y.index_copy_(0, index, augment.blur_along_time(y.index_select(0, index), torch.from_numpy(weights)))
        if self.channel is not None:
            y = augment.apply_channel_matrix(y, torch.from_numpy(self.channel))
        return y.clone() if y is x else y


# ----------------------------------------------------------------------------- views

@dataclass
class View:
    """How to make one view: `linear` of the clip (None: the clip itself), plus each noise draw
    with the map of the ops after it. `ops`: the op-level parameters in the order applied
    (('crop', CropParams), ('shear', matrices), (op name, params), ...), for checks."""
    linear: LinearMap = None
    noises: list = field(default_factory=list)   # [(augment.NoiseParams, LinearMap, samples)]
    ops: list = field(default_factory=list)


class _Uniforms:
    """All uniforms of a view from one call on the generator, handed out column by column (a
    dozen small draws cost more than the rest of the parameter arithmetic)."""

    def __init__(self, n, gen, count):
        self.values = torch.rand((n, count), generator=gen, dtype=torch.float64).numpy()
        self.used = 0

    def take(self, count=None):
        width = 1 if count is None else count
        columns = self.values[:, self.used:self.used + width]
        self.used += width
        return columns[:, 0] if count is None else columns

    def integers(self, high):
        """Uniform on {0, .., high - 1}."""
        return np.minimum((self.take() * high).astype(np.int64), high - 1)

    def coins(self, p=0.5):
        return self.take() < p


WIDTH = {'crop': 1, 'shear': 6, 'spatial_flip': 1, 'rotate': 5, 'gaussian_noise': 1,
         'gaussian_blur': 2, 'axis_mask': 2, 'temporal_flip': 1}   # uniforms per sample


def _crop(uniforms, t, temperal_padding_ratio):
    pad = int(t // temperal_padding_ratio)   # YAML may give the ratio as a float
    if pad > t:
        raise ValueError(f'crop padding {pad} exceeds T={t}')
    start = uniforms.integers(2 * pad + 1)
    return start, pad, augment.crop_frames(start, pad, t)


def _shear(uniforms, amplitude):
    """[[1, a0, b0], [a1, 1, b1], [a2, b2, 1]], entries U(-amplitude, amplitude)."""
    return augment.shear_matrices(uniforms.take(6) * (2 * amplitude) - amplitude)


def draw_normal(shape, gen, shear_amplitude=0.5, temperal_padding_ratio=6, view_rotation=0,
                record=False):
    """Temporal crop, shear, then (view_rotation > 0, our option, not in the references) a
    rotation about the vertical y axis by U(-view_rotation, view_rotation) degrees, the change of
    camera azimuth between the views of a cross-view benchmark. A parameter <= 0 disables its
    op. record: keep the op-level parameters in `View.ops`."""
    n, _, t, v = shape[:4]
    crop, shear, rotate = temperal_padding_ratio > 0, shear_amplitude > 0, view_rotation > 0
    if not (crop or shear or rotate):
        return View()
    uniforms = _Uniforms(n, gen, WIDTH['crop'] * crop + WIDTH['shear'] * shear + rotate)
    view = View(LinearMap(n, t, v))
    if crop:
        start, pad, view.linear.frames = _crop(uniforms, t, temperal_padding_ratio)
        if record:
            view.ops.append(('crop', augment.CropParams(torch.from_numpy(start), pad)))
    if shear:
        matrix = _shear(uniforms, shear_amplitude)
        view.linear.map(matrix)
        if record:
            view.ops.append(('shear', torch.from_numpy(matrix)))
    if rotate:
        angles = np.zeros((n, 3))
        angles[:, 1] = (uniforms.take() * 2 - 1) * math.radians(view_rotation)
        view.linear.map(augment.rotation_products(angles))
        if record:
            view.ops.append(('rotate', augment.RotateParams(torch.ones(n, dtype=torch.long),
                                                            torch.from_numpy(angles))))
    return view


AUG_ORDERS = ('written', 'reference')


def parse_aug_method(aug_method, aug_order='written'):
    """Op names of `aug_method`: in the order the digits are written ('written', a repeated digit
    runs twice), or as the reference feeder tests them ('reference': membership in the fixed
    order 1 -> 6, each op at most once). Unknown digits or orders raise ValueError."""
    unknown = sorted(set(aug_method) - set(augment.EXTREME_OPS))
    if unknown:
        raise ValueError(f'aug_method {aug_method!r} has unknown op ids {unknown}; '
                         f'valid ids: {augment.EXTREME_OPS}')
    if aug_order not in AUG_ORDERS:
        raise ValueError(f'aug_order must be one of {AUG_ORDERS}, got {aug_order!r}')
    digits = aug_method if aug_order == 'written' else [d for d in sorted(augment.EXTREME_OPS) if d in aug_method]
    return [augment.EXTREME_OPS[digit] for digit in digits]


def draw_extreme(shape, gen, shear_amplitude=0.5, temperal_padding_ratio=6, aug_method='12345',
                 layout=NTU, blur_normalized=True, record=False, aug_order='written'):
    """Crop, shear, then the extreme ops of `aug_method` (order: `aug_order`), with the
    distributions of the op-level draws in feeder/augment.py (AimCLR reference). record: keep
    the op-level parameters in `View.ops`."""
    n, _, t, v = shape[:4]
    flip_map = get_layout(layout, v).flip_map
    ops = parse_aug_method(aug_method, aug_order)
    crop, shear = temperal_padding_ratio > 0, shear_amplitude > 0
    uniforms = _Uniforms(n, gen, WIDTH['crop'] * crop + WIDTH['shear'] * shear + sum(WIDTH[op] for op in ops))
    seeds = torch.randint(0, 2 ** 62, (ops.count('gaussian_noise'),), generator=gen).tolist()
    view = View(LinearMap(n, t, v))
    tensor = torch.from_numpy
    if crop:
        start, pad, view.linear.frames = _crop(uniforms, t, temperal_padding_ratio)
        if record:
            view.ops.append(('crop', augment.CropParams(tensor(start), pad)))
    steps = []
    if shear:
        matrix = _shear(uniforms, shear_amplitude)
        steps.append(('map', matrix))
        if record:
            view.ops.append(('shear', tensor(matrix)))
    for op in ops:
        if op == 'rotate':
            axis = uniforms.integers(3)
            main = uniforms.take() * math.radians(30.0)
            angles = augment.rotation_angles(axis, main, uniforms.take(3) * math.radians(1.0))
            steps.append(('map', augment.rotation_products(angles)))
            params = lambda: augment.RotateParams(tensor(axis), tensor(angles))
        elif op == 'axis_mask':
            applied, axis = uniforms.coins(), uniforms.integers(3)
            steps.append(('map', augment.axis_masks(applied, axis)))
            params = lambda: augment.AxisMaskParams(tensor(applied), tensor(axis))
        elif op == 'spatial_flip':
            applied = uniforms.coins()
            steps.append(('joints', (applied, flip_map)))
            params = lambda: augment.FlipParams(tensor(applied), flip_map)
        elif op == 'temporal_flip':
            applied = uniforms.coins()
            steps.append(('frames', applied))
            params = lambda: augment.CoinParams(tensor(applied))
        elif op == 'gaussian_blur':
            applied, sigma = uniforms.coins(), uniforms.take() * 1.9 + 0.1
            steps.append(('blur', (applied, augment.gaussian_taps(sigma, blur_normalized))))
            params = lambda: augment.BlurParams(tensor(applied), tensor(sigma), blur_normalized)
        else:   # gaussian_noise
            applied = uniforms.coins()
            noise = augment.NoiseParams(tensor(applied), seeds.pop(0), tuple(shape[1:]), 0.01)
            steps.append(('noise', (applied, noise)))
            params = lambda: noise
        if record:   # the op-level parameter objects, built only for checks
            view.ops.append((op, params()))
    _compose(steps, view.linear)
    for i, (kind, item) in enumerate(steps):
        if kind == 'noise' and item[0].any():
            index = np.flatnonzero(item[0])
            view.noises.append((item[1], _compose(steps[i + 1:], LinearMap(len(index), t, v), index), index))
    return view


def _compose(steps, linear, index=None):
    """linear followed by the steps, for the samples `index` (default: all)."""
    pick = (lambda values: values) if index is None else (lambda values: values[index])
    for kind, item in steps:
        if kind == 'map':
            linear.map(pick(item))
        elif kind == 'frames':
            linear.flip_frames(pick(item))
        elif kind == 'joints':
            linear.permute_joints(pick(item[0]), item[1])
        elif kind == 'blur':
            linear.blur_with(pick(item[0]), pick(item[1]))
    return linear


def apply_views(x, views):
    """The views of clips x (N, 3, T, V, M), in order. A view without a map is x itself."""
    fused = native.serves(x)
    outs = [x if view.linear is None else view.linear.apply(x, fused=fused) for view in views]
    for out, view in zip(outs, views):
        for params, later, index in view.noises:
            if fused and later.fits_kernel():   # drawn in the kernel, never stored
                native.add_mapped_noise(out, later, index, params.seed, params.std)
            else:
                noise = params.draw().to(device=x.device, dtype=x.dtype)
                later.apply(noise, out=out, index=index, fused=fused)
    return outs


def normal_view(x, gen, shear_amplitude=0.5, temperal_padding_ratio=6, view_rotation=0):
    """One normal view (x itself when every parameter is <= 0)."""
    augment.check_xyz(x)
    return apply_views(x, [draw_normal(x.shape, gen, shear_amplitude, temperal_padding_ratio,
                                       view_rotation)])[0]


def extreme_view(x, gen, shear_amplitude=0.5, temperal_padding_ratio=6, aug_method='12345',
                 layout=NTU, blur_normalized=True, aug_order='written'):
    """One extreme view; equals applying the op-level functions in sequence with the same draws."""
    augment.check_xyz(x)
    view = draw_extreme(x.shape, gen, shear_amplitude, temperal_padding_ratio, aug_method, layout,
                        blur_normalized, aug_order=aug_order)
    return apply_views(x, [view])[0]
