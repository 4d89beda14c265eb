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


def test_search_ranks_triples_by_mean_top1_and_matches_plain_fusion(tmp_path):
    """The weight search on hand-made scores: joint is right on every sample, motion is wrong on
    every sample, bone is right on half. Every listed accuracy equals ensemble() with those weights
    (the slow formulation). Three triples are right on every sample, (0.5, 0, 0), (1, 0, 0.5) and
    (1, 0.5, 0); the one nearest the reference proportions (L1 0.58 against 1.25 and 0.75) wins."""
    from tools.ensemble import search_weights
    names, labels = ['a', 'b', 'c', 'd'], np.array([0, 1, 2, 0])
    right = np.eye(3)[labels] * 2.0
    wrong = np.eye(3)[(labels + 1) % 3] * 3.0
    half = np.where(np.arange(4)[:, None] < 2, right, wrong)
    runs = []
    for seed in range(2):
        run = {}
        for stream, arr in (('joint', right), ('motion', wrong), ('bone', half)):
            run[stream] = write(tmp_path / f'{stream}{seed}.pkl', {n: arr[i] for i, n in enumerate(names)})
        runs.append(run)
    label = write(tmp_path / 'label.pkl', (names, labels.tolist()))
    ranked = search_weights(label, runs, grid=[0, 0.5, 1])
    best, mean, per_run = ranked[0]
    assert mean == 1.0 and per_run == [1.0, 1.0]
    assert best == {'joint': 1.0, 'motion': 0.0, 'bone': 0.5}
    assert [w for w, m, _ in ranked if m == 1.0] == [best, {'joint': 1.0, 'motion': 0.5, 'bone': 0.0},
                                                     {'joint': 0.5, 'motion': 0.0, 'bone': 0.0}]
    proportions = {tuple(round(w[s] / sum(w.values()), 6) for s in ('joint', 'motion', 'bone'))
                   for w, _, _ in ranked}
    assert len(proportions) == len(ranked)   # (1, 1, 1) and (0.5, 0.5, 0.5) are one candidate
    assert all(m >= n for (_, m, _), (_, n, _) in zip(ranked, ranked[1:]))   # best first
    for weights, mean, per_run in ranked:
        slow = [ensemble(label, run, weights)['accuracy'][1] for run in runs]
        assert per_run == pytest.approx(slow) and mean == pytest.approx(np.mean(slow))


def test_search_keeps_the_reference_weights_when_validation_cannot_tell(tmp_path):
    """Identical streams make every triple equally accurate: the reference weights win."""
    from tools.ensemble import search_weights
    names, labels = ['a', 'b', 'c'], [0, 1, 1]
    scores = {n: np.array([1.0, 0.0]) for n in names}
    run = {s: scores for s in ('joint', 'motion', 'bone')}
    ranked = search_weights((names, labels), [run])
    assert ranked[0][0] == {'joint': 0.6, 'motion': 0.4, 'bone': 0.6}   # as itself, not as 0.3 / 0.2 / 0.3
    assert [w for w, _, _ in ranked].count(ranked[0][0]) == 1
    # a grid without the reference proportion still has the reference as a candidate
    coarse = search_weights((names, labels), [run], grid=[0, 1])
    assert coarse[0][0] == {'joint': 0.6, 'motion': 0.4, 'bone': 0.6} and len(coarse) == 8


def test_search_command_line(results, capsys, tmp_path):
    label, files, _, _ = results
    argv = ['--label', label, '--search', '--joint', files['joint'], files['joint'],
            '--motion', files['motion'], files['motion'], '--bone', files['bone'], files['bone']]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert 'weight triples over 2 run(s)' in out and 'reference 0.6 0.4 0.6:' in out
    assert out.strip().splitlines()[-1].startswith('chosen: --weights ')
    with pytest.raises(SystemExit) as exit_info:   # unequal run counts
        main(['--label', label, '--search', '--joint', files['joint'], files['joint'], '--bone', files['bone']])
    assert exit_info.value.code == 2 and 'same number of result files' in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:   # several files without --search
        main(['--label', label, '--joint', files['joint'], files['joint']])
    assert exit_info.value.code == 2 and 'several only with --search' in capsys.readouterr().err
    assert main(['--label', label, '--search', '--joint', files['joint'], '--bone', str(tmp_path / 'no.pkl')]) == 2
    assert 'not found' in capsys.readouterr().err
