"""Tests of the built-in demo dataset generator (tools/make_demo_data.py) and its plotter."""
import hashlib
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:          # lets a bare `pytest` (not `python -m pytest`) import tools/
    sys.path.insert(0, REPO)

from tools import make_demo_data as demo  # noqa: E402
NUM_CLASSES = demo.NUM_CLASSES


@pytest.fixture(scope='module')
def small():
    """A small dataset, generated once for the module."""
    return demo.generate_dataset(num_train=240, num_val=120, frames=50, seed=0)


@pytest.fixture(scope='module')
def clean():
    """The same kind of clips without sensor noise: the pure kinematic model."""
    return demo.generate_dataset(num_train=60, num_val=24, frames=40, seed=3, noise_std=0.0)


def digest(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def test_shapes_dtypes_and_labels(small):
    for split, count in (('train', 240), ('val', 120)):
        part = small[split]
        assert part['data'].shape == (count, 3, 50, 25, 2)
        assert part['data'].dtype == np.float32
        assert np.isfinite(part['data']).all()
        assert len(part['names']) == len(part['labels']) == count
        assert all(isinstance(x, int) for x in part['labels'])
        assert sorted(set(part['labels'])) == list(range(NUM_CLASSES))   # every class in both splits
    names = small['train']['names'] + small['val']['names']
    assert len(set(names)) == len(names)
    assert all(n.startswith('demo_S') and 'P' in n and 'A' in n for n in names)


def test_at_least_eight_classes():
    assert NUM_CLASSES >= 8 and len(set(demo.CLASS_NAMES)) == NUM_CLASSES


def test_camera_space_ranges(small):
    body = small['train']['data'][..., 0]                  # (N, 3, T, V)
    depth = body[:, 2, :, demo.SPINE_BASE]
    assert 2.0 < depth.min() and depth.max() < 4.5
    # Head above spine base above feet, in every clip on average (y is up).
    head = body[:, 1, :, demo.HEAD].mean(1)
    base = body[:, 1, :, demo.SPINE_BASE].mean(1)
    feet = body[:, 1, :, [demo.L_FOOT, demo.R_FOOT]].mean((0, 2))
    assert (head > base + 0.4).all() and (base > feet + 0.6).all()


def test_determinism():
    a = demo.generate_dataset(num_train=36, num_val=24, frames=30, seed=7)
    b = demo.generate_dataset(num_train=36, num_val=24, frames=30, seed=7)
    c = demo.generate_dataset(num_train=36, num_val=24, frames=30, seed=8)
    for split in ('train', 'val'):
        assert digest(a[split]['data']) == digest(b[split]['data'])
        assert a[split]['names'] == b[split]['names'] and a[split]['labels'] == b[split]['labels']
        assert not np.array_equal(a[split]['data'], c[split]['data'])


def test_second_body_zero_unless_present(small):
    for split in ('train', 'val'):
        data, subjects = small[split]['data'], small[split]['subjects']
        second = data[..., 1].reshape(len(data), -1)
        single = subjects[:, 1] == 0
        assert (second[single] == 0).all()                 # exactly zero, like NTU
        assert (np.abs(second[~single]).sum(1) > 0).all()
        assert 0.15 < (~single).mean() < 0.45              # about 30% two-person clips


def bone_lengths(body):
    """body (3, T, V) -> (T, bones) lengths of the NTU bone list."""
    child = [c - 1 for c, _ in demo.NTU_BONES]
    parent = [p - 1 for _, p in demo.NTU_BONES]
    return np.linalg.norm(body[:, :, child] - body[:, :, parent], axis=0)


def test_bone_lengths_constant_without_noise(clean):
    """Forward kinematics keeps every NTU bone rigid, in both bodies, whatever the motion."""
    for split in ('train', 'val'):
        data, subjects = clean[split]['data'], clean[split]['subjects']
        for i in range(len(data)):
            for m in range(1 + int(subjects[i, 1] > 0)):
                lengths = bone_lengths(data[i, ..., m].astype(np.float64))
                assert np.ptp(lengths, axis=0).max() < 1e-4      # float32 rounding only
                assert lengths.min() > 0.02


def test_bone_lengths_constant_within_noise(small):
    noise = demo.NOISE_STD * demo.EXTREMITY_NOISE
    for i in range(0, 240, 7):
        lengths = bone_lengths(small['train']['data'][i, ..., 0].astype(np.float64))
        assert lengths.std(axis=0).max() < 2.5 * noise


def test_bone_lengths_follow_the_subject(clean):
    """Clips of the same subject share bone lengths; other subjects differ."""
    data, subjects = clean['train']['data'], clean['train']['subjects']
    mean_lengths = np.stack([bone_lengths(data[i, ..., 0].astype(np.float64)).mean(0)
                             for i in range(len(data))])
    same = [(i, j) for i in range(len(data)) for j in range(i) if subjects[i, 0] == subjects[j, 0]]
    other = [(i, j) for i in range(len(data)) for j in range(i) if subjects[i, 0] != subjects[j, 0]]
    assert same and other
    gap = lambda pairs: np.mean([np.abs(mean_lengths[i] - mean_lengths[j]).max() for i, j in pairs])
    assert gap(same) < 1e-4 < gap(other)


def test_subjects_disjoint_between_splits(small):
    train = set(small['train']['subjects'].ravel()) - {0}
    val = set(small['val']['subjects'].ravel()) - {0}
    assert train and val and not train & val
    assert train <= set(demo.TRAIN_SUBJECTS) and val <= set(demo.TEST_SUBJECTS)
    # The P### field of the sample name is the main actor.
    for split in ('train', 'val'):
        for name, subject in zip(small[split]['names'], small[split]['subjects'][:, 0]):
            assert f'P{subject:03d}' in name


def features(data):
    """Temporal std of a few joints relative to the spine base, plus the vertical motion."""
    body = data[..., 0].astype(np.float64)
    relative = body - body[:, :, :, [demo.SPINE_BASE]]
    joints = [demo.HEAD, demo.L_HAND, demo.R_HAND, demo.L_FOOT, demo.R_FOOT]
    spread = relative[:, :, :, joints].std(axis=2).reshape(len(data), -1)
    return np.concatenate([spread, body[:, 1, :, demo.SPINE_BASE].std(1, keepdims=True)], 1)


def test_nearest_centroid_cross_subject_is_well_above_chance(small):
    train_x, val_x = features(small['train']['data']), features(small['val']['data'])
    train_y, val_y = np.array(small['train']['labels']), np.array(small['val']['labels'])
    mean, std = train_x.mean(0), train_x.std(0) + 1e-9
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    centroids = np.stack([train_x[train_y == c].mean(0) for c in range(NUM_CLASSES)])
    predicted = ((val_x[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    accuracy = (predicted == val_y).mean()
    assert accuracy > 3.0 / NUM_CLASSES, accuracy


# ----------------------------------------------------------------------------- CLI and files
def run_cli(*args):
    return demo.main(['--num_train', '36', '--num_val', '24', '--frames', '20', *args])


def test_cli_writes_the_standard_format(tmp_path):
    out = tmp_path / 'demo'
    assert run_cli('--out_folder', str(out), '--seed', '5') == 0
    assert sorted(os.listdir(out)) == sorted(demo.OUTPUT_FILES)      # no temporary files left
    for split, count in (('train', 36), ('val', 24)):
        data = np.load(out / f'{split}_data.npy')
        assert data.shape == (count, 3, 20, 25, 2) and data.dtype == np.float32
        with open(out / f'{split}_label.pkl', 'rb') as f:
            names, labels = pickle.load(f)
        assert isinstance(names, list) and isinstance(labels, list) and len(names) == count
        assert min(labels) == 0 and max(labels) == NUM_CLASSES - 1
    classes = (out / 'classes.txt').read_text().splitlines()
    assert classes == list(demo.CLASS_NAMES)
    meta = json.loads((out / 'meta.json').read_text())
    assert meta['layout'] == 'ntu-rgb+d' and meta['seed'] == 5
    assert meta['num_train'] == 36 and meta['num_val'] == 24 and meta['num_class'] == NUM_CLASSES
    assert meta['generator_version'] == demo.GENERATOR_VERSION


def test_cli_same_seed_same_bytes(tmp_path):
    for name in ('a', 'b'):
        assert run_cli('--out_folder', str(tmp_path / name)) == 0
    for file in demo.OUTPUT_FILES:
        assert (tmp_path / 'a' / file).read_bytes() == (tmp_path / 'b' / file).read_bytes(), file


def test_overwrite_protection_and_other_files_kept(tmp_path, capsys):
    out = tmp_path / 'demo'
    out.mkdir()
    (out / 'notes.txt').write_text('keep me')
    assert run_cli('--out_folder', str(out), '--seed', '1') == 0
    before = (out / 'train_data.npy').read_bytes()
    assert run_cli('--out_folder', str(out), '--seed', '2') != 0
    assert 'overwrite' in capsys.readouterr().err
    assert (out / 'train_data.npy').read_bytes() == before
    with pytest.raises(demo.ExistingDatasetError):
        demo.write_dataset(str(out), demo.generate_dataset(12, 12, 10, seed=2), seed=2, frames=10)
    assert run_cli('--out_folder', str(out), '--seed', '2', '--overwrite') == 0
    assert (out / 'train_data.npy').read_bytes() != before
    assert (out / 'notes.txt').read_text() == 'keep me'
    assert sorted(os.listdir(out)) == sorted(demo.OUTPUT_FILES + ('notes.txt',))


def test_help_runs_as_a_script():
    result = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'make_demo_data.py'), '--help'],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0 and '--out_folder' in result.stdout and '--overwrite' in result.stdout


def test_plot_skeleton_writes_png(tmp_path):
    out = tmp_path / 'demo'
    assert run_cli('--out_folder', str(out)) == 0
    from tools import plot_skeleton
    png = tmp_path / 'plot.png'
    assert plot_skeleton.main(['--data', str(out / 'val_data.npy'), '--label', str(out / 'val_label.pkl'),
                               '--out', str(png), '--num_frames', '3', '--max_classes', '3']) == 0
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
