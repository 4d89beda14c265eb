import os
import pickle
import sys

import numpy as np
import pytest
import torch

# Tests use tiny models: one thread avoids OpenMP start-up and oversubscription costs, in this
# process and in the subprocesses the tests launch.
os.environ.setdefault('OMP_NUM_THREADS', '1')
torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def shared_dir():
    """../shared beside the repository (or $SKELETON_SSL_SHARED); None when absent."""
    path = os.environ.get('SKELETON_SSL_SHARED') or os.path.join(ROOT, '..', 'shared')
    return path if os.path.isdir(path) else None


def fixture_dir(name):
    """The shared reference fixture folder `name`; skips the test cleanly when it is absent."""
    root = shared_dir()
    folder = os.path.join(root, 'fixtures', name) if root else None
    if not folder or not os.path.isfile(os.path.join(folder, 'fixture.npz')):
        pytest.skip(f'shared fixture {name} not available')
    return folder


def extract_features_cli(tmp_path, config_text, weights, clips):
    """Run `main.py extract_features` with a config written from `config_text` on `clips`
    (saved to a .npy); returns the features and the run's log text."""
    import main
    config, data, out = tmp_path / 'config.yaml', tmp_path / 'input.npy', tmp_path / 'feats.npy'
    config.write_text(config_text)
    np.save(data, clips)
    work = tmp_path / 'work'
    assert main.main(['extract_features', '--config', str(config), '--weights', weights,
                      '--input', str(data), '--output', str(out), '--work_dir', str(work),
                      '--print_log', 'false']) == 0
    return np.load(out), (work / 'log.txt').read_text()


def write_dataset(folder, split, n, t=20, v=25, m=2, num_class=4, seed=0):
    """Tiny labelled arrays in the standard format; class c shifts the x coordinate by c."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.3, (n, 3, t, v, m)).astype(np.float32)
    y = np.arange(n) % num_class
    x[:, 0] += y[:, None, None, None].astype(np.float32)
    x[n // 2:, :, :, :, 1] = 0   # single-person clips, as in NTU
    data, label = os.path.join(folder, f'{split}_data.npy'), os.path.join(folder, f'{split}_label.pkl')
    np.save(data, x)
    with open(label, 'wb') as f:
        pickle.dump(([f'{split}{i:03d}' for i in range(n)], y.tolist()), f)
    return data, label


TINY_ENCODER = {
    'base_encoder': 'net.st_gcn.Model', 'in_channels': 3, 'hidden_channels': 2, 'hidden_dim': 8,
    'dropout': 0.5, 'graph_args': {'layout': 'ntu-rgb+d', 'strategy': 'spatial'},
    'edge_importance_weighting': True,
}


@pytest.fixture
def tiny_data(tmp_path):
    train = write_dataset(str(tmp_path), 'train', 24, seed=1)
    val = write_dataset(str(tmp_path), 'val', 12, seed=2)
    return {'train': train, 'val': val, 'dir': str(tmp_path)}


def pretrain_argv(data, work_dir, epochs=2, extra=(), model='skeletonclr', model_args=None, encoder=None):
    """Command-line words for a tiny pretraining run (SkeletonCLR unless `model` is given;
    `model_args` are added to the tiny encoder (`encoder`, default TINY_ENCODER) and queue settings)."""
    args = ['--work_dir', work_dir, '--model', model,
            '--model_args', str({**(encoder or TINY_ENCODER), 'feature_dim': 8, 'queue_size': 20,
                                 'momentum': 0.9, 'Temperature': 0.2,
                                 **(model_args or {})}).replace("'", '"'),
            '--train_feeder_args.data_path', data['train'][0],
            '--train_feeder_args.label_path', data['train'][1],
            '--train_feeder_args.shear_amplitude', '0.5',
            '--train_feeder_args.temperal_padding_ratio', '6',
            '--batch_size', '8', '--num_epoch', str(epochs), '--base_lr', '0.05',
            '--num_worker', '0', '--use_gpu', 'false', '--print_log', 'false',
            '--save_interval', '1', '--log_interval', '1']
    return args + list(extra)
