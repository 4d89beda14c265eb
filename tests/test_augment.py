"""Batched augmentation ops vs. slow per-sample numpy formulations written from the reference doc
(the composed views: tests/test_composite.py)."""
import math

import numpy as np
import pytest
import torch

from feeder import augment as A

N, C, T, V, M = 16, 3, 50, 25, 2
ATOL = 1e-5


def make_clips(n=N, t=T, v=V, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, C, t, v, M, generator=gen)
    x[::3, :, :, :, 1] = 0.0  # absent second body, as in real data
    return x


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


def close(batched, slow):
    np.testing.assert_allclose(batched.numpy(), np.asarray(slow, dtype=np.float64), atol=ATOL)


def assert_skipped_unchanged(x, out, applied):
    assert applied.any() and not applied.all(), 'the test draw should mix applied and skipped'
    assert torch.equal(out[~applied], x[~applied])


# ----------------------------------------------------------------------------- slow references

def slow_crop(sample, start, pad):
    padded = np.pad(sample, ((0, 0), (pad, pad), (0, 0), (0, 0)), mode='symmetric')
    return padded[:, start:start + sample.shape[1]]


def slow_shear(sample, alpha, beta):
    s = np.array([[1, alpha[0], beta[0]], [alpha[1], 1, beta[1]], [alpha[2], beta[2], 1]])
    return np.einsum('ij,jtvm->itvm', s, sample)


def slow_rotation(angles):
    def rot_x(a):
        c, s = math.cos(a), math.sin(a)
        return np.array([[1, 0, 0], [0, c, s], [0, -s, c]])

    def rot_y(a):
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])

    def rot_z(a):
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])

    return rot_z(angles[2]) @ rot_y(angles[1]) @ rot_x(angles[0])


def slow_rotate(sample, angles):
    out = np.empty_like(sample, dtype=np.float64)
    r = slow_rotation(angles)
    for t in range(sample.shape[1]):
        for v in range(sample.shape[2]):
            for m in range(sample.shape[3]):
                out[:, t, v, m] = r @ sample[:, t, v, m]
    return out


def slow_spatial_flip(sample, joint_map):
    out = np.empty_like(sample)
    for v in range(sample.shape[2]):
        out[:, :, v] = sample[:, :, joint_map[v]]
    return out


def slow_blur(sample, sigma, normalized):
    k = np.arange(-7, 8)
    w = np.exp(-k ** 2 / (2 * sigma ** 2))
    if normalized:
        w = w / w.sum()
    out = np.empty_like(sample, dtype=np.float64)
    for c in range(sample.shape[0]):
        for v in range(sample.shape[2]):
            for m in range(sample.shape[3]):
                out[c, :, v, m] = np.convolve(sample[c, :, v, m], w, mode='same')
    return out


def slow_axis_mask(sample, axis):
    out = sample.copy()
    out[axis] = 0
    return out


def slow_temporal_flip(sample):
    return sample[:, ::-1]


def per_sample(x, applied, fn):
    """Run fn(i, sample) on applied samples, copy the others."""
    out = x.numpy().astype(np.float64)
    for i in range(len(out)):
        if applied[i]:
            out[i] = fn(i, x[i].numpy())
    return out


# ----------------------------------------------------------------------------- normal ops

def test_temporal_crop_matches_symmetric_pad_and_slice():
    x = make_clips()
    params = A.draw_temporal_crop(N, gen(), T, 6)
    assert params.pad == 8
    out = A.apply_temporal_crop(x, params)
    close(out, [slow_crop(x[i].numpy(), int(params.start[i]), 8) for i in range(N)])


def test_temporal_crop_starts_cover_exactly_0_to_2p():
    params = A.draw_temporal_crop(4000, gen(), T, 6)
    assert set(params.start.tolist()) == set(range(17))


def test_temporal_crop_extreme_starts_reach_both_reflections():
    x = make_clips(n=2)
    params = A.CropParams(torch.tensor([0, 16]), 8)
    out = A.apply_temporal_crop(x, params)
    close(out, [slow_crop(x[0].numpy(), 0, 8), slow_crop(x[1].numpy(), 16, 8)])
    assert torch.equal(out[0, :, 7], x[0, :, 0]) and torch.equal(out[0, :, 8], x[0, :, 0])


def test_shear_matches_explicit_matrix():
    x = make_clips()
    g = gen()
    alpha, beta = torch.rand((2, N, 3), generator=g, dtype=torch.float64) - 0.5  # preview draws
    matrix = A.draw_shear(N, gen(), 0.5)
    expected = [slow_shear(x[i].numpy(), alpha[i].numpy(), beta[i].numpy()) for i in range(N)]
    close(A.apply_shear(x, matrix), expected)


def test_shear_entries_in_range_and_unit_diagonal():
    matrix = A.draw_shear(2000, gen(), 0.3)
    assert torch.equal(torch.diagonal(matrix, dim1=1, dim2=2), torch.ones(2000, 3))
    off = matrix[:, ~torch.eye(3, dtype=torch.bool)]
    assert off.abs().max() <= 0.3 and off.abs().max() > 0.29


# ----------------------------------------------------------------------------- extreme ops

@pytest.mark.parametrize('layout, v', [('ntu-rgb+d', 25), ('nw-ucla', 20)])
def test_spatial_flip_matches_index_loop(layout, v):
    x = make_clips(v=v)
    params = A.draw_spatial_flip(N, gen(), layout)
    out = A.apply_spatial_flip(x, params)
    close(out, per_sample(x, params.applied, lambda i, s: slow_spatial_flip(s, params.joint_map)))
    assert_skipped_unchanged(x, out, params.applied)


