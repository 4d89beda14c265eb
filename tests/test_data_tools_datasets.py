"""PKU-MMD, NW-UCLA and custom converters on small inputs in the official formats."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_tool_fixtures import REPO_ROOT, write_json

from tools import custom_gendata, nw_ucla_gendata, pku_gendata
from tools import data_utils as du


def load_split(folder, split, data_name='data'):
    data = np.load(os.path.join(folder, f'{split}_{data_name}.npy'))
    return data, du.load_labels(os.path.join(folder, f'{split}_label.pkl'))


# --------------------------------------------------------------------------------------------
# PKU-MMD
# --------------------------------------------------------------------------------------------

def write_pku(root, part, recordings, train_ids, test_ids):
    """`recordings`: {id: (frames (T, 150), [(class, start, end)])}."""
    for folder in ('skeleton', 'label', 'split'):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    for recording, (frames, rows) in recordings.items():
        np.savetxt(os.path.join(root, 'skeleton', recording + '.txt'), frames, fmt='%.6f')
        with open(os.path.join(root, 'label', recording + '.txt'), 'w') as f:
            f.writelines(f'{c},{s},{e},1\n' for c, s, e in rows)
    for name in pku_gendata.SPLIT_FILES[part].values():
        with open(os.path.join(root, 'split', name), 'w') as f:
            f.write('Training videos: \n' + ', '.join(train_ids) + ',\n'
                    'Validation videos: \n' + ', '.join(test_ids) + '\n')


def pku_args(root, out, part):
    return ['--part', str(part), '--skeleton_path', os.path.join(root, 'skeleton'),
            '--label_path', os.path.join(root, 'label'), '--split_path', os.path.join(root, 'split'),
            '--out_folder', out, '--quiet']


def recording_frames(rng, num_frames, second_body_frames=()):
    frames = np.round(rng.normal(size=(num_frames, 150)), 6)
    mask = np.zeros(num_frames, bool)
    mask[list(second_body_frames)] = True
    frames[~mask, 75:] = 0
    return frames


def expected_instance(frames):
    bodies = frames.reshape(len(frames), 2, 25, 3).astype(np.float32)
    return bodies.transpose(3, 0, 2, 1)


def test_pku_part1_instances_splits_labels(tmp_path):
    rng = np.random.default_rng(0)
    a = recording_frames(rng, 20, second_body_frames=range(5, 9))
    b = recording_frames(rng, 12)
    write_pku(tmp_path, 1, {'0002-L': (a, [(5, 3, 10), (51, 6, 8)]), '0003-M': (b, [(1, 1, 12)])},
              train_ids=['0002-L'], test_ids=['0003-M'])
    counts = pku_gendata.main(pku_args(str(tmp_path), str(tmp_path / 'out'), 1))
    assert counts['xsub/train'] == 2 and counts['xsub/val'] == 1
    data, (names, labels) = load_split(tmp_path / 'out' / 'xsub', 'train')
    assert data.shape == (2, 3, 300, 25, 2)
    assert names == ['F002V001C005L001.skeleton', 'F002V001C051L002.skeleton']
    assert labels == [4, 50]
    np.testing.assert_array_equal(data[0, :, :8], expected_instance(a[2:10]))
    assert not data[0, :, 8:].any()
    np.testing.assert_array_equal(data[1, :, :3], expected_instance(a[5:8]))
    assert data[0, :, 3:7, :, 1].any() and not data[0, :, :3, :, 1].any()
    data, (names, labels) = load_split(tmp_path / 'out' / 'xview', 'val')
    assert names == ['F003V002C001L001.skeleton'] and labels == [0]
    np.testing.assert_array_equal(data[0, :, :12], expected_instance(b))
    assert np.load(tmp_path / 'out' / 'xsub' / 'train_num_frame.npy').tolist() == [8, 3]


def test_pku_part2_names_and_centre_crop(tmp_path):
    rng = np.random.default_rng(1)
    frames = recording_frames(rng, 30)
    write_pku(tmp_path, 2, {'A01N02-R': (frames, [(7, 1, 30)])}, ['A05N01-L'], ['A01N02-R'])
    pku_gendata.main(pku_args(str(tmp_path), str(tmp_path / 'out'), 2)
                     + ['--max_frame', '10', '--benchmark', 'xsub'])
    data, (names, labels) = load_split(tmp_path / 'out' / 'xsub', 'val')
    assert names == ['A001N002V003C007L001.skeleton'] and labels == [6]
    np.testing.assert_array_equal(data[0], expected_instance(frames[10:20]))


def test_pku_errors(tmp_path):
    rng = np.random.default_rng(2)
    good = recording_frames(rng, 10)
    bad = recording_frames(rng, 10)
    write_pku(tmp_path, 1, {'0002-L': (good, [(2, 1, 5)]), '0004-R': (bad, [(3, 1, 4), (4, 11, 12)])},
              ['0002-L'], ['0004-R'])
    with pytest.raises(du.DataFormatError, match='F004V003C004L002.*starts at frame 11'):
        pku_gendata.main(pku_args(str(tmp_path), str(tmp_path / 'out'), 1))
    assert not os.path.exists(tmp_path / 'out' / 'xsub' / 'train_data.npy')
    counts = pku_gendata.main(pku_args(str(tmp_path), str(tmp_path / 'out'), 1)
                              + ['--on_error', 'skip'])
    assert counts['xsub/val'] == 1
    with open(tmp_path / 'skeleton' / '0004-R.txt', 'a') as f:
        f.write('1.0 2.0\n')  # truncated row
    with pytest.raises(du.DataFormatError, match='0004-R.txt.*2 numbers'):
        pku_gendata.main(pku_args(str(tmp_path), str(tmp_path / 'o2'), 1))
    with open(tmp_path / 'split' / 'cross-view.txt', 'w') as f:
        f.write('train\n0002-L\ntest\n0002-L\n')
    with pytest.raises(du.DataFormatError, match='both'):
        pku_gendata.main(pku_args(str(tmp_path), str(tmp_path / 'o3'), 1))


# --------------------------------------------------------------------------------------------
# NW-UCLA
# --------------------------------------------------------------------------------------------

def write_ucla(folder, name, label, frames):
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, name + '.json'),
               {'file_name': name, 'label': label, 'skeletons': np.asarray(frames).tolist()})


def test_nw_ucla_cross_view_centring_and_resize(tmp_path):
    rng = np.random.default_rng(3)
    seq = {name: np.round(rng.normal(size=(t, 20, 3)), 5)
           for name, t in [('a01_s01_e00_v01', 25), ('a12_s02_e01_v02', 50), ('a08_s03_e00_v03', 1)]}
    labels = {'a01_s01_e00_v01': 1, 'a12_s02_e01_v02': 10, 'a08_s03_e00_v03': 7}
    for name, frames in seq.items():
        write_ucla(tmp_path / 'json', name, labels[name], frames)
    counts = nw_ucla_gendata.main(['--data_path', str(tmp_path / 'json'), '--out_folder',
                                   str(tmp_path / 'out'), '--quiet'])
    assert counts['train']['samples'] == 2 and counts['val']['samples'] == 1
    assert counts['train']['per_class'] == [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    data, (names, out_labels) = load_split(tmp_path / 'out', 'train')
    assert data.shape == (2, 3, 50, 20, 1) and data.dtype == np.float32
    assert names == ['a01_s01_e00_v01', 'a12_s02_e01_v02'] and out_labels == [0, 9]
    centred = (seq['a12_s02_e01_v02'] - seq['a12_s02_e01_v02'][:, 2:3]).astype(np.float32)
    np.testing.assert_allclose(data[1, :, :, :, 0], centred.transpose(2, 0, 1), atol=1e-6)
    short = (seq['a01_s01_e00_v01'] - seq['a01_s01_e00_v01'][:, 2:3]).astype(np.float32)
    # 25 -> 50 frames: output frame 1 = 0.75 * frame 0 + 0.25 * frame 1
    np.testing.assert_allclose(data[0, :, 1, :, 0], (0.75 * short[0] + 0.25 * short[1]).T,
                               atol=1e-6)
    val, (names, out_labels) = load_split(tmp_path / 'out', 'val')
    assert names == ['a08_s03_e00_v03'] and out_labels == [6]
    single = (seq['a08_s03_e00_v03'][0] - seq['a08_s03_e00_v03'][0, 2]).astype(np.float32)
    np.testing.assert_allclose(val[0, :, :, :, 0], np.broadcast_to(single.T[:, None], (3, 50, 20)),
                               atol=1e-6)  # one frame resized to 50 copies of it
    meta = json.loads((tmp_path / 'out' / 'meta.json').read_text())
    assert meta['layout'] == 'nw-ucla' and meta['length'] == 50
    assert meta['classes'][:2] == ['pick up with one hand', 'pick up with two hands'] and len(meta['classes']) == 10


def test_nw_ucla_pad_without_centring(tmp_path):
    rng = np.random.default_rng(4)
    frames = np.round(rng.normal(size=(7, 20, 3)), 5)
    write_ucla(tmp_path / 'json', 'a02_s01_e00_v01', 2, frames)
    nw_ucla_gendata.main(['--data_path', str(tmp_path / 'json'), '--out_folder',
                          str(tmp_path / 'out'), '--temporal', 'pad', '--length', '10',
                          '--no_center', '--quiet'])
    data, _ = load_split(tmp_path / 'out', 'train')
    np.testing.assert_array_equal(data[0, :, :7, :, 0], frames.astype(np.float32).transpose(2, 0, 1))
    assert not data[0, :, 7:].any()


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def canonical_body(rng, num_frames):
    """A clip already in its body frame: hips and shoulders left (-x) / right (+x), shoulder
    centre straight above the hip centre (+y), every frame (other joints random)."""
    frames = rng.normal(scale=0.3, size=(num_frames, 20, 3))
    frames[:, 0] = 0.0
    frames[:, 2] = [0.0, 0.5, 0.0]
    for left, right, height in ((4, 8, 0.5), (12, 16, 0.0)):
        frames[:, left] = [-0.2, height, 0.0]
        frames[:, right] = [0.2, height, 0.0]
    return frames


def test_nw_ucla_view_normalise_undoes_the_camera(tmp_path):
    """A body-frame clip seen by a rotated (azimuth and tilt) and shifted camera comes back to the
    body frame (then centred on joint 2); the rotation is proper, so left stays left."""
    rng = np.random.default_rng(5)
    body = canonical_body(rng, 6)
    rotation, shift = random_rotation(rng), rng.normal(size=3)
    camera = body @ rotation.T + shift
    write_ucla(tmp_path / 'json', 'a01_s01_e00_v01', 1, camera)
    meta_args = ['--data_path', str(tmp_path / 'json'), '--length', '6', '--temporal', 'pad', '--quiet']
    nw_ucla_gendata.main(meta_args + ['--out_folder', str(tmp_path / 'body'), '--view_normalise', 'body'])
    nw_ucla_gendata.main(meta_args + ['--out_folder', str(tmp_path / 'camera')])
    data, _ = load_split(tmp_path / 'body', 'train')
    expected = (body - body[:, 2:3]).transpose(2, 0, 1)
    np.testing.assert_allclose(data[0, :, :, :, 0], expected, atol=1e-5)
    plain, _ = load_split(tmp_path / 'camera', 'train')
    assert np.abs(plain[0, :, :, :, 0] - expected).max() > 0.05   # the default keeps camera coordinates
    assert json.loads((tmp_path / 'body' / 'meta.json').read_text())['view_normalise'] == 'body'


def test_body_frame_is_a_proper_rotation_and_identity_when_degenerate():
    rng = np.random.default_rng(6)
    clip = canonical_body(rng, 4) @ random_rotation(rng).T
    frame = du.body_frame(clip, (0, 2), ((4, 8), (12, 16)))
    np.testing.assert_allclose(frame @ frame.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(frame) == pytest.approx(1.0)
    # the mirror image of the clip gets the mirrored axes, not the same ones
    mirrored = clip * [-1, 1, 1]
    assert not np.allclose(du.body_frame(mirrored, (0, 2), ((4, 8), (12, 16))), frame)
    np.testing.assert_array_equal(du.body_frame(np.zeros((3, 20, 3)), (0, 2), ((4, 8), (12, 16))), np.eye(3))
    upright_only = np.zeros((3, 20, 3))
    upright_only[:, 2, 1] = 1.0   # no left-right extent: no azimuth to remove
    np.testing.assert_array_equal(du.body_frame(upright_only, (0, 2), ((4, 8), (12, 16))), np.eye(3))


@pytest.mark.parametrize('record, message', [
    ({'label': 3, 'skeletons': [[[0, 0, 0]] * 20]}, 'does not match action'),
    ({'label': 1, 'skeletons': []}, 'empty'),
    ({'label': 1, 'skeletons': [[[0, 0, 0]] * 19]}, '19, 3'),
    ({'label': 1, 'skeletons': [[[float('nan'), 0, 0]] * 20]}, 'non-finite'),
])
def test_nw_ucla_invalid_files(tmp_path, record, message):
    write_ucla(tmp_path / 'json', 'a02_s01_e00_v01', 2, np.ones((3, 20, 3)))
    write_json(str(tmp_path / 'json' / 'a01_s01_e00_v03.json'),
               dict(record, file_name='a01_s01_e00_v03'))
    args = ['--data_path', str(tmp_path / 'json'), '--out_folder', str(tmp_path / 'out'), '--quiet']
    with pytest.raises(du.DataFormatError, match=message):
        nw_ucla_gendata.main(args)
    assert not os.path.exists(tmp_path / 'out')
    counts = nw_ucla_gendata.main(args + ['--on_error', 'skip'])
    assert counts['train']['samples'] == 1 and counts['val']['samples'] == 0


def shared_root():
    return os.environ.get('SKELETON_SSL_SHARED') or os.path.join(REPO_ROOT, '..', 'shared')


@pytest.mark.skipif(not os.path.isdir(os.path.join(shared_root(), 'data', 'nw-ucla', 'all_sqe')),
                    reason='shared NW-UCLA copy not available')
def test_nw_ucla_real_dataset_counts(tmp_path):
    counts = nw_ucla_gendata.main(['--data_path', os.path.join(shared_root(), 'data', 'nw-ucla',
                                                               'all_sqe'),
                                   '--out_folder', str(tmp_path), '--quiet'])
    assert counts['train']['samples'] == 1020 and counts['val']['samples'] == 464
    assert sum(counts['train']['per_class']) == 1020 and min(counts['val']['per_class']) > 0


# --------------------------------------------------------------------------------------------
# custom
# --------------------------------------------------------------------------------------------

def test_custom_npy_and_csv_with_split_and_class_names(tmp_path):
    rng = np.random.default_rng(5)
    folder = tmp_path / 'seq'
    folder.mkdir()
    one = rng.normal(size=(4, 5, 3)).astype(np.float32)            # (T, V, C)
    two = rng.normal(size=(6, 2, 5, 3)).astype(np.float32)         # (T, M, V, C)
    np.save(folder / 'walk_01.npy', one)
    np.save(folder / 'hug_01.npy', two)
    csv_frames = np.round(rng.normal(size=(3, 15)), 5)
    header = ','.join(f'j{j}_{c}' for j in range(5) for c in 'xyz')
    np.savetxt(folder / 'walk_02.csv', csv_frames, delimiter=',', header=header, comments='')
    np.save(folder / 'unlisted.npy', one)
    (tmp_path / 'labels.csv').write_text(
        'name,label,split\nwalk_01,walk,train\nhug_01,hug,train\nwalk_02,walk,test\n')
    counts = custom_gendata.main([
        '--data_path', str(folder), '--labels', str(tmp_path / 'labels.csv'),
        '--out_folder', str(tmp_path / 'out'), '--num_joints', '5', '--num_persons', '2',
        '--length', '8', '--layout', 'my-5-joint', '--quiet'])
    assert counts == {'test': 1, 'train': 2}
    data, (names, labels) = load_split(tmp_path / 'out', 'train')
    assert data.shape == (2, 3, 8, 5, 2)
    assert names == ['hug_01', 'walk_01'] and labels == [0, 1]
    np.testing.assert_array_equal(data[0, :, :6], two.transpose(3, 0, 2, 1))
    np.testing.assert_array_equal(data[1, :, :4, :, 0], one.transpose(2, 0, 1))
    assert not data[1, :, :, :, 1].any() and not data[1, :, 4:].any()
    data, (names, labels) = load_split(tmp_path / 'out', 'test')
    np.testing.assert_array_equal(
        data[0, :, :3, :, 0], csv_frames.reshape(3, 5, 3).astype(np.float32).transpose(2, 0, 1))
    meta = json.loads((tmp_path / 'out' / 'meta.json').read_text())
    assert meta['layout'] == 'my-5-joint' and meta['classes'] == ['hug', 'walk']
    assert meta['num_joints'] == 5 and meta['num_persons'] == 2 and meta['counts'] == counts


def test_custom_integer_labels_resize_centre_and_errors(tmp_path):
    folder = tmp_path / 'seq'
    folder.mkdir()
    ramp = np.zeros((2, 4, 3), dtype=np.float32)
    ramp[1] = 1.0
    ramp[:, 0] = 0.5
    np.save(folder / 'a.npy', ramp)
    np.save(folder / 'bad.npy', np.zeros((3, 7, 3), dtype=np.float32))  # wrong joint count
    (tmp_path / 'labels.csv').write_text('name,label\na,1\nbad,2\nmissing,1\n')
    args = ['--data_path', str(folder), '--labels', str(tmp_path / 'labels.csv'),
            '--out_folder', str(tmp_path / 'out'), '--num_joints', '4', '--length', '4',
            '--temporal', 'resize', '--center_joint', '0', '--one_based', '--quiet']
    with pytest.raises(du.DataFormatError, match='bad: frames of 7 joints'):
        custom_gendata.main(args)
    counts = custom_gendata.main(args + ['--on_error', 'skip'])
    assert counts == {'train': 1}
    data, (names, labels) = load_split(tmp_path / 'out', 'train')
    assert names == ['a'] and labels == [0]
    # centred: joint 0 -> 0, others -0.5 then +0.5; resize 2 -> 4: weights 0, .25, .75, 1
    np.testing.assert_allclose(data[0, :, :, 1, 0], [[-0.5, -0.25, 0.25, 0.5]] * 3)
    assert not data[0, :, :, 0].any()


# --------------------------------------------------------------------------------------------
# command lines
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('tool', ['ntu_gendata', 'aimclr_preprocess', 'isc_preprocess', 'mamp_preprocess',
                                  'pku_gendata', 'nw_ucla_gendata', 'custom_gendata'])
def test_every_tool_has_help(tool):
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, 'tools', f'{tool}.py'),
                             '--help'], capture_output=True, text=True, check=True)
    assert '--on_error' in result.stdout and 'usage' in result.stdout
