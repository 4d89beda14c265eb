"""ISC / HiCo views (feeder/crop_resize.py) against per-sample formulations of the reference ops."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from feeder import crop_resize as cr
from feeder.views import eval_view, has_augmentation, make_views


def clips(n=6, t=90, v=25, m=2, seed=0):
    return torch.randn(n, 3, t, v, m, generator=torch.Generator().manual_seed(seed))


def reference_resize(sample, start, length, out):
    """The reference: F.interpolate(bilinear, align_corners=False) on (1, C*V*M, L, 1)."""
    c, _, v, m = sample.shape
    window = sample[:, start:start + length].permute(0, 2, 3, 1).reshape(1, c * v * m, length, 1)
    resized = F.interpolate(window, size=(out, 1), mode='bilinear', align_corners=False)
    return resized.view(c, v, m, out).permute(0, 3, 1, 2)


def test_crop_resize_equals_per_sample_interpolate():
    x = clips(t=90)
    lengths = torch.tensor([90, 70, 64, 40, 12, 1])
    params = cr.draw_random_crop(lengths, torch.Generator().manual_seed(3), (0.1, 1.0))
    out = cr.apply_crop_resize(x, params, out=64)
    assert out.shape == (6, 3, 64, 25, 2)
    for i in range(6):
        ref = reference_resize(x[i], int(params.start[i]), int(params.length[i]), 64)
        torch.testing.assert_close(out[i], ref, atol=1e-6, rtol=1e-6)
    # downsampling too (a window longer than the output)
    params = cr.ResizeParams(torch.tensor([0, 5, 0, 0, 0, 0]), torch.tensor([90, 80, 64, 33, 7, 1]))
    out = cr.apply_crop_resize(x, params, out=16)
    for i in range(6):
        ref = reference_resize(x[i], int(params.start[i]), int(params.length[i]), 16)
        torch.testing.assert_close(out[i], ref, atol=1e-6, rtol=1e-6)


def test_random_crop_follows_the_reference_bounds():
    lengths = torch.tensor([300] * 2000 + [50] * 10)
    p = cr.draw_random_crop(lengths, torch.Generator().manual_seed(0), (0.1, 1.0))
    long, short = slice(0, 2000), slice(2000, None)
    # L = clip(floor(n * U(0.1, 1)), 64, n): at least 64 frames, a short clip is taken whole
    assert int(p.length[long].min()) == 64 and int(p.length[long].max()) <= 300
    assert torch.equal(p.length[short], lengths[short]) and not p.start[short].any()
    assert bool(((p.start + p.length) <= lengths).all()) and int(p.start.min()) == 0
    # P(L = 64) = P(300 * s < 65) = (65/300 - 0.1) / 0.9 = 0.13; the mean of L above 64 ~ 177
    assert abs((p.length[long] == 64).float().mean().item() - 0.13) < 0.03
    assert abs(p.length[long][p.length[long] > 64].float().mean().item() - 182.5) < 8
    # the start is uniform over the room left: mean start / (n - L) ~ 1/2
    room = (lengths[long] - p.length[long]).float()
    assert abs((p.start[long].float() / room.clamp(min=1))[room > 10].mean().item() - 0.5) < 0.05


def test_min_crop_lowers_the_floor_for_short_clips():
    """`min_crop` (feeder key): short datasets (NW-UCLA, 50 frames) crop below the reference's 64."""
    x = clips(n=400, t=50, v=20, m=1)
    lengths = torch.full((400,), 50)
    views = make_views(x, ('crop_resize', 'crop_pose'), torch.Generator().manual_seed(1),
                       {'l_ratio': (0.5, 1.0), 'input_size': 50, 'min_crop': 8}, lengths)
    assert all(v.shape == (400, 3, 50, 20, 1) for v in views)
    p = cr.draw_random_crop(lengths, torch.Generator().manual_seed(1), (0.5, 1.0), min_length=8)
    assert int(p.length.min()) == 25 and int(p.length.max()) <= 50 and (p.length < 50).float().mean() > 0.9
    # the reference floor takes these clips whole, and the views then differ from a cropped one
    whole = make_views(x, ('crop_resize',), torch.Generator().manual_seed(1),
                       {'l_ratio': (0.5, 1.0), 'input_size': 50}, lengths)[0]
    torch.testing.assert_close(whole, x)
    assert not torch.allclose(views[0], x)
    with pytest.raises(ValueError, match='min_crop must be a positive integer'):
        from feeder.views import check_view_args
        check_view_args({'min_crop': 0}, 'train_feeder_args')


def test_centre_crop_matches_reference_formula():
    lengths = torch.tensor([300, 103, 20, 1])
    p = cr.centre_crop(lengths, 0.95)
    starts = [int((1 - 0.95) * n / 2) for n in (300, 103, 20, 1)]
    assert p.start.tolist() == starts
    assert p.length.tolist() == [n - 2 * s for n, s in zip((300, 103, 20, 1), starts)]


def test_pose_maps_are_shear_or_joint_corruption():
    n, v = 400, 25
    maps = cr.draw_pose(n, torch.Generator().manual_seed(1), v).double()
    eye = torch.eye(3, dtype=torch.float64)
    shear = (maps == maps[:, :1]).all(dim=(1, 2, 3)) & (maps[:, 0].diagonal(dim1=-2, dim2=-1) == 1).all(1)
    assert 0.4 < shear.float().mean() < 0.6
    off = maps[shear][:, 0][:, ~torch.eye(3, dtype=torch.bool)]
    assert off.abs().max() <= 1 and off.abs().min() > 0 and off.std() > 0.5   # U(-1, 1)
    zeros = 0
    for sample in maps[~shear]:
        changed = ~torch.isclose(sample, eye).all(dim=(1, 2))
        assert int(changed.sum()) == 15                       # 15 distinct joints, the rest untouched
        hit = sample[changed]
        assert (hit == hit[0]).all()                          # one matrix for all of them
        zeros += int((hit[0] == 0).all())
    assert 0.35 < zeros / int((~shear).sum()) < 0.65          # zeroing vs a random linear map


