"""AimCLR 50-frame preprocessing and ISC/HiCo normalisation against slow per-sample,
per-frame reference formulations written from the reference descriptions."""

import math
import os
import pickle

import numpy as np
import pytest

import data_tool_fixtures  # noqa: F401  (puts the repo root on sys.path)

from tools import aimclr_preprocess, isc_preprocess, mamp_preprocess
from tools import data_utils as du


# --------------------------------------------------------------------------------------------
# slow references
# --------------------------------------------------------------------------------------------

def opencv_linear_rows(image, out_rows):
    """cv2.resize(image, (width, out_rows), INTER_LINEAR) for an (L, W, C) float32 image whose
    width is unchanged: one output row at a time, OpenCV's coordinate rules."""
    rows = image.shape[0]
    scale = 1.0 / (out_rows / rows)
    out = np.zeros((out_rows,) + image.shape[1:], dtype=np.float32)
    for dy in range(out_rows):
        fy = np.float32((dy + 0.5) * scale - 0.5)
        sy = math.floor(fy)
        fy = np.float32(fy - np.float32(sy))
        if sy < 0:
            sy, fy = 0, np.float32(0)
        if sy >= rows - 1:
            sy, fy = rows - 1, np.float32(0)
        below = min(sy + 1, rows - 1)
        out[dy] = image[sy] * (np.float32(1) - fy) + image[below] * fy
    return out


def aimclr_reference(sample, frames=50):
    """One (3, T, 25, M) sample, body by body and frame by frame."""
    channels, _, joints, bodies = sample.shape
    length = sum(1 for t in range(sample.shape[1]) if np.abs(sample[:, t, 0, 0]).sum() != 0)
    out = np.zeros((channels, frames, joints, bodies), dtype=np.float32)
    for m in range(bodies):
        centred = np.zeros((length, joints, channels), dtype=np.float32)
        for t in range(length):
            for j in range(joints):
                centred[t, j] = sample[:, t, j, m] - sample[:, t, 20, m]
        out[:, :, :, m] = opencv_linear_rows(centred, frames).transpose(2, 0, 1)
        angles, z_sum = [], 0.0
        for t in range(frames):
            v = out[:, t, 8, m] - out[:, t, 4, m]
            v = np.array([v[0], 0.0, v[2]])
            angles.append(math.degrees(math.acos(v[0] / (np.linalg.norm(v) + 1e-4))))
            z_sum += v[2]
        if z_sum >= 0:
            angles = [-a for a in angles]
        for t in range(frames):
            a = math.radians(angles[t])
            rotation = np.array([[math.cos(a), 0, -math.sin(a)], [0, 1, 0],
                                 [math.sin(a), 0, math.cos(a)]])
            for j in range(joints):
                out[:, t, j, m] = rotation @ out[:, t, j, m].astype(np.float64)
    return out


def rodrigues(axis, theta):
    if np.abs(axis).sum() < 1e-6 or abs(theta) < 1e-6:
        return np.eye(3)
    axis = np.asarray(axis, dtype=np.float64) / math.sqrt(np.dot(axis, axis))
    a = math.cos(theta / 2)
    b, c, d = -axis * math.sin(theta / 2)
    return np.array([[a * a + b * b - c * c - d * d, 2 * (b * c + a * d), 2 * (b * d - a * c)],
                     [2 * (b * c - a * d), a * a + c * c - b * b - d * d, 2 * (c * d + a * b)],
                     [2 * (b * d + a * c), 2 * (c * d - a * b), a * a + d * d - b * b - c * c]])


def angle(v, target):
    if np.abs(v).sum() < 1e-6:
        return 0.0
    u = v / np.linalg.norm(v)
    return math.acos(np.clip(np.dot(u, np.asarray(target, dtype=np.float64)), -1, 1))


