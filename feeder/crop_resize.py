"""Batched views of skeleton-contrast (ISC) and HiCo: temporal crop + linear resize, then a pose
transform (shear) or joint corruption. Clips x: (N, C=3, T, V, M); `lengths` (N,) = true frame
counts (the arrays are padded to T, ISC/HiCo data cyclically).

Same draw_/apply_ contract as feeder/augment.py: parameters are drawn per sample on a CPU
generator, application is batched on x's device. Distributions follow the reference
`feeder/augmentations.py` (reference doc Sec. 2):
  crop:   scale ~ U(l_ratio), L = clip(floor(n * scale), 64, n), start ~ U{0..n-L}, frames
          [start, start+L) resized to `out` frames (1-D linear, half-pixel centres, as
          F.interpolate(mode='bilinear', align_corners=False));
  centre: start = int((1 - ratio) * n / 2), frames [start, n - start), resized (evaluation);
  pose:   with prob 0.5 shear p -> S p (S = I + six off-diagonals ~ U(-1, 1)), otherwise 15 of
          the V joints are set to zero (prob 0.5) or mapped p -> R^T p (R entries ~ U(-1, 1)),
          for all frames and persons.
The pose step is one per-(sample, joint) 3x3 map applied with a single einsum.
"""
from dataclasses import dataclass

import torch

MIN_CROP = 64          # the reference's lower bound on the cropped length (before resizing)
CORRUPT_JOINTS = 15    # joints picked by joint corruption


@dataclass(frozen=True)
class ResizeParams:
    start: torch.Tensor   # (n,) long, first source frame
    length: torch.Tensor  # (n,) long, source frames used (>= 1)


def valid_lengths(x):
    """(N,) frames up to the last frame with a non-zero coordinate (at least 1): the true length
    of zero-padded data when no num_frame file is given."""
    present = x.abs().flatten(3).amax(dim=(1, 3)) > 0          # (N, T)
    time = torch.arange(1, x.shape[2] + 1, device=x.device)
    return (present * time).amax(dim=1).clamp(min=1)


def check_lengths(x, lengths):
    if lengths.shape != (x.shape[0],):
        raise ValueError(f'lengths must have shape ({x.shape[0]},), got {tuple(lengths.shape)}')
    if int(lengths.min()) < 1 or int(lengths.max()) > x.shape[2]:
        raise ValueError(f'lengths must lie in [1, T={x.shape[2]}], got '
                         f'[{int(lengths.min())}, {int(lengths.max())}] (num_frame file vs data?)')


def draw_random_crop(lengths, gen, l_ratio=(0.1, 1.0), min_length=MIN_CROP):
    lengths = lengths.cpu().long()
    low, high = l_ratio
    scale = torch.rand(len(lengths), generator=gen, dtype=torch.float64) * (high - low) + low
    # clip(floor(n * scale), min_length, n): clips shorter than min_length are taken whole
    crop = torch.minimum(torch.floor(lengths * scale).long().clamp(min=min_length), lengths)
    start = torch.floor(torch.rand(len(lengths), generator=gen, dtype=torch.float64)
                        * (lengths - crop + 1)).long()
    return ResizeParams(start, crop)


def centre_crop(lengths, ratio=0.95):
    lengths = lengths.cpu().long()
    start = ((1 - ratio) * lengths.double() / 2).long()
    return ResizeParams(start, (lengths - 2 * start).clamp(min=1))


def resize_weights(params, out):
    """Source frames (n, out) x2 and the weight of the second, for linear resizing of each
    sample's window [start, start + length) to `out` frames (half-pixel centres)."""
    length = params.length.double()[:, None]
    pos = ((torch.arange(out, dtype=torch.float64) + 0.5) * length / out - 0.5).clamp(min=0)
    left = pos.floor().long()
    weight = pos - left
    right = torch.minimum(left + 1, params.length[:, None] - 1)
    start = params.start[:, None]
    return start + left, start + right, weight


def apply_crop_resize(x, params, out=64):
    """(N, C, T, V, M) -> (N, C, out, V, M), contiguous: two row gathers of the source frames
    (rows (n, c, t) of V*M values, in x's own layout) and one lerp."""
    n, c, t = x.shape[:3]
    if int((params.start + params.length).max()) > t:
        raise ValueError(f'crop window ends after T={t}')
    left, right, weight = resize_weights(params, out)
    base = (torch.arange(n * c) * t).view(n, c, 1)
    rows = torch.stack([base + left[:, None], base + right[:, None]]).reshape(-1).to(x.device)
    picked = x.reshape(n * c * t, -1).index_select(0, rows).view(2, n, c, out, -1)
    weight = weight.to(device=x.device, dtype=x.dtype).view(n, 1, out, 1)
    return torch.lerp(picked[0], picked[1], weight).view(n, c, out, *x.shape[3:])


def draw_pose(n, gen, num_joints, corrupt_joints=CORRUPT_JOINTS):
    """(n, V, 3, 3) per-joint coordinate maps of the reference 'shear or joint corruption' step."""
    if num_joints < corrupt_joints:
        raise ValueError(f'corrupt_joints: joint corruption picks {corrupt_joints} joints, the clips have only {num_joints}')
    shear = torch.rand(n, generator=gen) < 0.5
    off = torch.rand(n, 6, generator=gen, dtype=torch.float64) * 2 - 1
    s = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
    s[:, [0, 0, 1, 1, 2, 2], [1, 2, 0, 2, 0, 1]] = off            # [[1,a,b],[c,1,d],[e,f,1]]
    picked = torch.rand(n, num_joints, generator=gen).argsort(dim=1)[:, :corrupt_joints]
    zero = torch.rand(n, generator=gen) < 0.5
    r = torch.rand(n, 3, 3, generator=gen, dtype=torch.float64) * 2 - 1
    corrupt = torch.where(zero[:, None, None], torch.zeros(3, 3, dtype=torch.float64), r.transpose(1, 2))
    maps = torch.eye(3, dtype=torch.float64).repeat(n, num_joints, 1, 1)
    hit = torch.zeros(n, num_joints, dtype=torch.bool)
    hit[torch.arange(n)[:, None], picked] = True
    maps = torch.where(hit[..., None, None], corrupt[:, None], maps)
    maps = torch.where(shear[:, None, None, None], s[:, None], maps)
    return maps.float()


def apply_pose(x, maps):
    """x'[n, :, t, v, m] = maps[n, v] @ x[n, :, t, v, m]."""
    return torch.einsum('nvij,njtvm->nitvm', maps.to(device=x.device, dtype=x.dtype), x)


def crop_pose_view(x, lengths, gen, l_ratio=(0.1, 1.0), input_size=64, min_length=MIN_CROP,
                   corrupt_joints=CORRUPT_JOINTS):
    """The ISC / HiCo pretraining view: random crop-resize, then shear or joint corruption
    (of `corrupt_joints` joints: the reference's 15 are 60 % of NTU's 25, 75 % of NW-UCLA's 20)."""
    check_lengths(x, lengths)
    params = draw_random_crop(lengths, gen, l_ratio, min_length)
    maps = draw_pose(x.shape[0], gen, x.shape[3], corrupt_joints)
    return apply_pose(apply_crop_resize(x, params, input_size), maps)