def test_apply_pose_equals_per_joint_numpy_product():
    x = clips(n=4, t=7)
    maps = cr.draw_pose(4, torch.Generator().manual_seed(2), 25)
    out = cr.apply_pose(x, maps)
    xs, ms = x.double().numpy(), maps.double().numpy()
    for i in range(4):
        for j in range(25):
            # p -> A p for every frame and person (reference: np.dot over the coordinate axis)
            ref = np.einsum('ij,jtm->itm', ms[i, j], xs[i, :, :, j])
            np.testing.assert_allclose(out[i, :, :, j].double().numpy(), ref, atol=1e-5)


def test_crop_pose_view_and_seed_reproducibility():
    x = clips(n=5, t=120)
    lengths = torch.tensor([120, 100, 80, 64, 30])
    a = make_views(x, ('crop_pose', 'crop_pose'), torch.Generator().manual_seed(7),
                   {'l_ratio': [0.1, 1.0], 'input_size': 64}, lengths)
    b = make_views(x, ('crop_pose', 'crop_pose'), torch.Generator().manual_seed(7),
                   {'l_ratio': [0.1, 1.0], 'input_size': 64}, lengths)
    assert a[0].shape == (5, 3, 64, 25, 2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], a[1])                       # two independent draws
    # same composition by hand from the same generator state
    gen = torch.Generator().manual_seed(7)
    crop = cr.draw_random_crop(lengths, gen, (0.1, 1.0))
    maps = cr.draw_pose(5, gen, 25)
    torch.testing.assert_close(a[0], cr.apply_pose(cr.apply_crop_resize(x, crop, 64), maps))


def test_corrupt_joints_sets_how_many_joints_the_corruption_picks():
    """`corrupt_joints` (feeder key): 12 of NW-UCLA's 20 joints keeps the reference's 60 % of 25."""
    x = clips(n=64, t=40, v=20, m=1)
    lengths = torch.full((64,), 40)
    args = {'l_ratio': [1.0, 1.0], 'input_size': 40, 'corrupt_joints': 12}
    view = make_views(x, ('crop_pose',), torch.Generator().manual_seed(3), args, lengths)[0]
    gen = torch.Generator().manual_seed(3)
    crop = cr.draw_random_crop(lengths, gen, (1.0, 1.0))
    maps = cr.draw_pose(64, gen, 20, 12)
    torch.testing.assert_close(view, cr.apply_pose(cr.apply_crop_resize(x, crop, 40), maps))
    eye = torch.eye(3)
    changed = (~torch.isclose(maps, eye).all(dim=(2, 3))).sum(dim=1)
    shear = changed == 20
    assert 10 < int((~shear).sum()) < 54 and (changed[~shear] == 12).all()
    # the default is the reference's 15, which a 20-joint clip also allows
    default = make_views(x, ('crop_pose',), torch.Generator().manual_seed(3), {**args, 'corrupt_joints': 15}, lengths)[0]
    assert torch.equal(default, make_views(x, ('crop_pose',), torch.Generator().manual_seed(3),
                                           {'l_ratio': [1.0, 1.0], 'input_size': 40}, lengths)[0])
    with pytest.raises(ValueError, match='corrupt_joints: joint corruption picks 21 joints, the clips have only 20'):
        make_views(x, ('crop_pose',), torch.Generator().manual_seed(3), {**args, 'corrupt_joints': 21}, lengths)
    with pytest.raises(ValueError, match='corrupt_joints must be a non-negative integer'):
        from feeder.views import check_view_args
        check_view_args({'corrupt_joints': 1.5}, 'train_feeder_args')


def test_lengths_default_to_the_last_non_empty_frame():
    x = clips(n=3, t=30)
    x[0, :, 20:] = 0
    x[1, :, 1:] = 0
    x[2, :, :] = 0
    assert cr.valid_lengths(x).tolist() == [20, 1, 1]
    centre = make_views(x, ('center_crop',), None, {'l_ratio': [1.0], 'input_size': 8})[0]
    torch.testing.assert_close(centre[0], reference_resize(x[0], 0, 20, 8))


def test_bad_lengths_and_settings_are_clear_errors():
    x = clips(n=2, t=30)
    with pytest.raises(ValueError, match=r'lengths must lie in \[1, T=30\]'):
        make_views(x, ('center_crop',), None, {}, torch.tensor([31, 5]))
    with pytest.raises(ValueError, match=r'lengths must have shape \(2,\)'):
        make_views(x, ('center_crop',), None, {}, torch.tensor([3]))
    with pytest.raises(ValueError, match='deterministic centre crop'):
        eval_view({'l_ratio': [0.5, 1.0]}, train=False)
    assert eval_view({'l_ratio': [0.5, 1.0]}, train=True) == 'crop_resize'
    assert eval_view({'l_ratio': [0.95]}, train=True) == 'center_crop'
    assert has_augmentation({'l_ratio': [0.5, 1.0]}) and not has_augmentation({'l_ratio': [0.95]})