def isc_reference(data):
    """The 2s-AGCN normaliser, loop by loop, on (N, C, T, V, M)."""
    s = np.ascontiguousarray(data.transpose(0, 4, 2, 3, 1)).astype(np.float32)
    num_frames = s.shape[2]
    for skeleton in s:
        for person in skeleton:
            if person.sum() == 0:
                continue
            if person[0].sum() == 0:
                kept = person[person.sum(-1).sum(-1) != 0].copy()
                person[:] = 0
                person[:len(kept)] = kept
            for f in range(num_frames):
                if person[f].sum() == 0 and person[f:].sum() == 0:
                    for t in range(f, num_frames):
                        person[t] = person[(t - f) % f]
                    break
    for skeleton in s:
        if skeleton.sum() == 0:
            continue
        center = skeleton[0][:, 1:2, :].copy()
        for person in skeleton:
            if person.sum() == 0:
                continue
            mask = (person.sum(-1) != 0)[..., None]
            person[:] = (person - center) * mask
    for bone, target in (((0, 1), (0, 0, 1)), ((4, 8), (1, 0, 0))):
        for skeleton in s:
            if skeleton.sum() == 0:
                continue
            v = skeleton[0, 0, bone[1]] - skeleton[0, 0, bone[0]]
            rotation = rodrigues(np.cross(v, target), angle(v, target))
            for person in skeleton:
                if person.sum() == 0:
                    continue
                for frame in person:
                    if frame.sum() == 0:
                        continue
                    for j in range(len(frame)):
                        frame[j] = rotation @ frame[j]
    return s.transpose(0, 4, 2, 3, 1)


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------

def raw_batch(rng, lengths, num_frames=300, second_body=(True, False)):
    """(N, 3, T, 25, 2) front-aligned buffers of given lengths, some with a second body."""
    batch = np.zeros((len(lengths), 3, num_frames, 25, 2), dtype=np.float32)
    for n, length in enumerate(lengths):
        walk = np.cumsum(rng.normal(scale=0.02, size=(3, length, 25, 2)), axis=1)
        base = rng.normal(scale=0.3, size=(3, 1, 25, 2)) + np.array([0, 0, 3.0])[:, None, None, None]
        batch[n, :, :length] = (base + walk).astype(np.float32)
        if not second_body[n % len(second_body)]:
            batch[n, :, :, :, 1] = 0
    return batch


# --------------------------------------------------------------------------------------------
# AimCLR
# --------------------------------------------------------------------------------------------

def test_resize_taps_known_values():
    low, high, weight = du.linear_resize_taps([25, 50, 1], 50)
    # upsampling x2: dst 0 -> src -0.25 (clamped), dst 1 -> 0.25, dst 2 -> 0.75, dst 49 -> 24.25
    assert (low[0, :3].tolist(), high[0, :3].tolist()) == ([0, 0, 0], [1, 1, 1])
    np.testing.assert_allclose(weight[0, :3], [0, 0.25, 0.75])
    assert (low[0, 49], weight[0, 49]) == (24, 0)
    assert low[1].tolist() == list(range(50)) and not weight[1].any()  # identity
    assert not low[2].any() and not high[2].any()


@pytest.mark.parametrize('lengths', [[300, 50, 17], [1, 2, 123, 299]])
def test_aimclr_matches_per_frame_reference(lengths):
    rng = np.random.default_rng(len(lengths))
    batch = raw_batch(rng, lengths)
    fast = aimclr_preprocess.preprocess_batch(batch, precision='float64')   # angles in float64, as this loop
    default = aimclr_preprocess.preprocess_batch(batch)   # float32 angles (the reference's arithmetic)
    assert fast.shape == (len(lengths), 3, 50, 25, 2) and fast.dtype == np.float32
    for n in range(len(lengths)):
        expected = aimclr_reference(batch[n])
        np.testing.assert_allclose(fast[n], expected, rtol=1e-5, atol=2e-6)
        np.testing.assert_allclose(default[n], expected, rtol=1e-4, atol=1e-5)
    assert not fast[1::2, :, :, :, 1].any()  # absent second body stays zero


def test_aimclr_shoulders_end_parallel_to_x():
    rng = np.random.default_rng(3)
    out = aimclr_preprocess.preprocess_batch(raw_batch(rng, [80]))
    shoulders = out[0, :, :, 8, 0] - out[0, :, :, 4, 0]
    # nearly parallel: the reference's +1e-4 in the arccos leaves a small residual angle
    assert (np.abs(shoulders[2]) < 0.05 * np.abs(shoulders[0])).all()


def write_split(folder, split, data, names, labels, **extra):
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, f'{split}_data.npy'), data)
    with open(os.path.join(folder, f'{split}_label.pkl'), 'wb') as f:
        pickle.dump((names, labels), f)
    for key, value in extra.items():
        np.save(os.path.join(folder, f'{split}_{key}.npy'), value)