def test_flip_maps_swap_left_and_right_limbs():
    ntu = A.NTU_FLIP_MAP
    assert [ntu[v - 1] + 1 for v in (5, 9, 13, 17, 22, 24)] == [9, 5, 17, 13, 24, 22]
    ucla = A.NW_UCLA_FLIP_MAP
    assert list(ucla[4:8]) == [8, 9, 10, 11] and list(ucla[8:12]) == [4, 5, 6, 7]
    assert list(ucla[12:16]) == [16, 17, 18, 19] and list(ucla[16:20]) == [12, 13, 14, 15]
    for flip_map in (ntu, ucla):  # an involution: flipping twice is the identity
        assert [flip_map[j] for j in flip_map] == list(range(len(flip_map)))


def test_rotate_matches_explicit_successive_rotations():
    x = make_clips()
    params = A.draw_rotate(N, gen())
    out = A.apply_rotate(x, params)
    close(out, [slow_rotate(x[i].numpy(), params.angles[i].tolist()) for i in range(N)])


def test_rotate_angles_in_range_and_main_axis_uniform():
    params = A.draw_rotate(6000, gen())
    degrees = torch.rad2deg(params.angles)
    main = degrees.gather(1, params.axis[:, None]).squeeze(1)
    others = degrees[torch.arange(3) != params.axis[:, None]]
    assert main.min() >= 0 and main.max() <= 30 and main.max() > 29
    assert others.min() >= 0 and others.max() <= 1
    counts = torch.bincount(params.axis, minlength=3)
    assert (counts - 2000).abs().max() < 200


def test_gaussian_noise_added_to_applied_samples_only():
    x = make_clips()
    params = A.draw_gaussian_noise(N, gen(), x.shape[1:])
    out = A.apply_gaussian_noise(x, params)
    noise = iter(params.noise.numpy())
    close(out, per_sample(x, params.applied, lambda i, s: s + next(noise)))
    assert_skipped_unchanged(x, out, params.applied)
    assert not torch.equal(out[params.applied][:, :, :, :, 1], x[params.applied][:, :, :, :, 1])


def test_gaussian_noise_distribution():
    params = A.draw_gaussian_noise(400, gen(), (3, 50, 25, 2))
    assert abs(params.applied.float().mean() - 0.5) < 0.08
    assert abs(params.noise.std() - 0.01) < 2e-4 and abs(params.noise.mean()) < 2e-4


@pytest.mark.parametrize('normalized', [True, False])
def test_gaussian_blur_matches_np_convolve(normalized):
    x = make_clips()
    params = A.draw_gaussian_blur(N, gen(), normalized=normalized)
    out = A.apply_gaussian_blur(x, params)
    assert out.dtype == torch.float32
    expected = per_sample(x, params.applied,
                          lambda i, s: slow_blur(s, float(params.sigma[i]), normalized))
    close(out, expected)
    assert_skipped_unchanged(x, out, params.applied)


def test_blur_gain_and_sigma_range():
    params = A.draw_gaussian_blur(3000, gen())
    assert params.sigma.min() >= 0.1 and params.sigma.max() <= 2.0
    torch.testing.assert_close(params.weights.sum(1), torch.ones(3000, dtype=torch.float64))
    raw = A.blur_kernels(params.sigma, normalized=False)
    k = torch.arange(-7, 8, dtype=torch.float64)
    expected_sum = torch.exp(-k ** 2 / (2 * params.sigma[:, None] ** 2)).sum(1)
    torch.testing.assert_close(raw.sum(1), expected_sum)
    assert raw.sum(1).min() >= 1.0 and raw.sum(1).max() <= 5.02


def test_axis_mask_matches_zeroed_channel():
    x = make_clips()
    params = A.draw_axis_mask(N, gen())
    out = A.apply_axis_mask(x, params)
    close(out, per_sample(x, params.applied, lambda i, s: slow_axis_mask(s, int(params.axis[i]))))
    assert_skipped_unchanged(x, out, params.applied)
    assert set(A.draw_axis_mask(300, gen()).axis.tolist()) == {0, 1, 2}


def test_axis_mask_matrices_equal_the_mask():
    x = make_clips()
    params = A.draw_axis_mask(N, gen())
    close(A.apply_channel_matrix(x, A.axis_mask_matrices(params)),
          A.apply_axis_mask(x, params).numpy())


def test_temporal_flip_reverses_frames():
    x = make_clips()
    params = A.draw_temporal_flip(N, gen())
    out = A.apply_temporal_flip(x, params)
    close(out, per_sample(x, params.applied, lambda i, s: slow_temporal_flip(s)))
    assert_skipped_unchanged(x, out, params.applied)


@pytest.mark.parametrize('draw', [
    lambda g: A.draw_spatial_flip(5000, g), lambda g: A.draw_gaussian_noise(5000, g, (1,)),
    lambda g: A.draw_gaussian_blur(5000, g), lambda g: A.draw_axis_mask(5000, g),
    lambda g: A.draw_temporal_flip(5000, g)])
def test_coins_are_fair_and_independent_per_sample(draw):
    applied = draw(gen()).applied
    assert abs(applied.float().mean() - 0.5) < 0.03
    assert applied.dtype == torch.bool and applied.shape == (5000,)


def test_permute_joints_equals_index_for_any_map():
    x = make_clips()
    joint_map = tuple(torch.randperm(V, generator=gen()).tolist())
    assert torch.equal(A.permute_joints(x, joint_map), x[:, :, :, list(joint_map)])
