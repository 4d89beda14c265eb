"""Using a trained model: predict, confusion matrices / per-class tables, the queue warning."""
import csv
import json
import os
import pickle

import numpy as np
import pytest
import torch

import main
from processor.confusion import confusion_matrix, per_class_table
from processor.evaluation import LinearEvaluation
from processor.knn_retrieval import KNNRetrieval
from processor.pretrain import PretrainProcessor
from processor.predict import Predict
from tests.conftest import TINY_ENCODER, pretrain_argv


def eval_args(data, work, weights, extra=()):
    return ['--work_dir', work, '--model', 'net.skeletonclr.SkeletonCLR',
            '--model_args', json.dumps({**TINY_ENCODER, 'num_class': 4}),
            '--train_feeder_args.data_path', data['train'][0], '--train_feeder_args.label_path', data['train'][1],
            '--test_feeder_args.data_path', data['val'][0], '--test_feeder_args.label_path', data['val'][1],
            '--batch_size', '8', '--test_batch_size', '5', '--num_epoch', '4', '--eval_interval', '2',
            '--num_worker', '0', '--use_gpu', 'false', '--print_log', 'false', '--base_lr', '0.5',
            '--weights', weights, '--ignore_weights', 'encoder_q.fc', 'encoder_k', 'queue'] + list(extra)


@pytest.fixture
def pretrained(tiny_data, tmp_path):
    work = str(tmp_path / 'pre')
    PretrainProcessor.from_argv(pretrain_argv(tiny_data, work, epochs=1)).start()
    return os.path.join(work, 'epoch1_model.pt')


@pytest.fixture
def linear(tiny_data, tmp_path, pretrained):
    work = str(tmp_path / 'linear')
    summary = LinearEvaluation.from_argv(eval_args(tiny_data, work, pretrained)).start()
    return work, summary


def test_confusion_matrix_hand_made():
    counts = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 4)
    assert counts.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    rows = per_class_table(counts, ['a', 'b', 'c', 'd'])
    assert [r['accuracy'] for r in rows] == [0.5, 1.0, pytest.approx(2 / 3, abs=1e-6), None]
    assert [r['clips'] for r in rows] == [2, 1, 3, 0]


def test_linear_evaluation_writes_confusion_and_per_class(linear, tiny_data):
    work, summary = linear
    results = json.load(open(os.path.join(work, 'results.json')))
    counts = np.array(results['confusion_matrix'])
    assert counts.shape == (4, 4) and counts.sum() == 12            # the whole test split, once
    assert np.trace(counts) / 12 == pytest.approx(results['final_epoch']['accuracy']['1'])
    rows = results['per_class']['classes']
    assert [r['clips'] for r in rows] == [3, 3, 3, 3] and rows[0]['name'] == 'class 0'
    assert os.path.getsize(os.path.join(work, 'confusion.png')) > 10000
    log = open(os.path.join(work, 'log.txt')).read()
    assert 'per-class top-1' in log and 'Confusion matrix:' in log


def test_knn_writes_confusion_per_k_with_class_names(tiny_data, tmp_path, pretrained):
    names = tmp_path / 'names.txt'
    names.write_text('walk\nrun\njump\nsit\n')
    work = str(tmp_path / 'knn')
    KNNRetrieval.from_argv(eval_args(tiny_data, work, pretrained, ['--knn_k', '1', '3',
                                                                    '--class_names', str(names)])).start()
    results = json.load(open(os.path.join(work, 'knn_results.json')))
    for k in (1, 3):
        counts = np.array(results['confusion_matrix'][f'k={k}'])
        assert counts.sum() == 12 and np.trace(counts) / 12 == pytest.approx(results[f'k={k}'])
        assert os.path.isfile(os.path.join(work, f'confusion_k{k}.png'))
    assert [r['name'] for r in results['per_class']['k=1']] == ['walk', 'run', 'jump', 'sit']


def test_builtin_class_name_lists():
    from feeder.class_names import load_class_names
    assert len(load_class_names('ntu60', 60)) == 60 and len(load_class_names('ntu120', 120)) == 120
    assert load_class_names('ntu120')[:60] == load_class_names('ntu60')
    assert len(load_class_names('pkummd', 51)) == 51
    assert load_class_names('nw-ucla', 10)[0] == 'pick up with one hand'
    assert len(load_class_names('demo', 12)) == 12
    with pytest.raises(ValueError, match='10 names for 60 classes'):
        load_class_names('nw-ucla', 60)


