"""AS-CAL views and data handling vs slow per-sample numpy formulations of the reference ops
(`feeders/tools.py` as described in reference doc 5.2), with the same drawn parameters."""
import math

import numpy as np
import pytest
import torch

from feeder import ascal_augment as A
from feeder import augment
from feeder.array_feeder import DataError
from feeder.ascal_feeder import ASCALArrayDataset
from feeder.views import make_views
from tests.conftest import write_dataset
from torchlight.config import ConfigError, check_kwargs

N, C, T, V, M = 12, 3, 40, 25, 2


def clips(n=N, t=T, seed=0):
    x = torch.randn(n, C, t, V, M, generator=torch.Generator().manual_seed(seed))
    x[::3, :, :, :, 1] = 0.0
    return x


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


def close(batched, slow, atol=1e-5):
    np.testing.assert_allclose(batched.numpy(), np.stack(slow), atol=atol)


# ----------------------------------------------------------------------------- slow references
def slow_subtract(s, joint):
    out = np.zeros_like(s)
    for v in range(s.shape[2]):                 # the reference loops over joints
        out[:, :, v] = s[:, :, v] - s[:, :, joint]
    return out


def slow_matrix_map(s, r):
    """The reference's np.dot(x.transpose(1, 2, 3, 0), R.T): every xyz column p becomes R p."""
    return np.dot(s.transpose(1, 2, 3, 0), r.T).transpose(3, 0, 1, 2)


def slow_shear(s, s1, s2):
    r = np.array([[1, s1[0], s2[0]], [s1[1], 1, s2[1]], [s1[2], s2[2], 1]])
    return slow_matrix_map(s, r)


def slow_rotate(s, axis, degrees):
    a = math.radians(degrees)
    c, si = math.cos(a), math.sin(a)
    r = {0: [[1, 0, 0], [0, c, si], [0, -si, c]],
         1: [[c, 0, -si], [0, 1, 0], [si, 0, c]],
         2: [[c, si, 0], [-si, c, 0], [0, 0, 1]]}[axis]
    return slow_matrix_map(s, np.array(r))


def slow_zero_joints(s, joints, frames):
    out = s.copy()
    part = out[:, frames].copy()
    part[:, :, joints] = 0
    out[:, frames] = part
    return out


def slow_blur(s, sigma, normalized):
    k = np.arange(-7, 8)
    w = np.exp(-k ** 2 / (2 * sigma ** 2))
    w = w / w.sum() if normalized else w
    t = s.shape[1]
    out = np.zeros_like(s, dtype=np.float64)
    for i in range(t):                            # cross-correlation with zero padding 7
        for j, wk in zip(k, w):
            if 0 <= i + j < t:
                out[:, i] += wk * s[:, i + j]
    return out


# ----------------------------------------------------------------------------- ops
def test_subtract_matches_reference_and_draws_per_sample():
    x = clips()
    joints = A.draw_subtract(N, gen(), None, V)
    assert joints.min() >= 0 and joints.max() < V and len(set(joints.tolist())) > 1
    close(A.apply_subtract(x, joints), [slow_subtract(s, int(j)) for s, j in zip(x.numpy(), joints)])
    fixed = A.draw_subtract(N, gen(), 1, V)
    assert (fixed == 1).all()
    assert (A.apply_subtract(x, fixed)[:, :, :, 1] == 0).all()
    with pytest.raises(ValueError, match='subtract joint 25'):
        A.draw_subtract(N, gen(), 25, V)


def test_shear_matches_reference_layout():
    x = clips()
    s = A.draw_shear(N, gen())
    off = s[:, [0, 1, 2, 0, 1, 2], [1, 0, 0, 2, 2, 1]]
    assert 0.5 < off.abs().max() <= 1 and torch.equal(s.diagonal(dim1=1, dim2=2), torch.ones(N, 3))
    out = augment.apply_channel_matrix(x, s)
    slow = [slow_shear(xs, [m[0, 1], m[1, 0], m[2, 0]], [m[0, 2], m[1, 2], m[2, 1]])
            for xs, m in zip(x.numpy(), s.double().numpy())]
    close(out, slow)
    fixed = A.draw_shear(2, gen(), s1=[0.1, 0.2, 0.3], s2=[0.4, 0.5, 0.6])
    close(augment.apply_channel_matrix(x[:2], fixed),
          [slow_shear(xs, [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]) for xs in x[:2].numpy()])


def test_rotate_matches_reference_matrices():
    x = clips()
    p = A.draw_rotate(N, gen())
    degrees = p.angles.sum(1) * 180 / math.pi
    assert ((p.angles != 0).sum(1) <= 1).all() and degrees.min() >= 0 and degrees.max() <= 30
    assert len(set(p.axis.tolist())) > 1
    close(augment.apply_rotate(x, p), [slow_rotate(s, int(a), float(d)) for s, a, d in zip(x.numpy(), p.axis, degrees)])
    ranged = A.draw_rotate(200, gen(), axis=2, angle=[90, 10]).angles[:, 2] * 180 / math.pi
    assert ranged.min() >= 80 and ranged.max() <= 100 and ranged.std() > 3
    fixed = A.draw_rotate(3, gen(), 1, 45).angles[:, 1]
    assert torch.allclose(fixed, torch.full((3,), math.pi / 4, dtype=torch.float64))


