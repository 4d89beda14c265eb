"""tools/ensemble.py: weighted fusion of per-stream scores, aligned by sample name."""
import pickle

import numpy as np
import pytest

from tools.ensemble import EnsembleError, ensemble, main


def write(path, obj):
    with open(path, 'wb') as f:
        pickle.dump(obj, f)
    return str(path)


@pytest.fixture
def results(tmp_path):
    names = ['a', 'b', 'c', 'd']
    labels = [0, 1, 2, 1]
    rng = np.random.default_rng(0)
    scores = {s: rng.normal(size=(4, 3)).astype(np.float32) for s in ('joint', 'motion', 'bone')}
    files = {}
    for s, arr in scores.items():
        order = [3, 1, 0, 2] if s == 'motion' else [0, 1, 2, 3]   # dict order must not matter
        files[s] = write(tmp_path / f'{s}.pkl', {names[i]: arr[i] for i in order})
    return write(tmp_path / 'val_label.pkl', (names, labels)), files, scores, np.array(labels)


def test_fusion_aligned_by_name_with_reference_weights(results):
    label, files, scores, labels = results
    out = ensemble(label, files)
    expected = 0.6 * scores['joint'] + 0.4 * scores['motion'] + 0.6 * scores['bone']
    np.testing.assert_allclose(out['scores'], expected, rtol=1e-6)
    assert out['accuracy'][1] == pytest.approx(np.mean(expected.argmax(1) == labels))
    assert out['accuracy'][5] == 1.0 and out['names'] == ['a', 'b', 'c', 'd']
    custom = ensemble(label, files, {'joint': 1.0, 'motion': 0.0, 'bone': 0.0})
    assert custom['accuracy'][1] == pytest.approx(np.mean(scores['joint'].argmax(1) == labels))
    assert custom['per_stream']['joint'] == custom['accuracy']


def test_mismatched_names_fail_clearly(results, tmp_path):
    label, files, scores, _ = results
    files['bone'] = write(tmp_path / 'bad.pkl', {'a': scores['bone'][0], 'b': scores['bone'][1],
                                                 'c': scores['bone'][2], 'zz': scores['bone'][3]})
    with pytest.raises(EnsembleError, match=r"bone .*1 sample\(s\) of the label file missing: d.*not in the label file: zz"):
        ensemble(label, files)
    files['bone'] = write(tmp_path / 'wide.pkl', {n: np.zeros(5) for n in 'abcd'})
    with pytest.raises(EnsembleError, match='5 classes'):
        ensemble(label, files)


def test_command_line(results, capsys):
    label, files, _, _ = results
    assert main(['--label', label, '--joint', files['joint'], '--motion', files['motion'],
                 '--bone', files['bone'], '--weights', '0.6', '0.4', '0.6']) == 0
    assert 'ensemble (4 samples): top1' in capsys.readouterr().out
    assert main(['--label', label, '--joint', files['joint'], '--bone', '/nonexistent.pkl']) == 2
    assert 'not found' in capsys.readouterr().err