def test_predict_scores_equal_linear_evaluation_test_result(linear, tiny_data, tmp_path):
    work, _ = linear
    out = str(tmp_path / 'predict')
    args = eval_args(tiny_data, out, os.path.join(work, 'best_model.pt'),
                     ['--input', tiny_data['val'][0], '--input_label', tiny_data['val'][1], '--predict_k', '3'])
    result = Predict.from_argv(args).start()
    expected = pickle.load(open(os.path.join(work, 'test_result.pkl'), 'rb'))
    got = pickle.load(open(os.path.join(out, 'predictions_scores.pkl'), 'rb'))
    assert list(got) == list(expected) and len(got) == 12
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-5)
    # CSV and JSON: 3 ranked classes per clip, probabilities sorted and summing to <= 1
    rows = list(csv.DictReader(open(os.path.join(out, 'predictions.csv'))))
    assert len(rows) == 36 and rows[0]['sample'] == 'val000' and rows[0]['rank'] == '1'
    clips = json.load(open(os.path.join(out, 'predictions.json')))['clips']
    probs = [p['probability'] for p in clips[0]['predictions']]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    top = int(np.argmax(expected['val000']))
    assert clips[0]['predictions'][0]['class'] == top and clips[0]['predictions'][0]['name'] == f'class {top}'
    assert result['scores'].shape == (12, 4)


def test_predict_clear_errors(linear, tiny_data, tmp_path, pretrained, capsys):
    work, _ = linear
    best = os.path.join(work, 'best_model.pt')
    # a pretraining checkpoint has a projection head, not a classifier
    args = eval_args(tiny_data, str(tmp_path / 'p1'), pretrained, ['--input', tiny_data['val'][0]])
    assert main.main(['predict'] + args) == 2
    assert 'has no classifier' in capsys.readouterr().err
    # clips of another skeleton (20 joints) for a 25-joint model
    clips = tmp_path / 'ucla.npy'
    np.save(clips, np.zeros((2, 3, 20, 20, 2), np.float32))
    args = eval_args(tiny_data, str(tmp_path / 'p2'), best, ['--input', str(clips)])
    assert main.main(['predict'] + args) == 2
    err = capsys.readouterr().err
    assert 'ucla.npy' in err and "layout 'ntu-rgb+d' has V=25 joints, but the data has V=20" in err


def test_predict_reads_a_folder_of_sequences(linear, tiny_data, tmp_path):
    work, _ = linear
    clips = np.load(tiny_data['val'][0])[:3]                   # (3, C, T, V, M) -> (T, M, V, C) files
    folder = tmp_path / 'seqs'
    folder.mkdir()
    for i, clip in enumerate(clips):
        np.save(folder / f'clip{i}.npy', clip.transpose(1, 3, 2, 0))
    out = str(tmp_path / 'pf')
    Predict.from_argv(eval_args(tiny_data, out, os.path.join(work, 'best_model.pt'), ['--input', str(folder)])).start()
    got = pickle.load(open(os.path.join(out, 'predictions_scores.pkl'), 'rb'))
    expected = pickle.load(open(os.path.join(work, 'test_result.pkl'), 'rb'))
    assert list(got) == ['clip0', 'clip1', 'clip2']
    for i in range(3):
        np.testing.assert_allclose(got[f'clip{i}'], expected[f'val{i:03d}'], rtol=1e-5, atol=1e-5)


def test_queue_warning_fires_only_when_queue_reaches_the_data_size(tiny_data, tmp_path):
    for queue, expected in ((24, True), (16, False)):
        work = str(tmp_path / f'q{queue}')
        proc = PretrainProcessor.from_argv(pretrain_argv(tiny_data, work, epochs=1,
                                                         model_args={'queue_size': queue}))
        proc.setup()
        log = open(os.path.join(work, 'log.txt')).read()
        assert (f'warning: queue_size {queue} >= 24 training clips' in log) == expected


