"""NTU RGB+D gendata: parsing, body selection, splits, missing list, errors, long sequences."""

import os
import pickle

import numpy as np
import pytest

from data_tool_fixtures import random_body, write_skeleton

from tools import ntu_gendata
from tools.data_utils import DataFormatError

ONE_BODY = 'S001C001P001R001A001'     # xsub train (P001), xview val (C001)
TWO_BODIES = 'S001C002P003R002A002'   # xsub val (P003), xview train (C002)
THREE_BODIES = 'S002C003P004R001A060'  # xsub train (P004), xview train (C003)
MISSING = 'S001C002P005R002A008'      # first name of the official missing list


@pytest.fixture
def raw_ntu(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / 'raw'
    one = [random_body(rng) for _ in range(3)]
    write_skeleton(folder, ONE_BODY, [[b] for b in one])
    first = [random_body(rng) for _ in range(4)]
    second = [random_body(rng, offset=(1, 0, 3)) for _ in range(4)]
    # frame 2 lists only the first body
    write_skeleton(folder, TWO_BODIES,
                   [[first[t], second[t]] if t != 2 else [first[t]] for t in range(4)])
    still = random_body(rng, scale=0.05)  # listed first, tiny and motionless: lowest energy
    small = [random_body(rng, scale=0.5) for _ in range(5)]
    large = [random_body(rng, scale=3.0) for _ in range(5)]
    write_skeleton(folder, THREE_BODIES, [[still, small[t], large[t]] for t in range(5)])
    write_skeleton(folder, MISSING, [[random_body(rng)]])
    return dict(folder=str(folder), one=one, first=first, second=second, still=still,
                small=small, large=large, out=str(tmp_path / 'out'))


def load_part(out, benchmark, part):
    data = np.load(os.path.join(out, benchmark, f'{part}_data.npy'))
    with open(os.path.join(out, benchmark, f'{part}_label.pkl'), 'rb') as f:
        names, labels = pickle.load(f)
    frames = np.load(os.path.join(out, benchmark, f'{part}_num_frame.npy'))
    return data, names, labels, frames


def test_file_order_values_splits_and_labels(raw_ntu):
    counts = ntu_gendata.main(['--data_path', raw_ntu['folder'], '--out_folder', raw_ntu['out'],
                               '--quiet'])
    assert counts == {'xsub/train': 2, 'xsub/val': 1, 'xview/train': 2, 'xview/val': 1}

    data, names, labels, frames = load_part(raw_ntu['out'], 'xsub', 'train')
    assert data.dtype == np.float32 and data.shape == (2, 3, 300, 25, 2)
    assert names == [ONE_BODY + '.skeleton', THREE_BODIES + '.skeleton']  # sorted, missing out
    assert labels == [0, 59]
    assert frames.tolist() == [3, 5]
    for t, body in enumerate(raw_ntu['one']):
        np.testing.assert_array_equal(data[0, :, t, :, 0], body.T)
    assert not data[0, :, 3:].any() and not data[0, :, :, :, 1].any()
    # file order: the still body and the small one, the large third body is dropped
    for t in range(5):
        np.testing.assert_array_equal(data[1, :, t, :, 0], raw_ntu['still'].T)
        np.testing.assert_array_equal(data[1, :, t, :, 1], raw_ntu['small'][t].T)

    data, names, labels, frames = load_part(raw_ntu['out'], 'xsub', 'val')
    assert names == [TWO_BODIES + '.skeleton'] and labels == [1] and frames.tolist() == [4]
    for t in range(4):
        np.testing.assert_array_equal(data[0, :, t, :, 0], raw_ntu['first'][t].T)
        expected_second = raw_ntu['second'][t].T if t != 2 else 0
        np.testing.assert_array_equal(data[0, :, t, :, 1], expected_second)

    _, names, _, _ = load_part(raw_ntu['out'], 'xview', 'train')
    assert names == [TWO_BODIES + '.skeleton', THREE_BODIES + '.skeleton']
    _, names, _, _ = load_part(raw_ntu['out'], 'xview', 'val')
    assert names == [ONE_BODY + '.skeleton']


def test_energy_selection_keeps_two_most_moving_bodies(raw_ntu):
    ntu_gendata.main(['--data_path', raw_ntu['folder'], '--out_folder', raw_ntu['out'],
                      '--body_selection', 'energy', '--benchmark', 'xview', '--quiet'])
    data, names, _, _ = load_part(raw_ntu['out'], 'xview', 'train')
    assert names[1] == THREE_BODIES + '.skeleton'
    for t in range(5):
        np.testing.assert_array_equal(data[1, :, t, :, 0], raw_ntu['large'][t].T)
        np.testing.assert_array_equal(data[1, :, t, :, 1], raw_ntu['small'][t].T)


def test_energy_of_single_body_file_keeps_body_first(raw_ntu):
    ntu_gendata.main(['--data_path', raw_ntu['folder'], '--out_folder', raw_ntu['out'],
                      '--body_selection', 'energy', '--benchmark', 'xview', '--quiet'])
    data, names, _, _ = load_part(raw_ntu['out'], 'xview', 'val')
    np.testing.assert_array_equal(data[0, :, 0, :, 0], raw_ntu['one'][0].T)
    assert not data[0, :, :, :, 1].any()


def test_motion_energy_definition():
    rng = np.random.default_rng(1)
    body = np.zeros((6, 25, 3))
    body[1:4] = rng.normal(size=(3, 25, 3))
    expected = sum(np.std(body[1:4, :, c]) for c in range(3))
    assert ntu_gendata.motion_energy(body) == pytest.approx(expected)
    assert ntu_gendata.motion_energy(np.zeros((4, 25, 3))) == 0.0


def test_missing_lists_are_the_official_sizes():
    ntu60 = ntu_gendata.read_missing_list(ntu_gendata.DEFAULT_MISSING_LIST['ntu60'])
    ntu120 = ntu_gendata.read_missing_list(ntu_gendata.DEFAULT_MISSING_LIST['ntu120'])
    assert len(ntu60) == 302 and len(ntu120) == 535 and ntu60 <= ntu120
    assert MISSING in ntu60 and 'S032C003P067R002A077' in ntu120


def test_ntu120_xset_and_subject_protocol():
    fields = ntu_gendata.parse_sample_name('S018C001P045R001A061')
    assert ntu_gendata.is_training('xset', fields, 'ntu120')
    assert ntu_gendata.is_training('xsub', fields, 'ntu120')
    assert not ntu_gendata.is_training('xsub', dict(fields, performer=44), 'ntu120')
    assert not ntu_gendata.is_training('xset', dict(fields, setup=17), 'ntu120')
    assert len(ntu_gendata.TRAIN_SUBJECTS_120) == 53


def test_long_sequence_policies(tmp_path):
    rng = np.random.default_rng(2)
    frames = [random_body(rng) for _ in range(7)]
    write_skeleton(tmp_path / 'raw', ONE_BODY, [[b] for b in frames])
    common = ['--data_path', str(tmp_path / 'raw'), '--max_frame', '4', '--benchmark', 'xsub',
              '--quiet']
    ntu_gendata.main(common + ['--out_folder', str(tmp_path / 'centre')])
    data, _, _, counts = load_part(str(tmp_path / 'centre'), 'xsub', 'train')
    assert data.shape[2] == 4 and counts.tolist() == [4]
    for t in range(4):  # centre window of 7 -> frames 1..4
        np.testing.assert_array_equal(data[0, :, t, :, 0], frames[t + 1].T)
    with pytest.raises(DataFormatError, match=ONE_BODY):
        ntu_gendata.main(common + ['--out_folder', str(tmp_path / 'err'),
                                   '--long_sequences', 'error'])


@pytest.mark.parametrize('corruption, message', [
    (lambda text: text[:len(text) // 2], 'truncated'),
    (lambda text: text.replace('\n25\n', '\n24\n', 1), '24 joints'),
    (lambda text: text.replace(text.split('\n')[4].split()[0], 'nan', 1), 'non-finite'),
    (lambda text: '0\n', 'empty'),
    (lambda text: '2\n0\n0\n', 'no body'),
])
def test_corrupt_files_raise_with_name_or_are_skipped(raw_ntu, corruption, message):
    path = os.path.join(raw_ntu['folder'], TWO_BODIES + '.skeleton')
    with open(path) as f:
        text = f.read()
    with open(path, 'w') as f:
        f.write(corruption(text))
    out = raw_ntu['out']
    with pytest.raises(DataFormatError, match=message) as error:
        ntu_gendata.main(['--data_path', raw_ntu['folder'], '--out_folder', out, '--quiet'])
    assert TWO_BODIES in str(error.value)
    leftovers = [f for _, _, files in os.walk(out) for f in files] if os.path.exists(out) else []
    assert leftovers == []  # nothing half-written

    counts = ntu_gendata.main(['--data_path', raw_ntu['folder'], '--out_folder', out,
                               '--on_error', 'skip', '--quiet'])
    assert counts == {'xsub/train': 2, 'xsub/val': 0, 'xview/train': 1, 'xview/val': 1}
    data, names, labels, _ = load_part(out, 'xview', 'train')
    assert names == [THREE_BODIES + '.skeleton'] and labels == [59] and data.shape[0] == 1
    np.testing.assert_array_equal(data[0, :, 0, :, 0], raw_ntu['still'].T)
    assert sorted(os.listdir(os.path.join(out, 'xsub'))) == [
        'train_data.npy', 'train_label.pkl', 'train_num_frame.npy',
        'val_data.npy', 'val_label.pkl', 'val_num_frame.npy']