def test_aimclr_tool_writes_position_and_label_copy(tmp_path):
    rng = np.random.default_rng(4)
    data = raw_batch(rng, [40, 300, 9])
    data[1, :, 5, 0, 0] = np.nan
    write_split(tmp_path / 'in', 'train', data, ['a', 'b', 'c'], [3, 1, 2])
    write_split(tmp_path / 'in', 'val', data[:1], ['d'], [0])
    args = ['--data_path', str(tmp_path / 'in'), '--out_folder', str(tmp_path / 'out'),
            '--batch_size', '2', '--quiet']
    with pytest.raises(du.DataFormatError, match='b: non-finite'):
        aimclr_preprocess.main(args)
    assert not os.path.exists(tmp_path / 'out') or os.listdir(tmp_path / 'out') == []
    counts = aimclr_preprocess.main(args + ['--on_error', 'skip'])
    assert counts == {'train': 2, 'val': 1}
    position = np.load(tmp_path / 'out' / 'train_position.npy')
    np.testing.assert_array_equal(position, aimclr_preprocess.preprocess_batch(data[[0, 2]]))
    assert du.load_labels(tmp_path / 'out' / 'train_label.pkl') == (['a', 'c'], [3, 2])
    with open(tmp_path / 'in' / 'val_label.pkl', 'rb') as a, \
            open(tmp_path / 'out' / 'val_label.pkl', 'rb') as b:
        assert a.read() == b.read()


def test_aimclr_empty_sample_is_an_error(tmp_path):
    data = raw_batch(np.random.default_rng(5), [10, 10])
    data[1] = 0
    write_split(tmp_path, 'train', data, ['x', 'empty'], [0, 0])
    with pytest.raises(du.DataFormatError, match='empty: no valid frame'):
        aimclr_preprocess.main(['--data_path', str(tmp_path), '--out_folder',
                                str(tmp_path / 'o'), '--splits', 'train', '--quiet'])


# --------------------------------------------------------------------------------------------
# ISC / HiCo
# --------------------------------------------------------------------------------------------

def isc_inputs(rng):
    batch = raw_batch(rng, [30, 40, 12, 7, 20], num_frames=40)
    batch[2, :, :4] = 0                      # leading empty frames -> compaction
    batch[3, :, 2:4, :, 0] = 0               # hole in the middle, frame 0 present
    batch[4, :, :, :, 0] = 0                 # only the second person
    batch[0, :, 3, 7, 0] = 0                 # a single missing joint
    batch = np.concatenate([batch, np.zeros_like(batch[:1])])  # an empty sample
    return batch


def test_isc_matches_loop_reference():
    batch = isc_inputs(np.random.default_rng(6))
    fast = isc_preprocess.normalize_batch(batch)
    np.testing.assert_allclose(fast, isc_reference(batch), rtol=1e-5, atol=1e-6)
    assert not fast[-1].any()


def test_isc_alignment_and_padding_properties():
    batch = isc_inputs(np.random.default_rng(7))
    persons_first = np.ascontiguousarray(batch.transpose(0, 4, 2, 3, 1))
    z_aligned = isc_preprocess.align_bone(
        isc_preprocess.center_on_main_body(isc_preprocess.pad_null_frames(persons_first)),
        isc_preprocess.Z_BONE, (0, 0, 1))
    spine = z_aligned[0, 0, 0, 1] - z_aligned[0, 0, 0, 0]
    np.testing.assert_allclose(spine[:2], 0, atol=1e-6)
    assert spine[2] > 0
    out = isc_preprocess.normalize_batch(batch)
    shoulders = out[0, :, 0, 8, 0] - out[0, :, 0, 4, 0]
    np.testing.assert_allclose(shoulders[1:], 0, atol=1e-5)
    assert shoulders[0] > 0
    # sample 0 has 30 valid frames of 40: frames 30.. repeat frames 0..
    np.testing.assert_array_equal(out[0, :, 30:40], out[0, :, 0:10])
    # every frame of a present person is filled
    assert (np.abs(out[2, :, :, :, 0]).sum(axis=(0, 2)) > 0).all()


def test_isc_tool_num_frame_copied_or_computed(tmp_path):
    batch = isc_inputs(np.random.default_rng(8))
    names = [f's{i}' for i in range(len(batch))]
    write_split(tmp_path / 'a', 'train', batch, names, list(range(len(batch))),
                num_frame=np.arange(len(batch)) + 100)
    write_split(tmp_path / 'b', 'train', batch, names, list(range(len(batch))))
    for folder in ('a', 'b'):
        isc_preprocess.main(['--data_path', str(tmp_path / folder), '--out_folder',
                             str(tmp_path / folder / 'out'), '--splits', 'train', '--quiet'])
    out = np.load(tmp_path / 'a' / 'out' / 'train_data_joint.npy')
    np.testing.assert_array_equal(out, isc_preprocess.normalize_batch(batch))
    assert np.load(tmp_path / 'a' / 'out' / 'train_num_frame.npy').tolist() == list(range(100, 106))
    # computed: last non-empty frame + 1 (sample 3 has a hole but ends at 7)
    assert np.load(tmp_path / 'b' / 'out' / 'train_num_frame.npy').tolist() == [30, 40, 12, 7, 20, 0]