def test_zero_out_joints_matches_reference_and_counts():
    x = clips()
    p = A.draw_zero_joints(N, gen(), V, T)
    nj, nf = p.joints.sum(1), p.frames.sum(1)
    assert nj.min() >= 5 and nj.max() <= 15 and nf.min() >= 20 and nf.max() <= 40   # T=40 < 50: clamped
    assert len(set(nj.tolist())) > 1
    slow = [slow_zero_joints(s, np.flatnonzero(j), np.flatnonzero(f))
            for s, j, f in zip(x.numpy(), p.joints.numpy(), p.frames.numpy())]
    close(A.apply_zero_joints(x, p), slow, atol=0)
    long = A.draw_zero_joints(50, gen(), V, 150)
    assert long.frames.sum(1).min() >= 50 and long.frames.sum(1).max() <= 100
    exact = A.draw_zero_joints(4, gen(), V, T, joints=7, frames=11)
    assert (exact.joints.sum(1) == 7).all() and (exact.frames.sum(1) == 11).all()
    fixed = A.draw_zero_joints(2, gen(), V, T, joints=[0, 3], frames=[5])
    assert fixed.joints[:, [0, 3]].all() and fixed.joints.sum() == 4 and fixed.frames.sum() == 2
    with pytest.raises(ValueError, match='cannot choose 26 of 25 joints'):
        A.draw_zero_joints(2, gen(), V, T, joints=26)


def test_zero_axis_noise_and_blur():
    x = clips()
    p = A.draw_zero_axis(N, gen())
    out = augment.apply_axis_mask(x, p)
    for s, o, a in zip(x, out, p.axis):
        kept = [i for i in range(3) if i != a]
        assert (o[a] == 0).all() and torch.equal(o[kept], s[kept])
    noise = augment.draw_gaussian_noise(N, gen(), x.shape[1:], A.NOISE_STD, p=1.0)
    assert noise.applied.all() and abs(float(noise.noise.std()) - 0.05) < 0.002
    for normalized in (True, False):
        b = augment.draw_gaussian_blur(N, gen(), normalized=normalized)
        out = augment.apply_gaussian_blur(x, b)
        slow = [slow_blur(s, float(sig), normalized) if a else s
                for s, sig, a in zip(x.numpy(), b.sigma, b.applied)]
        close(out, slow)


# ----------------------------------------------------------------------------- composition
def test_parse_transform_follows_the_reference_token_rules():
    assert A.parse_transform('subtract1_randomFlip_shear', [1, None, None]) == [
        ('subtract', 1, None), ('randomFlip', None, None), ('shear', None, None)]
    assert A.parse_transform('rotate_zeroOutJoints', [0, 10, 5, 20]) == [
        ('rotate', 0, 10), ('zeroOutJoints', 5, 20)]
    assert A.parse_transform('None') == [] and A.parse_transform('') == []
    with pytest.raises(ValueError, match="unknown token 'flip'"):
        A.parse_transform('subtract_flip')


def test_view_equals_the_ops_in_sequence_with_the_same_draws():
    x = clips()
    out = A.ascal_view(x, gen(5), 'subtract_randomFlip_shear', [1])
    g = gen(5)
    y = A.apply_subtract(x, A.draw_subtract(N, g, 1, V))
    flip = augment.draw_temporal_flip(N, g)
    y = augment.apply_temporal_flip(y, flip)
    y = augment.apply_channel_matrix(y, A.draw_shear(N, g))
    assert flip.applied.any() and not flip.applied.all()
    assert torch.equal(out, y) and (out[:, :, :, 1].abs() < 1e-6).all()
    every = 'selectFrames_subtract_rotate_zeroOutJoints_zeroOutAxis_gausNoise_gausFilter_shear_randomFlip'
    long = A.ascal_view(x, gen(2), every, [30, None, 1])
    assert long.shape == (N, C, 30, V, M) and torch.isfinite(long).all()


def test_views_registered_for_aug1_and_aug2():
    x = clips()
    v1, v2 = make_views(x, ('ascal1', 'ascal2'), gen(), {'aug1': 'None', 'aug2': 'subtract'})
    assert torch.equal(v1, x) and (v2[:, :, :, 1] == 0).all()
    d1, d2 = make_views(x, ('ascal1', 'ascal2'), gen(), {})   # reference default for both views
    assert not torch.equal(d1, d2) and (d1[:, :, :, 1].abs() < 1e-6).all()
    with pytest.raises(ValueError, match=r'\(N, 3, T, V, M\)'):
        make_views(x[:, :2], ('ascal1',), gen(), {})


# ----------------------------------------------------------------------------- dataset
def test_dataset_selects_frames_centres_and_keeps_two_persons(tmp_path):
    data, label = write_dataset(str(tmp_path), 'train', 6, t=20)
    raw = np.load(data)
    three = np.concatenate([raw, raw[..., :1]], axis=4)   # a third person slot is dropped
    np.save(data, three)
    ds = ASCALArrayDataset(data, label, selected_frames=12, subtract_joint=1)
    clip, y, i = ds[4]
    expected = raw[4, :, :12] - raw[4, :, :12, 1:2]
    np.testing.assert_allclose(clip.numpy(), expected, atol=1e-6)
    assert ds.shape == (6, 3, 12, 25, 2) and y == 0 and i == 4 and ds.view_args == {}
    whole = ASCALArrayDataset(data, label, selected_frames=150, aug1='None', list_args=[2])
    assert whole[0][0].shape == (3, 20, 25, 2) and torch.equal(whole[0][0], torch.from_numpy(raw[0]))
    assert whole.view_args == {'aug1': 'None', 'list_args': [2]}
    with pytest.raises(DataError, match='subtract_joint 25'):
        ASCALArrayDataset(data, label, subtract_joint=25)
    check_kwargs({'label_percent': 0.5, 'selected_frames': 10, 'mmap': True}, 'args', ASCALArrayDataset)
    with pytest.raises(ConfigError, match="unknown key 'selected_frame'"):
        check_kwargs({'selected_frame': 10}, 'train_feeder_args', ASCALArrayDataset)
