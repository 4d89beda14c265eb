"""Bad input through the public entry points: `main.main([...])`, tool mains run as commands.

Every case asserts the exit code (2 = bad input), the one-line message naming the file, key or
shape at fault, and that the outputs already in the work_dir are byte for byte unchanged.
Crafted pickles would create a marker file if anything in them ran; the marker must not exist.
"""
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import main
from tests.conftest import ROOT, TINY_ENCODER, pretrain_argv, write_dataset
from tests.data_tool_fixtures import skeleton_text
from torchlight.files import DataFileError, load_pickle, write_json

# --------------------------------------------------------------------------- helpers


def run_main(argv, capsys):
    """(exit code, the single stderr line) of `python main.py argv`."""
    code = main.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and 'Traceback' not in err, err
    return code, err


def run_tool(script, args):
    """(exit code, stderr) of `python tools/<script> args` in a fresh process."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', script)] + [str(a) for a in args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    err = proc.stderr.strip()
    assert '\n' not in err and 'Traceback' not in err, err
    return proc.returncode, err


def snapshot(folder):
    """{file: sha256} of everything in `folder` but the log (failures are appended to it) and
    the lock file."""
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            if name not in ('log.txt', '.lock'):
                path = os.path.join(base, name)
                out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, 'rb').read()).hexdigest()
    return out


class Run:
    """Builds a code-executing pickle payload whose only effect is creating `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


class Evaluated:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').write('ran')",))


def eval_argv(data, work, weights, extra=()):
    return ['--work_dir', work, '--model', 'skeletonclr', '--model_args', json.dumps({**TINY_ENCODER, 'num_class': 4}),
            '--train_feeder_args.data_path', data['train'][0], '--train_feeder_args.label_path', data['train'][1],
            '--test_feeder_args.data_path', data['val'][0], '--test_feeder_args.label_path', data['val'][1],
            '--batch_size', '8', '--test_batch_size', '6', '--num_epoch', '2', '--num_worker', '0',
            '--use_gpu', 'false', '--print_log', 'false', '--weights', weights,
            '--ignore_weights', 'encoder_q.fc', 'encoder_k', 'queue'] + list(extra)


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    """A tiny pretraining run: data, its work_dir (with checkpoint_last.pt) and epoch1_model.pt."""
    folder = tmp_path_factory.mktemp('pre')
    data = {'train': write_dataset(str(folder), 'train', 24, seed=1),
            'val': write_dataset(str(folder), 'val', 12, seed=2), 'dir': str(folder)}
    work = str(folder / 'run')
    assert main.main(['pretrain_skeletonclr'] + pretrain_argv(data, work, epochs=1)) == 0
    return data, work, os.path.join(work, 'epoch1_model.pt')


# --------------------------------------------------------------------------- 1. pickles run no code


@pytest.mark.parametrize('payload', [Run, Evaluated])
def test_crafted_label_pickle_runs_no_code_in_a_task(pretrained, tmp_path, capsys, payload):
    data, _, weights = pretrained
    marker = tmp_path / 'ran'
    crafted = tmp_path / 'val_label.pkl'
    crafted.write_bytes(pickle.dumps(([f'val{i:03d}' for i in range(12)], [payload(marker)])))
    work = tmp_path / 'knn'
    code, err = run_main(['knn_retrieval'] + eval_argv(data, str(work), weights,
                                                      ['--test_feeder_args.label_path', crafted]), capsys)
    assert code == 2 and str(crafted) in err and 'refused: it refers to' in err
    assert ('posix.system' in err or 'nt.system' in err) if payload is Run else 'builtins.eval' in err
    assert not marker.exists() and not (work / 'knn_results.json').exists()


def test_crafted_score_and_label_pickles_run_no_code_in_tools(pretrained, tmp_path):
    data, _, _ = pretrained
    marker = tmp_path / 'ran'
    scores = tmp_path / 'test_result.pkl'
    scores.write_bytes(pickle.dumps({'val000': Run(marker)}))
    code, err = run_tool('ensemble.py', ['--label', data['val'][1], '--joint', scores])
    assert code == 2 and f'joint result file {scores} refused' in err
    labels = tmp_path / 'labels.pkl'
    labels.write_bytes(pickle.dumps((['a'], [Run(marker)])))
    code, err = run_tool('plot_skeleton.py', ['--data', data['val'][0], '--label', labels,
                                              '--out', tmp_path / 'x.png'])
    assert code == 2 and f'label file {labels} refused' in err and not (tmp_path / 'x.png').exists()
    folder = tmp_path / 'raw'
    folder.mkdir()
    np.save(folder / 'train_data.npy', np.zeros((1, 3, 4, 25, 2), np.float32))
    (folder / 'train_label.pkl').write_bytes(pickle.dumps((['a'], [Evaluated(marker)])))
    code, err = run_tool('aimclr_preprocess.py', ['--data_path', folder, '--out_folder', tmp_path / 'out',
                                                  '--splits', 'train', '--quiet'])
    assert code == 2 and 'train_label.pkl refused: it refers to builtins.eval' in err
    assert not marker.exists() and not (tmp_path / 'out' / 'train_position.npy').exists()


def test_plain_pickles_still_load(tmp_path):
    """Label and score pickles as the reference code bases write them (numpy arrays and
    scalars, Python 2 protocol 2 with latin-1 text, OrderedDict) read as before."""
    from collections import OrderedDict
    scores = {'a': np.arange(3, dtype=np.float32), 'b': np.float64(2.5), 'c': [np.int64(3)]}
    for protocol in (2, 4, 5):
        path = tmp_path / f'p{protocol}.pkl'
        path.write_bytes(pickle.dumps(OrderedDict(scores), protocol=protocol))
        back = load_pickle(str(path))
        np.testing.assert_array_equal(back['a'], scores['a'])
        assert back['b'] == 2.5 and back['c'][0] == 3
    # a Python 2 pickle of (names, labels) with a non-ASCII byte string: read as latin-1
    py2 = b"\x80\x02]q\x00U\x04caf\xe9q\x01a]q\x02K\x03a\x86q\x03."
    (tmp_path / 'py2.pkl').write_bytes(py2)
    assert load_pickle(str(tmp_path / 'py2.pkl')) == (['caf\xe9'], [3])
    (tmp_path / 'text.pkl').write_text('name,label\n')
    with pytest.raises(DataFileError, match=r"text.pkl is not a readable pickle .*starts with b'name,label"):
        load_pickle(str(tmp_path / 'text.pkl'))


# --------------------------------------------------------------------------- 2./3. one run per work_dir


def test_second_run_into_a_live_work_dir_is_refused_and_a_killed_one_does_not_block(pretrained, tmp_path, capsys):
    data, _, _ = pretrained
    work = str(tmp_path / 'w')
    argv = ['pretrain_skeletonclr'] + pretrain_argv(data, work, epochs=200)
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, 'main.py')] + argv, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        marker = os.path.join(work, 'epoch1_model.pt')
        deadline = time.time() + 120
        while not os.path.exists(marker) and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None
        code, err = run_main(argv + ['--resume', 'auto'], capsys)
        assert code == 2 and f'work_dir {work} is in use by another run (pid {first.pid}' in err
        assert first.poll() is None    # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)   # killed: its .lock file stays, the kernel drops the flock
        first.wait()
    assert os.path.exists(os.path.join(work, '.lock'))
    done = torch.load(os.path.join(work, 'checkpoint_last.pt'), weights_only=True)['epoch']
    assert main.main(argv + ['--resume', 'auto', '--num_epoch', str(done + 1)]) == 0
    assert torch.load(os.path.join(work, 'checkpoint_last.pt'), weights_only=True)['epoch'] == done + 1
    assert 'is in use' not in open(os.path.join(work, 'log.txt')).read()   # the refused run wrote nothing there


def test_refused_run_keeps_config_and_logs_the_error(pretrained, tmp_path, capsys):
    data, work, _ = pretrained
    before = snapshot(work)
    code, err = run_main(['pretrain_skeletonclr'] + pretrain_argv(data, work, epochs=3), capsys)
    assert code == 2 and f'{work} already holds a training run (checkpoint_last.pt)' in err
    assert snapshot(work) == before   # config.yaml still describes the checkpoints beside it
    assert err in open(os.path.join(work, 'log.txt')).read()


# --------------------------------------------------------------------------- 4. no silent wrong results


def test_linear_evaluation_batch_larger_than_the_training_set(pretrained, tmp_path, capsys):
    data, _, weights = pretrained
    work = tmp_path / 'lin'
    code, err = run_main(['linear_evaluation'] + eval_argv(data, str(work), weights, ['--batch_size', '128']), capsys)
    assert code == 2 and 'batch_size 128 is larger than the train split (24 clips of' in err
    assert data['train'][0] in err and not (work / 'results.json').exists()


def test_extract_features_with_nan_input(pretrained, tmp_path, capsys):
    data, _, weights = pretrained
    clips = np.load(data['val'][0])
    clips[3, 0, 5, 7, 0] = np.nan
    np.save(tmp_path / 'nan.npy', clips)
    out = tmp_path / 'feats.npy'
    code, err = run_main(['extract_features', '--model', 'skeletonclr', '--model_args', json.dumps(TINY_ENCODER),
                          '--weights', weights, '--ignore_weights', 'encoder_q.fc', 'encoder_k', 'queue',
                          '--input', tmp_path / 'nan.npy', '--output', out, '--work_dir', tmp_path / 'w',
                          '--use_gpu', 'false', '--print_log', 'false', '--test_batch_size', '2'], capsys)
    assert code == 2 and f'input {tmp_path / "nan.npy"}: clip 3 contains NaN or inf values' in err
    assert not out.exists()


# --------------------------------------------------------------------------- 5. evaluation re-runs


def test_evaluation_reruns_keep_results_unless_overwrite(pretrained, tmp_path, capsys):
    data, _, weights = pretrained
    lin, knn = str(tmp_path / 'lin'), str(tmp_path / 'knn')
    assert main.main(['linear_evaluation'] + eval_argv(data, lin, weights)) == 0
    assert main.main(['knn_retrieval'] + eval_argv(data, knn, weights)) == 0
    before = {d: snapshot(d) for d in (lin, knn)}
    code, err = run_main(['linear_evaluation'] + eval_argv(data, lin, weights, ['--base_lr', '0.1']), capsys)
    assert code == 2 and f'work_dir {lin} already holds results.json, best_model.pt, test_result.pkl' in err
    assert '--overwrite true' in err
    code, err = run_main(['linear_evaluation'] + eval_argv(data, lin, os.path.join(lin, 'best_model.pt'),
                                                           ['--phase', 'test']), capsys)
    assert code == 2 and 'already holds test_result.pkl' in err
    code, err = run_main(['knn_retrieval'] + eval_argv(data, knn, weights), capsys)
    assert code == 2 and f'work_dir {knn} already holds knn_results.json' in err
    assert {d: snapshot(d) for d in (lin, knn)} == before
    assert main.main(['linear_evaluation'] + eval_argv(data, lin, weights, ['--base_lr', '0.1', '--overwrite', 'true'])) == 0
    import yaml
    assert yaml.safe_load(open(os.path.join(lin, 'config.yaml')))['base_lr'] == 0.1   # the replacing run's


# --------------------------------------------------------------------------- 6./7. user errors: exit 2, one line


def mismatched_data(folder, v=25, c=3):
    data = {'train': write_dataset(folder, 'train', 24, v=v, seed=1), 'val': write_dataset(folder, 'val', 12, v=v, seed=2)}
    for split in data:
        x = np.load(data[split][0])[:, :c]
        np.save(data[split][0], x)
    return data


@pytest.mark.parametrize('shape, needle', [(dict(v=20), 'V=25'), (dict(c=2), '(N, 3, T, V, M)')])
def test_joint_or_channel_count_not_matching_the_graph_fails_at_set_up(tmp_path, capsys, shape, needle):
    data = mismatched_data(str(tmp_path), **shape)
    work = tmp_path / 'w'
    code, err = run_main(['pretrain_skeletonclr'] + pretrain_argv(data, str(work), epochs=1), capsys)
    assert code == 2 and f"train_feeder_args.data_path {data['train'][0]}: clips of shape" in err and needle in err
    assert not (work / 'checkpoint_last.pt').exists() and 'Epoch' not in (work / 'log.txt').read_text()


def option_cases(tmp):
    """(extra options, expected message part) of user errors in the options."""
    cases = [(['--base_lr', '-0.1'], "option 'base_lr' must be >= 0, got -0.1"),
             (['--device', 'cuda'], 'option device: cuda asks for a GPU, but CUDA is not available'),
             (['--num_epoch', '0'], "option 'num_epoch' must be >= 1 to train the classifier, got 0"),
             (['--work_dir', os.path.join(tmp, 'file.txt', 'run')], f"cannot create work_dir {os.path.join(tmp, 'file.txt', 'run')}"),
             (['--work_dir', os.path.join(tmp, 'file.txt')], f"work_dir {os.path.join(tmp, 'file.txt')} is a file, not a folder")]
    if torch.cuda.is_available():
        cases = [c for c in cases if '--device' not in c[0]]
    return cases


def test_option_errors(pretrained, tmp_path, capsys):
    data, _, weights = pretrained
    (tmp_path / 'file.txt').write_text('not a folder\n')
    for extra, needle in option_cases(str(tmp_path)):
        work = tmp_path / 'lin'
        code, err = run_main(['linear_evaluation'] + eval_argv(data, str(work), weights, ['--use_gpu', 'true'] + extra), capsys)
        assert code == 2 and needle in err, (extra, err)
        assert not (work / 'config.yaml').exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
def test_reference_gpu_index_without_cuda_runs_on_the_cpu_with_a_warning(pretrained, tmp_path, capsys):
    data, _, weights = pretrained
    work = tmp_path / 'knn'
    assert main.main(['knn_retrieval'] + eval_argv(data, str(work), weights, ['--use_gpu', 'true', '--device', '0'])) == 0
    assert 'warning: device 0 asks for GPU(s), but CUDA is not available: running on the CPU' in \
        (work / 'log.txt').read_text()


def test_data_file_errors(pretrained, tmp_path, capsys):
    data, _, weights = pretrained
    empty = tmp_path / 'empty.npy'
    np.save(empty, np.zeros((0, 3, 20, 25, 2), np.float32))
    text = tmp_path / 'clips.npy'
    text.write_text('1 2 3\n4 5 6\n')
    cases = [(['--test_feeder_args.data_path', empty], f'{empty}: the array holds no clips (shape (0, 3, 20, 25, 2))'),
             (['--test_feeder_args.data_path', text], f"data file {text} is not a .npy array (the file starts with b'1 2 3"),
             (['--test_feeder_args.label_path', text], f'label file {text} is not a readable pickle')]
    for extra, needle in cases:
        code, err = run_main(['linear_evaluation'] + eval_argv(data, str(tmp_path / 'lin'), weights, extra), capsys)
        assert code == 2 and needle in err and 'allow_pickle' not in err, (extra, err)


def test_weights_that_are_not_checkpoints(pretrained, tmp_path, capsys):
    data, _, _ = pretrained
    marker = tmp_path / 'ran'
    torch.save({'state_dict': {'x': torch.zeros(1)}, 'evil': Run(marker)}, tmp_path / 'evil.pt')
    (tmp_path / 'text.pt').write_text('hello\n')
    np.save(tmp_path / 'arr.npy', np.zeros(3))
    (tmp_path / 'plain.pkl').write_bytes(pickle.dumps({'a': [1, 2]}))
    cases = [('evil.pt', 'refused: it refers to posix.system'), ('text.pt', "is not a PyTorch checkpoint (the file starts with b'hello"),
             ('arr.npy', 'is a .npy array, not a PyTorch checkpoint'),
             ('plain.pkl', 'is a pickle of other objects, not a PyTorch checkpoint')]
    for name, needle in cases:
        code, err = run_main(['knn_retrieval'] + eval_argv(data, str(tmp_path / 'k'), str(tmp_path / name)), capsys)
        assert code == 2 and f'checkpoint {tmp_path / name} {needle}' in err.replace('nt.system', 'posix.system'), err
        assert 'weights_only=False' not in err and 'Unsupported operand' not in err
    assert not marker.exists()


def test_resume_files_that_are_not_this_runs_state(pretrained, tmp_path, capsys):
    data, work, weights = pretrained
    other = str(tmp_path / 'other')
    assert main.main(['pretrain_skeletonclr'] + pretrain_argv(data, other, epochs=1, model_args={'hidden_channels': 4})) == 0
    (tmp_path / 'notes.txt').write_text('epoch 3\n')
    cases = [(os.path.join(other, 'checkpoint_last.pt'), 'was written by a different model (model / model_args differ): shape mismatches'),
             (weights, 'is not a training state of this framework'),
             (str(tmp_path / 'notes.txt'), 'is not a PyTorch checkpoint')]
    for path, needle in cases:
        run = str(tmp_path / 'resumed')
        code, err = run_main(['pretrain_skeletonclr'] + pretrain_argv(data, run, epochs=2, extra=['--resume', path]), capsys)
        assert code == 2 and f'resume checkpoint {path} {needle}' in err, err
        assert len(err) < 2000 and not os.path.exists(os.path.join(run, 'config.yaml'))


def test_user_error_under_torchrun_prints_once(tmp_path):
    from tests.test_ddp import free_port
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--nnodes', '1',
           '--master_addr', '127.0.0.1', '--master_port', str(free_port()),
           os.path.join(ROOT, 'main.py'), 'knn_retrieval', '--base_lr', '-1', '--work_dir', str(tmp_path / 'w')]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.count("error: option 'base_lr' must be >= 0, got -1.0") == 1, proc.stderr


# --------------------------------------------------------------------------- 8. temporary files, atomic results


def test_stale_checkpoint_temporaries_are_removed_at_start(pretrained, tmp_path):
    data, _, _ = pretrained
    work = str(tmp_path / 'w')
    assert main.main(['pretrain_skeletonclr'] + pretrain_argv(data, work, epochs=1)) == 0
    stale = os.path.join(work, '.checkpoint_last.pt.k3j2_x.tmp')
    with open(stale, 'wb') as f:
        f.write(b'PK\x03\x04 half a checkpoint')
    assert main.main(['pretrain_skeletonclr'] + pretrain_argv(data, work, epochs=2, extra=['--resume', 'auto'])) == 0
    assert not os.path.exists(stale)
    assert 'removed 1 temporary file(s) an interrupted write left: .checkpoint_last.pt.k3j2_x.tmp' in \
        open(os.path.join(work, 'log.txt')).read()


def test_results_json_is_replaced_only_by_a_complete_file(tmp_path):
    path = str(tmp_path / 'results.json')
    write_json(path, {'top1': 0.5})
    with pytest.raises(TypeError):
        write_json(path, {'top1': 0.75, 'bad': object()})   # fails half-way through json.dump
    assert json.load(open(path)) == {'top1': 0.5} and os.listdir(tmp_path) == ['results.json']


# --------------------------------------------------------------------------- 6./9. data tools


def ntu_folder(tmp_path, corrupt):
    folder = tmp_path / 'raw'
    folder.mkdir()
    rng = np.random.default_rng(0)
    text = skeleton_text([[rng.normal(size=(25, 3))] for _ in range(3)])
    lines = text.split('\n')
    corrupt(lines)
    (folder / 'S001C001P001R001A001.skeleton').write_text('\n'.join(lines))
    return folder


@pytest.mark.parametrize('corrupt, needle', [
    (lambda l: l.__setitem__(2, l[2].replace(' 0.1 ', ' lean ')), "line 3: body info row field 8 is 'lean', not a number"),
    (lambda l: l.__setitem__(2, l[2].rsplit(' ', 1)[0]), 'line 3: body info row'),
    (lambda l: l.__setitem__(6, l[6].replace(' 0.5 ', ' w ')), "line 7: joint row field 8 is 'w', not a number"),
    (lambda l: l.__setitem__(9, l[9].rsplit(' ', 1)[0]), 'has 11 fields, expected 12'),
    (lambda l: l.append('1 2 3'), "unexpected content after the last frame: '1 2 3'"),
])
def test_ntu_gendata_reports_damaged_rows(tmp_path, corrupt, needle):
    folder = ntu_folder(tmp_path, corrupt)
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('earlier output\n')
    code, err = run_tool('ntu_gendata.py', ['--data_path', folder, '--out_folder', out, '--quiet'])
    assert code == 2 and 'S001C001P001R001A001.skeleton' in err and needle in err, err
    assert sorted(os.listdir(out)) == ['keep.txt']


def test_data_tool_input_errors(tmp_path):
    code, err = run_tool('aimclr_preprocess.py', ['--data_path', tmp_path / 'none', '--out_folder', tmp_path / 'o'])
    assert code == 2 and f"{tmp_path / 'none' / 'train_label.pkl'}" in err and 'not found' in err
    (tmp_path / 'seqs').mkdir()
    (tmp_path / 'seqs' / 'a.npy').write_text('0.1,0.2,0.3\n')
    (tmp_path / 'labels.csv').write_text('name,label\na,0\n')
    code, err = run_tool('custom_gendata.py', ['--data_path', tmp_path / 'seqs', '--labels', tmp_path / 'labels.csv',
                                               '--out_folder', tmp_path / 'o', '--num_joints', '1', '--quiet'])
    assert code == 2 and f"sequence file {tmp_path / 'seqs' / 'a.npy'} is not a .npy array" in err, err
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'ntu_gendata.py'), '--data_path',
                           str(tmp_path), '--out_folder', str(tmp_path / 'o'), '--benchmark', 'xset'],
                          capture_output=True, text=True, cwd=ROOT)   # argparse: usage, then the error
    assert proc.returncode == 2 and proc.stderr.strip().split('\n')[-1].endswith('error: benchmark xset is not defined for ntu60')
    assert not (tmp_path / 'o').exists()