def parallel_skeleton_reference(body):
    """The reference `parallel_skeleton` arithmetic on one (3, T, 25) float32 body: float32
    angle in degrees, per-frame float64 matrix holding float32 cos / sin, float64 product."""
    vec = body[:, :, 8] - body[:, :, 4]
    vec[1, :] = 0
    norm = np.sqrt(np.sum(np.square(vec), axis=0))
    degrees = np.arccos(vec[0, :] / (norm + 0.0001)) * (180 / np.pi)
    if np.sum(vec[2, :]) >= 0:
        degrees = -degrees
    out = np.zeros_like(body)
    for t, theta in enumerate(degrees * np.pi / 180):
        matrix = np.zeros((3, 3))
        matrix[0, 0], matrix[0, 2], matrix[1, 1] = np.cos(theta), -np.sin(theta), 1
        matrix[2, 0], matrix[2, 2] = np.sin(theta), np.cos(theta)
        out[:, t] = np.dot(matrix, body[:, t])
    return out


def test_aimclr_rotation_reproduces_the_reference_float32_arithmetic():
    rng = np.random.default_rng(7)
    resized = rng.normal(scale=0.4, size=(6, 3, 50, 25, 2)).astype(np.float32)
    ours = aimclr_preprocess.parallel_shoulders(resized)              # default: float32 (reference)
    wide = aimclr_preprocess.parallel_shoulders(resized, precision='float64')
    reference = np.stack([np.stack([parallel_skeleton_reference(resized[n, ..., m].copy()) for m in range(2)], -1)
                          for n in range(len(resized))])
    np.testing.assert_array_max_ulp(ours, reference, maxulp=1)
    assert np.abs(wide - reference).max() > 0   # the float64 angle is a different computation
    with pytest.raises(ValueError, match='precision'):
        aimclr_preprocess.parallel_shoulders(resized, precision='float16')


# --------------------------------------------------------------------------------------------
# MAMP (CTR-GCN seq_translation)
# --------------------------------------------------------------------------------------------

def mamp_loop_reference(sample):
    """The original's seq_translation on one (C, T, V, M) sample, frame by frame."""
    x = sample.transpose(1, 3, 2, 0).reshape(sample.shape[1], -1).copy()   # (T, M*V*C) person-major
    i = 0
    while i < len(x) and not np.any(x[i, :75] != 0):
        i += 1
    origin = x[i, 3:6].copy()
    missing = [np.where(x[:, 75 * m:75 * (m + 1)].sum(axis=1) == 0)[0] for m in range(2)]
    for f in range(len(x)):
        x[f] -= np.tile(origin, 50)
    for m in range(2):
        x[missing[m], 75 * m:75 * (m + 1)] = 0
    return x.reshape(sample.shape[1], 2, 25, 3).transpose(3, 0, 2, 1)


def test_mamp_translation_matches_loop_reference(tmp_path):
    rng = np.random.default_rng(11)
    batch = rng.normal(0, 1, (4, 3, 12, 25, 2)).astype(np.float32)
    batch[0, :, :3] = 0          # person 0 starts at frame 3
    batch[1, :, :, :, 1] = 0     # one actor
    batch[2, :, 9:] = 0          # zero padding
    batch[3, :, 5, :, 1] = 0     # a missing frame of the second actor
    fast = mamp_preprocess.translate_batch(batch)
    for n in range(len(batch)):
        np.testing.assert_allclose(fast[n], mamp_loop_reference(batch[n]), atol=1e-6)
    assert not fast[2, :, 9:].any() and not fast[1, :, :, :, 1].any()
    assert np.allclose(fast[0, :, 3, 1, 0], 0)   # the origin itself
    names = [f's{i}' for i in range(4)]
    write_split(tmp_path, 'train', batch, names, [0, 1, 2, 3])
    mamp_preprocess.main(['--data_path', str(tmp_path), '--out_folder', str(tmp_path / 'out'),
                          '--splits', 'train', '--quiet'])
    np.testing.assert_array_equal(np.load(tmp_path / 'out' / 'train_data.npy'), fast)
    assert np.load(tmp_path / 'out' / 'train_num_frame.npy').tolist() == [12, 12, 9, 12]
