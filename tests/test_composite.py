"""Composed views (feeder/composite.py) and the fused CPU kernel (feeder/native): both backends
against op-by-op application of the same parameters, the kernel's noise against a float64
Box-Muller of the same random bits, and the parameter distributions."""
import math

import numpy as np
import pytest
import torch

from feeder import augment as A
from feeder import composite, native

N, C, T, V, M = 16, 3, 50, 25, 2
ATOL = 1e-5
needs_kernel = pytest.mark.skipif(not native.available(), reason='no C compiler for the fused kernel')


def make_clips(n=N, t=T, v=V, m=M, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, C, t, v, m, generator=gen)
    if m > 1:
        x[::3, :, :, :, 1] = 0.0  # absent second body, as in real data
    return x


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


def close(a, b, atol=ATOL):
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=atol)


def sequential(x, ops):
    """The view as plain op-by-op application of the recorded parameters."""
    for name, params in ops:
        x = OP_APPLY[name](x, params)
    return x


OP_APPLY = {'crop': A.apply_temporal_crop, 'shear': lambda x, matrix: A.apply_shear(x, matrix.float()),
            'spatial_flip': A.apply_spatial_flip, 'rotate': A.apply_rotate,
            'gaussian_noise': A.apply_gaussian_noise, 'gaussian_blur': A.apply_gaussian_blur,
            'axis_mask': A.apply_axis_mask, 'temporal_flip': A.apply_temporal_flip}


def both_backends(fn):
    """fn() with the kernel (when it builds here) and on the PyTorch path (whose noise values
    come from a torch generator: compare within one backend)."""
    results = [fn()] if native.available() else []
    with native.disabled():
        results.append(fn())
    return results


# ----------------------------------------------------------------------------- views

@pytest.mark.parametrize('aug_method', ['12345', '123456', '654321', '35', '53', '2', '', '44', '343', '66'])
def test_extreme_view_equals_sequential_ops(aug_method):
    x = make_clips()
    view = composite.draw_extreme(x.shape, gen(), aug_method=aug_method, record=True)
    for out, expected in both_backends(lambda: (composite.apply_views(x, [view])[0], sequential(x, view.ops))):
        close(out, expected)


def test_normal_view_is_crop_then_shear_and_disabled_returns_input():
    x = make_clips()
    view = composite.draw_normal(x.shape, gen(), record=True)
    assert [name for name, _ in view.ops] == ['crop', 'shear']
    for out, expected in both_backends(lambda: (composite.apply_views(x, [view])[0], sequential(x, view.ops))):
        close(out, expected)
    assert composite.normal_view(x, gen(), shear_amplitude=-1, temperal_padding_ratio=-1) is x


def test_normal_view_rotation_about_y_equals_sequential_ops_and_keeps_height_and_radius():
    x = make_clips()
    view = composite.draw_normal(x.shape, gen(), view_rotation=60, record=True)
    assert [name for name, _ in view.ops] == ['crop', 'shear', 'rotate']
    angles = view.ops[2][1].angles
    assert angles[:, 0].abs().max() == 0 and angles[:, 2].abs().max() == 0
    assert angles[:, 1].abs().max() <= np.radians(60) and angles[:, 1].std() > np.radians(20)
    for out, expected in both_backends(lambda: (composite.apply_views(x, [view])[0], sequential(x, view.ops))):
        close(out, expected)
    # rotation alone: y (height) unchanged, horizontal radius sqrt(x^2 + z^2) unchanged
    rotated = composite.normal_view(x, gen(2), shear_amplitude=-1, temperal_padding_ratio=-1, view_rotation=90)
    close(rotated[:, 1], x[:, 1])
    close(rotated[:, 0] ** 2 + rotated[:, 2] ** 2, x[:, 0] ** 2 + x[:, 2] ** 2, atol=1e-4)
    assert not torch.allclose(rotated, x)


def test_nw_ucla_layout_inferred_single_body_and_unnormalised_blur():
    x = make_clips(v=20, m=1)
    view = composite.draw_extreme(x.shape, gen(), aug_method='14', layout=None, blur_normalized=False,
                                  record=True)
    assert view.ops[2][1].joint_map == A.NW_UCLA_FLIP_MAP and not view.ops[3][1].normalized
    for out, expected in both_backends(lambda: (composite.apply_views(x, [view])[0], sequential(x, view.ops))):
        close(out, expected)


def test_digit_order_matters_and_noise_before_mask_is_masked():
    x = make_clips()
    assert not torch.allclose(composite.extreme_view(x, gen(), aug_method='21'),
                              composite.extreme_view(x, gen(), aug_method='12'))
    view = composite.draw_extreme(x.shape, gen(), aug_method='35', shear_amplitude=-1, temperal_padding_ratio=-1,
                                  record=True)
    out = composite.apply_views(x, [view])[0]
    mask = view.ops[1][1]
    masked = mask.applied.nonzero().squeeze(1)
    assert len(masked)
    for i in masked.tolist():   # noise then mask: the masked channel is exactly zero
        assert torch.count_nonzero(out[i, mask.axis[i]]) == 0


