"""The AimCLR normal and extreme views, each as one per-sample linear map plus noise.

Every extreme op but the noise is linear and acts on one axis: frames (crop, temporal flip),
joints (spatial flip), time (blur) or coordinates (shear, rotation, axis mask). So a view is one
`LinearMap` of the clip, plus every noise draw passed through the map of the ops written after
it (L (y + e) = L y + L e). A map is applied in one pass per sample by the fused CPU kernel
(feeder/native) or as a few batched PyTorch ops (CUDA, or no C compiler): same values up to
float rounding.

Views are drawn first (`draw_normal`, `draw_extreme`: parameters in the order of the ops, from
the CPU generator, so a seed gives the same views on every device) and then applied
(`apply_views`); the kernel draws the noise values itself, sample by sample, where it adds them.
"""
from dataclasses import dataclass, field

import numpy as np
import torch

from feeder import augment, native
from feeder.streams import NTU, infer_layout


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

    def subset(self, index):
        """The map of the samples `index` (ascending numpy int64), renumbered 0..len-1."""
        linear = LinearMap(len(index), self.num_frames, self.num_joints)
        pick = lambda values: None if values is None else values[index]
        linear.frames, linear.joints, linear.channel = pick(self.frames), pick(self.joints), pick(self.channel)
        for blurred, weights in self.blurs:
            inside = np.isin(blurred, index)
            linear.blurs.append((np.searchsorted(index, blurred[inside]), weights[inside]))
        return linear

    # ------------------------------------------------------------------ application

    def apply(self, x, out=None, index=None, fused=None):
        """The map applied to x, as a new tensor; or, with `out`, added to out[index] (index:
        numpy int64, one output sample per sample of x). `fused`: use the CPU kernel (default:
        when it serves x)."""
        fused = native.serves(x) if fused is None else fused
        if fused and len(self.blurs) <= 1 and (out is None or native.serves(out)):
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
    with the map of the ops after it."""
    linear: LinearMap = None
    noises: list = field(default_factory=list)   # [(augment.NoiseParams, LinearMap)]


def _crop_frames(n, t, gen, temperal_padding_ratio):
    crop = augment.draw_temporal_crop(n, gen, t, temperal_padding_ratio)
    if crop.pad > t:
        raise ValueError(f'crop padding {crop.pad} exceeds T={t}')
    return augment.crop_frame_index(crop, t).numpy()


def draw_normal(shape, gen, shear_amplitude=0.5, temperal_padding_ratio=6):
    """Temporal crop then shear; a parameter <= 0 disables its op."""
    n, _, t, v = shape[:4]
    if temperal_padding_ratio <= 0 and shear_amplitude <= 0:
        return View()
    linear = LinearMap(n, t, v)
    if temperal_padding_ratio > 0:
        linear.frames = _crop_frames(n, t, gen, temperal_padding_ratio)
    if shear_amplitude > 0:
        linear.map(augment.draw_shear(n, gen, shear_amplitude))
    return View(linear)


def parse_aug_method(aug_method):
    """Op names in the order the digits are written; unknown digits raise ValueError."""
    unknown = sorted(set(aug_method) - set(augment.EXTREME_OPS))
    if unknown:
        raise ValueError(f'aug_method {aug_method!r} has unknown op ids {unknown}; '
                         f'valid ids: {augment.EXTREME_OPS}')
    return [augment.EXTREME_OPS[digit] for digit in aug_method]


def draw_extreme(shape, gen, shear_amplitude=0.5, temperal_padding_ratio=6, aug_method='12345',
                 layout=NTU, blur_normalized=True):
    """Crop, shear, then the extreme ops of `aug_method` in the written order: the same draws,
    in the same order, as the op-level functions of feeder/augment.py."""
    n, _, t, v = shape[:4]
    layout = infer_layout(v, layout)
    ops = parse_aug_method(aug_method)
    frames = _crop_frames(n, t, gen, temperal_padding_ratio) if temperal_padding_ratio > 0 else None
    steps = [('map', augment.draw_shear(n, gen, shear_amplitude))] if shear_amplitude > 0 else []
    for op in ops:
        if op == 'rotate':
            steps.append(('map', augment.draw_rotate(n, gen).matrix))
        elif op == 'axis_mask':
            steps.append(('map', augment.axis_mask_matrices(augment.draw_axis_mask(n, gen))))
        elif op == 'spatial_flip':
            steps.append(('joints', augment.draw_spatial_flip(n, gen, layout)))
        elif op == 'temporal_flip':
            steps.append(('frames', augment.draw_temporal_flip(n, gen).applied))
        elif op == 'gaussian_blur':
            steps.append(('blur', augment.draw_gaussian_blur(n, gen, normalized=blur_normalized)))
        elif op == 'gaussian_noise':
            steps.append(('noise', augment.draw_gaussian_noise(n, gen, shape[1:])))
    view = View(_compose(steps, LinearMap(n, t, v, frames)))
    for i, (kind, params) in enumerate(steps):
        if kind == 'noise' and params.applied.any():
            index = np.flatnonzero(params.applied.numpy())
            view.noises.append((params, _compose(steps[i + 1:], LinearMap(n, t, v)).subset(index)))
    return view


def _compose(steps, linear):
    for kind, params in steps:
        if kind == 'map':
            linear.map(params)
        elif kind == 'frames':
            linear.flip_frames(params.numpy())
        elif kind == 'joints':
            linear.permute_joints(params.applied.numpy(), params.joint_map)
        elif kind == 'blur':
            linear.blur_with(params.applied.numpy(), params.weights.numpy())
    return linear


def apply_views(x, views):
    """The views of clips x (N, 3, T, V, M), in order. A view without a map is x itself."""
    fused = native.serves(x)
    outs = [x if view.linear is None else view.linear.apply(x, fused=fused) for view in views]
    for out, view in zip(outs, views):
        for params, later in view.noises:
            index = np.flatnonzero(params.applied.numpy())
            if fused and len(later.blurs) <= 1:   # drawn in the kernel, never stored
                native.add_mapped_noise(out, later, index, params.seed, params.std)
            else:
                noise = params.draw().to(device=x.device, dtype=x.dtype)
                later.apply(noise, out=out, index=index, fused=fused)
    return outs


def _check_xyz(x):
    if x.dim() != 5 or x.shape[1] != 3:
        raise ValueError(f'expected clips (N, 3, T, V, M), got {tuple(x.shape)}')


def normal_view(x, gen, shear_amplitude=0.5, temperal_padding_ratio=6):
    """One normal view (x itself when both parameters are <= 0)."""
    _check_xyz(x)
    return apply_views(x, [draw_normal(x.shape, gen, shear_amplitude, temperal_padding_ratio)])[0]


def extreme_view(x, gen, shear_amplitude=0.5, temperal_padding_ratio=6, aug_method='12345',
                 layout=NTU, blur_normalized=True):
    """One extreme view; equals applying the op-level functions in sequence with the same draws."""
    _check_xyz(x)
    view = draw_extreme(x.shape, gen, shear_amplitude, temperal_padding_ratio, aug_method, layout,
                        blur_normalized)
    return apply_views(x, [view])[0]
