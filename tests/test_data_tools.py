"""Shared data-tool helpers: atomic outputs, streamed .npy rows, labels, resize, rotations."""

import os
import pickle

import numpy as np
import pytest

import data_tool_fixtures  # noqa: F401  (puts the repo root on sys.path)

from tools import data_utils as du


def test_row_writer_squeezes_out_skipped_rows_and_shrinks_file(tmp_path):
    path = tmp_path / 'rows.npy'
    with du.AtomicOutputs() as outputs:
        writer = outputs.row_writer(path, 6, (2, 3))
        for index in (0, 2, 3, 5):
            writer.write(index, np.full((2, 3), index, dtype=np.float32))
        assert not path.exists()  # only the temporary name exists until the commit
    array = np.load(path)
    assert array.shape == (4, 2, 3) and array[:, 0, 0].tolist() == [0, 2, 3, 5]
    assert writer.kept.tolist() == [0, 2, 3, 5]
    assert os.listdir(tmp_path) == ['rows.npy']
    assert np.load(path, mmap_mode='r').shape == (4, 2, 3)


def test_row_writer_with_no_rows(tmp_path):
    with du.AtomicOutputs() as outputs:
        outputs.row_writer(tmp_path / 'empty.npy', 0, (3, 4))
    assert np.load(tmp_path / 'empty.npy').shape == (0, 3, 4)


def test_failed_run_leaves_nothing_and_keeps_earlier_outputs(tmp_path):
    np.save(tmp_path / 'old.npy', np.arange(3))
    with pytest.raises(RuntimeError):
        with du.AtomicOutputs() as outputs:
            outputs.save_npy(tmp_path / 'old.npy', np.zeros(5))
            writer = outputs.row_writer(tmp_path / 'big.npy', 10, (4,))
            writer.write(0, np.ones(4))
            outputs.save_labels(tmp_path / 'labels.pkl', ['a'], [0])
            raise RuntimeError('interrupted')
    assert sorted(os.listdir(tmp_path)) == ['old.npy']
    assert np.load(tmp_path / 'old.npy').tolist() == [0, 1, 2]


def test_label_pickle_format(tmp_path):
    with du.AtomicOutputs() as outputs:
        outputs.save_labels(tmp_path / 'l.pkl', ('x.skeleton', 'y.skeleton'), np.array([3, 0]))
    with open(tmp_path / 'l.pkl', 'rb') as f:
        names, labels = pickle.load(f)
    assert names == ['x.skeleton', 'y.skeleton'] and labels == [3, 0]
    assert all(type(v) is int for v in labels)
    with pytest.raises(ValueError):
        du.label_tuple(['a'], [-1])


def test_error_policy():
    policy = du.ErrorPolicy('skip')
    policy.handle('file_a', ValueError('broken'))
    assert policy.skipped == [('file_a', 'broken')]
    with pytest.raises(du.DataFormatError, match='file_b: broken'):
        du.ErrorPolicy('raise').handle('file_b', ValueError('broken'))


def test_fit_frames_policies():
    seq = np.arange(10)
    assert du.fit_frames(seq, 12, 'error')[0].tolist() == list(range(10))
    assert du.fit_frames(seq, 4, 'crop_center')[0].tolist() == [3, 4, 5, 6]
    assert du.fit_frames(seq, 4, 'crop_head')[0].tolist() == [0, 1, 2, 3]
    with pytest.raises(du.DataFormatError, match='10 frames exceed'):
        du.fit_frames(seq, 4, 'error')


def test_resize_frames_downsample_matches_hand_values():
    x = np.arange(4, dtype=np.float32).reshape(1, 4, 1)  # 4 -> 2 rows: src 0.5 and 2.5
    np.testing.assert_allclose(du.resize_frames(x, [4], 2, axis=1)[0, :, 0], [0.5, 2.5])
    # only the first L rows of each sample are used
    x = np.array([[0, 10, 99, 99]], dtype=np.float32)[..., None]
    np.testing.assert_allclose(du.resize_frames(x, [2], 4, axis=1)[0, :, 0], [0, 2.5, 7.5, 10])


def test_rotation_helpers():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(5, 3))
    for target in ((0, 0, 1), (1, 0, 0)):
        rotated = np.einsum('nij,nj->ni', du.aligning_rotations(vectors, target), vectors)
        expected = np.linalg.norm(vectors, axis=1, keepdims=True) * np.asarray(target)
        np.testing.assert_allclose(rotated, expected, atol=1e-12)
    assert np.array_equal(du.aligning_rotations(np.zeros((1, 3)), (0, 0, 1))[0], np.eye(3))
    xyz = np.array([1.0, 2.0, 0.0])
    np.testing.assert_allclose(du.rotate_about_y(xyz, np.pi / 2), [0, 2, 1], atol=1e-12)


def test_center_on_joint_keeps_absent_skeletons_zero():
    seq = np.zeros((2, 2, 3, 3))  # (T, M, V, C)
    seq[:, 0] = [[1, 1, 1], [2, 2, 2], [3, 3, 3]]
    out = du.center_on_joint(seq, 1)
    assert out[:, 0, :, 0].tolist() == [[-1, 0, 1]] * 2 and not out[:, 1].any()