def test_views_are_deterministic_per_seed_keep_input_and_dtype():
    x = make_clips()
    before = x.clone()
    for view in (composite.normal_view, composite.extreme_view):
        assert torch.equal(view(x, gen(7)), view(x, gen(7)))
        assert not torch.equal(view(x, gen(7)), view(x, gen(8)))
    assert torch.equal(x, before)
    assert composite.extreme_view(x, gen()).dtype == torch.float32


def test_bad_aug_method_layout_and_shape_are_clear_errors():
    x = make_clips()
    with pytest.raises(ValueError, match="'1237'"):
        composite.extreme_view(x, gen(), aug_method='1237')
    with pytest.raises(ValueError, match='V=17'):
        composite.extreme_view(make_clips(v=17), gen(), layout=None)
    with pytest.raises(ValueError, match='layout'):
        composite.extreme_view(x, gen(), layout='kinetics')
    with pytest.raises(ValueError, match=r'\(N, 3, T, V, M\)'):
        composite.normal_view(x[:, :2], gen())


def test_parameter_distributions():
    n = 20000
    view = composite.draw_extreme((n, 3, 60, 25, 2), gen(), aug_method='123456', record=True)
    ops = dict(view.ops)
    start = ops['crop'].start
    assert ops['crop'].pad == 10 and start.min() == 0 and start.max() == 20
    assert abs(start.double().mean() - 10) < 0.15
    shear = ops['shear']
    off = shear[:, ~torch.eye(3, dtype=torch.bool)]
    assert torch.equal(torch.diagonal(shear, dim1=1, dim2=2), torch.ones(n, 3).double())
    assert off.abs().max() <= 0.5 and off.abs().max() > 0.499 and abs(off.mean()) < 0.01
    rotate = ops['rotate']
    assert np.allclose(np.bincount(rotate.axis.numpy(), minlength=3) / n, 1 / 3, atol=0.015)
    main = rotate.angles[torch.arange(n), rotate.axis]
    assert main.max() <= math.radians(30) and main.max() > math.radians(29.9)
    other = rotate.angles.clone()
    other[torch.arange(n), rotate.axis] = 0
    assert other.max() <= math.radians(1)
    sigma = ops['gaussian_blur'].sigma
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0 and abs(sigma.mean() - 1.05) < 0.02
    assert np.allclose(np.bincount(ops['axis_mask'].axis.numpy(), minlength=3) / n, 1 / 3, atol=0.015)
    for name in ('spatial_flip', 'gaussian_noise', 'gaussian_blur', 'axis_mask', 'temporal_flip'):
        assert abs(ops[name].applied.double().mean() - 0.5) < 0.015, name
    coins = torch.stack([ops[name].applied for name in ('spatial_flip', 'gaussian_blur', 'axis_mask')]).double()
    assert np.abs(np.corrcoef(coins.numpy()) - np.eye(3)).max() < 0.03   # independent columns


# ----------------------------------------------------------------------------- the kernel

def random_map(n, t, v, gen, blur=True):
    linear = composite.LinearMap(n, t, v, torch.randint(0, t, (n, t), generator=gen).numpy())
    linear.joints = torch.stack([torch.randperm(v, generator=gen) for _ in range(n)]).numpy()
    linear.joints[::2] = np.arange(v)   # identity rows take the kernel's direct path
    linear.map(torch.randn(n, 3, 3, generator=gen, dtype=torch.float64).numpy())
    if blur:
        applied = (torch.rand(n, generator=gen) < 0.5).numpy()
        linear.blur_with(applied, A.blur_kernels(torch.rand(n, generator=gen, dtype=torch.float64) * 1.9 + 0.1).numpy())
    return linear


@needs_kernel
@pytest.mark.parametrize('m', [1, 2, 3])
def test_kernel_equals_torch_path_for_any_map(m):
    g = gen(3)
    x = make_clips(n=9, t=20, v=7, m=m)
    linear = random_map(9, 20, 7, g)
    close(native.apply_linear_map(x, linear), linear.apply_torch(x))
    out = torch.randn(12, 3, 20, 7, m, generator=g)
    index = np.array([11, 0, 5, 3, 7, 1, 2, 9, 4])
    expected = out.clone().index_add_(0, torch.from_numpy(index), linear.apply_torch(x))
    close(native.apply_linear_map(x, linear, out=out.clone(), dst_index=index), expected)