def write_demo_run(work, ssl, untrained, best_offset=0.0):
    """The evaluation outputs demo_table reads, for (linear final, k-NN) top-1 of both encoders."""
    for name, (linear, knn) in (('', ssl), ('untrained_', untrained)):
        (work / f'{name}linear').mkdir(parents=True)
        (work / f'{name}knn').mkdir()
        (work / f'{name}linear' / 'results.json').write_text(json.dumps(
            {'final_epoch': {'accuracy': {'1': linear}}, 'best_epoch': {'top1': linear + best_offset}}))
        (work / f'{name}knn' / 'knn_results.json').write_text(json.dumps({'k=1': knn}))
    return work


def test_demo_table_compares_ssl_untrained_and_raw_coordinates(tiny_data, tmp_path, capsys):
    from tools import demo_table
    work = write_demo_run(tmp_path / 'demo', ssl=(0.5, 0.75), untrained=(0.25, 0.5), best_offset=0.1)
    assert demo_table.main(['--work_dir', str(work), '--train', tiny_data['train'][0],
                            '--test', tiny_data['val'][0]]) == 0
    summary = json.load(open(work / 'demo_summary.json'))
    assert summary['gain']['knn_top1'] == pytest.approx(0.25) and summary['gain']['linear_top1_final'] == pytest.approx(0.25)
    # the raw 1-NN by hand: cosine similarity of the flattened clips
    train, test = np.load(tiny_data['train'][0]), np.load(tiny_data['val'][0])
    a = train.reshape(len(train), -1) / np.linalg.norm(train.reshape(len(train), -1), axis=1, keepdims=True)
    b = test.reshape(len(test), -1) / np.linalg.norm(test.reshape(len(test), -1), axis=1, keepdims=True)
    y_train, y_test = np.arange(24) % 4, np.arange(12) % 4
    expected = (y_train[(b @ a.T).argmax(1)] == y_test).mean()
    assert summary['rows']['raw coordinates']['knn_top1'] == pytest.approx(expected)
    assert 'self-supervision gain over the untrained twin: k-NN +25.00 points' in capsys.readouterr().out


def test_demo_table_reports_ranges_over_seed_runs(tiny_data, tmp_path, capsys):
    from tools import demo_table
    runs = []
    for seed, (ssl_lin, ssl_knn, un_lin, un_knn) in enumerate(((0.5, 0.75, 0.25, 0.5), (0.7, 0.6, 0.4, 0.55))):
        runs.append(str(write_demo_run(tmp_path / f'seed{seed}', ssl=(ssl_lin, ssl_knn), untrained=(un_lin, un_knn))))
    out = tmp_path / 'ranges.json'
    assert demo_table.main(['--work_dir', *runs, '--train', tiny_data['train'][0],
                            '--test', tiny_data['val'][0], '--out', str(out)]) == 0
    ranges = json.load(open(out))['min_max']
    assert ranges['gain_knn_top1'] == pytest.approx([0.05, 0.25])
    assert ranges['gain_linear_top1_final'] == pytest.approx([0.25, 0.30])
    assert ranges['ssl_linear_top1_final'] == pytest.approx([0.5, 0.7])
    assert ranges['untrained_knn_top1'] == pytest.approx([0.5, 0.55])
    assert all(os.path.isfile(os.path.join(r, 'demo_summary.json')) for r in runs)
    assert 'over 2 runs (min-max)' in capsys.readouterr().out


def test_demo_table_refuses_an_unfinished_run_and_writes_nothing(tiny_data, tmp_path, capsys):
    from tools import demo_table
    done = write_demo_run(tmp_path / 'seed0', ssl=(0.5, 0.75), untrained=(0.25, 0.5))
    (tmp_path / 'seed1' / 'linear').mkdir(parents=True)   # pretraining killed before the twin ran
    (tmp_path / 'seed1' / 'linear' / 'results.json').write_text('{"final_epoch": {}}')
    out = tmp_path / 'ranges.json'
    assert demo_table.main(['--work_dir', str(done), str(tmp_path / 'seed1'), '--train', tiny_data['train'][0],
                            '--test', tiny_data['val'][0], '--out', str(out)]) == 2
    assert f"error: {tmp_path / 'seed1'}: not a finished demo run" in capsys.readouterr().err
    assert not out.exists() and not (done / 'demo_summary.json').exists()