@needs_kernel
def test_kernel_rejects_an_index_outside_the_output():
    x = make_clips(n=2, t=8, v=5)
    with pytest.raises(IndexError, match='dst_index'):
        native.apply_linear_map(x, composite.LinearMap(2, 8, 5), out=torch.zeros(2, 3, 8, 5, 2),
                                dst_index=np.array([0, 2]))


M64 = (1 << 64) - 1


def _mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def reference_noise(count, seed, stream, std):
    """The kernel's stream and Box-Muller, in float64 Python."""
    state = _mix64(seed ^ _mix64((stream + 0x632BE59BD9B4E019) & M64))
    pairs = (count + 1) // 2
    out = np.zeros(count)
    for i in range(pairs):
        state = (state + 0x9E3779B97F4A7C15) & M64
        bits = _mix64(state)
        radius = std * math.sqrt(-2 * math.log(((bits >> 33) + 0.5) * 2.0 ** -31))
        low = bits & 0xFFFFFFFF
        angle = (low >> 30) * math.pi / 2 + (((low >> 6) & 0xFFFFFF) * 2.0 ** -24 - 0.5) * math.pi / 2
        out[i] = radius * math.cos(angle)
        if pairs + i < count:
            out[pairs + i] = radius * math.sin(angle)
    return out


@needs_kernel
def test_kernel_noise_is_box_muller_of_its_stream():
    streams = np.array([0, 5, 2 ** 40 + 3])
    got = native.draw_normal((3, 7, 11), streams, 987654321, 2.0).double()
    for row, stream in enumerate(streams):
        np.testing.assert_allclose(got[row].reshape(-1).numpy(), reference_noise(231, 987654321, int(stream), 2.0),
                                   atol=4e-6)
    # a stream depends on its id only, not on the other rows drawn with it
    assert torch.equal(native.draw_normal((10,), np.array([5]), 987654321, 1.0)[0],
                       native.draw_normal((10,), np.array([1, 5]), 987654321, 1.0)[1])


@needs_kernel
def test_kernel_noise_distribution():
    z = native.draw_normal((250_000,), np.arange(8), 12345, 1.0).double().reshape(-1).numpy()
    assert abs(z.mean()) < 0.002 and abs(z.std() - 1) < 0.002
    assert abs(((z - z.mean()) ** 4).mean() / z.var() ** 2 - 3) < 0.03
    for k in (1, 2, 3):
        assert abs((np.abs(z) > k).mean() / math.erfc(k / math.sqrt(2)) - 1) < 0.05
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 0.003


@needs_kernel
def test_noise_added_in_the_kernel_equals_drawn_then_mapped():
    x = make_clips()
    view = composite.draw_extreme(x.shape, gen(), aug_method='3456')
    params, later, index = view.noises[0]
    out = torch.zeros_like(x)
    native.add_mapped_noise(out, later, index, params.seed, params.std)
    expected = torch.zeros_like(x).index_add_(0, torch.from_numpy(index), later.apply_torch(params.draw()))
    close(out, expected, atol=1e-7)


@needs_kernel
def test_kernel_build_is_cached_per_source(tmp_path, monkeypatch):
    monkeypatch.setenv('SKELETON_SSL_CACHE', str(tmp_path))
    path = native._build()
    assert path.startswith(str(tmp_path)) and path.endswith('.so')
    stamp = (tmp_path / path.split('/')[-1]).stat().st_mtime_ns
    assert native._build() == path and (tmp_path / path.split('/')[-1]).stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [path.split('/')[-1]]   # no partial files left


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('aug_method', ['123456', '654321'])
def test_views_match_across_devices(aug_method):
    x = make_clips()
    view = composite.draw_extreme(x.shape, gen(), aug_method=aug_method)
    close(composite.apply_views(x.cuda(), [view])[0].cpu(), composite.apply_views(x, [view])[0])
    normal = composite.draw_normal(x.shape, gen())
    close(composite.apply_views(x.cuda(), [normal])[0].cpu(), composite.apply_views(x, [normal])[0])


def test_unknown_view_kind_is_a_clear_error():
    from feeder import views
    with pytest.raises(ValueError, match="unknown view kind 'sideways'"):
        views.make_views(make_clips(), ('normal', 'sideways'), torch.Generator(), {})


@needs_kernel
def test_kernel_checks_what_it_would_trust():
    x = make_clips(n=4, t=8, v=5)
    linear = composite.LinearMap(4, 8, 5, np.full((4, 8), 8))   # frame 8 of 8
    with pytest.raises(IndexError, match='frames'):
        native.apply_linear_map(x, linear)
    with pytest.raises(ValueError, match='float32'):
        native.apply_linear_map(x.double(), composite.LinearMap(4, 8, 5))
    with pytest.raises(ValueError, match='repeats'):
        native.add_mapped_noise(torch.zeros(4, 3, 8, 5, 2), composite.LinearMap(2, 8, 5), np.array([1, 1]), 0, 1.0)
