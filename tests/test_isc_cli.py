"""ISC end to end through `main.py`: tiny intra- and inter-skeleton pretraining on crop_pose
views with true frame counts, then k-NN retrieval and linear evaluation of a branch of the
checkpoint (`weights_prefix`); the frozen encoder stays untouched (eval mode: BN statistics
too). Plus the reference values of the shipped configurations."""
import glob
import json
import os

import numpy as np
import pytest
import torch
import yaml

import main
from tests.conftest import ROOT, pretrain_argv
from torchlight.config import build_config
from torchlight.io import read_checkpoint
from torchlight.registry import TASKS

TINY_GRU = {'base_encoder': 'isc_gru', 'en_input_size': 150, 'en_hidden_size': 8, 'en_num_layers': 2}
CROP = 16   # frames after crop-resize (the reference: 64); 8 for the full-width AGCN


@pytest.fixture
def isc_data(tiny_data):
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        path = os.path.join(tiny_data['dir'], f'{split}_num_frame.npy')
        np.save(path, rng.integers(10, 21, len(np.load(tiny_data[split][0], mmap_mode='r'))))
        tiny_data[f'{split}_frames'] = path
    return tiny_data


def crop_args(data, split, prefix, ratio, size=CROP):
    return [f'--{prefix}_feeder_args.num_frame_path', data[f'{split}_frames'],
            f'--{prefix}_feeder_args.l_ratio', str(ratio), f'--{prefix}_feeder_args.input_size', str(size)]


def eval_argv(data, work, weights, prefix, encoder, train_ratio, size=CROP):
    return (['--work_dir', work, '--model', 'isc', '--model_args', json.dumps({**encoder, 'pretrain': False}),
             '--weights', weights, '--weights_prefix', prefix, '--ignore_weights', 'encoder_q.fc',
             '--train_feeder_args.data_path', data['train'][0], '--train_feeder_args.label_path', data['train'][1],
             '--test_feeder_args.data_path', data['val'][0], '--test_feeder_args.label_path', data['val'][1],
             '--batch_size', '8', '--test_batch_size', '6', '--num_worker', '0', '--use_gpu', 'false',
             '--print_log', 'false']
            + crop_args(data, 'train', 'train', train_ratio, size) + crop_args(data, 'val', 'test', [0.95], size))


def test_intra_pretraining_then_knn_and_linear_evaluation(isc_data, tmp_path):
    work = str(tmp_path / 'pre')
    argv = pretrain_argv(isc_data, work, epochs=2, model='isc', encoder=TINY_GRU,
                         extra=crop_args(isc_data, 'train', 'train', [0.1, 1.0]))
    assert main.main(['pretrain_isc'] + argv) == 0
    log = open(os.path.join(work, 'log.txt')).read()
    assert "views ('crop_pose', 'crop_pose')" in log and 'Epoch 2 done' in log
    weights = os.path.join(work, 'epoch2_model.pt')
    state = read_checkpoint(weights)
    assert {'queue', 'queue_ptr'} <= set(state) and int(state['queue_ptr']) == (2 * 3 * 8) % 20

    knn = str(tmp_path / 'knn')
    assert main.main(['knn_retrieval'] + eval_argv(isc_data, knn, weights, 'encoder_q.', TINY_GRU, [0.95])) == 0
    top1 = json.load(open(os.path.join(knn, 'knn_results.json')))['k=1']
    assert 0 <= top1 <= 1

    linear = str(tmp_path / 'linear')
    assert main.main(['linear_evaluation'] + eval_argv(isc_data, linear, weights, 'encoder_q.', TINY_GRU, [0.5, 1.0])
                     + ['--num_epoch', '2', '--base_lr', '0.1', '--step', '1']) == 0
    assert 'Cached features' not in open(os.path.join(linear, 'log.txt')).read()   # random train crop
    trained = read_checkpoint(os.path.join(linear, 'best_model.pt'))
    for key, value in trained.items():
        if not key.startswith('encoder_q.fc.'):
            assert torch.equal(value, state[key]), key


def test_inter_pretraining_then_linear_evaluation_of_the_graph_branch(isc_data, tmp_path):
    work = str(tmp_path / 'pre')
    argv = pretrain_argv(isc_data, work, epochs=1, model='isc_inter', encoder=TINY_GRU,
                         model_args={'second_encoder': 'agcn'},
                         extra=crop_args(isc_data, 'train', 'train', [0.1, 1.0], size=8))
    assert main.main(['pretrain_isc_inter'] + argv) == 0
    weights = os.path.join(work, 'epoch1_model.pt')
    state = read_checkpoint(weights)
    assert {'Queue_S1', 'Queue_S2', 'encoder_r.l1.gcn1.PA', 'encoder_l.fc.2.weight'} <= set(state)
    assert int(state['queue_ptr_S1']) == int(state['queue_ptr_S2']) == (3 * 8) % 20
    linear = str(tmp_path / 'linear')
    assert main.main(['linear_evaluation'] + eval_argv(isc_data, linear, weights, 'encoder_r.',
                                                       {'base_encoder': 'agcn'}, [0.5, 1.0], size=8)
                     + ['--num_epoch', '1']) == 0
    trained = read_checkpoint(os.path.join(linear, 'best_model.pt'))
    # the frozen graph encoder ran in eval mode: weights and BN running statistics unchanged
    assert 'encoder_q.l1.gcn1.bn.running_mean' in trained
    for key, value in trained.items():
        if not key.startswith('encoder_q.fc.'):
            assert torch.equal(value, state['encoder_r.' + key[len('encoder_q.'):]]), key


CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'config', 'ntu*', 'isc', '*', '*.yaml')))


def evaluated_branch(name):
    """(pretext file stem, evaluates the second encoder) of an evaluation file: `*_isc_<enc>`
    (intra), `*_isc_inter_<gru|agcn>` (seq+graph, the released scripts' names) or
    `*_isc_inter_<enc1>_<enc2>_<branch>`."""
    stem = name.split('_isc_')[1][:-5]
    if not stem.startswith('inter_'):
        return stem, False
    parts = stem[len('inter_'):].split('_')
    pair, branch = (('gru', 'agcn'), parts[0]) if len(parts) == 1 else (tuple(parts[:2]), parts[2])
    return 'inter_' + '_'.join(pair), branch == pair[1]


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_shipped_isc_configs_hold_the_reference_presets(path):
    name = os.path.basename(path)
    task = ('pretrain_isc_inter' if 'pretext_isc_inter' in name else 'pretrain_isc' if 'pretext' in name
            else 'linear_evaluation' if 'linear' in name else 'knn_retrieval')
    cfg = build_config(TASKS.get(task).options, ['--config', path])
    args, train, test = cfg['model_args'], cfg['train_feeder_args'], cfg['test_feeder_args']
    assert train['input_size'] == 64 and train['num_frame_path'].endswith('train_num_frame.npy')
    ntu120 = os.sep + 'ntu120' + os.sep in path
    if task.startswith('pretrain'):
        schedule = (351, [251, 351]) if ntu120 else (451, [351])
        assert (cfg['base_lr'], cfg['batch_size'], cfg['num_epoch'], cfg['step']) == (0.01, 64, *schedule)
        assert (cfg['weight_decay'], cfg['nesterov']) == (1e-4, False) and train['l_ratio'] == [0.1, 1.0]
        assert (args['queue_size'], args['momentum'], args['Temperature'], args['feature_dim'], args['mlp']) == \
            (16384, 0.999, 0.07, 128, True)
        return
    assert args['pretrain'] is False and cfg['ignore_weights'] == ['encoder_q.fc']
    assert test['l_ratio'] == [0.95] and cfg['test_feeder_args']['num_frame_path'].endswith('val_num_frame.npy')
    # the branch matches the representation (reference doc ISC 3.5): the second encoder is encoder_r
    stem, second = evaluated_branch(name)
    assert cfg['weights_prefix'] == ('encoder_r.' if second else 'encoder_q.')
    # the evaluated encoder is built like the pretraining run's encoder of that branch
    pretext = os.path.join(os.path.dirname(path), f'pretext_isc_{stem}.yaml')
    with open(pretext) as f:
        pretext_cfg = yaml.safe_load(f)
    run = pretext_cfg['model_args']
    source = run.get('second_encoder_args', {}) if second else run
    assert args['base_encoder'] == (run.get('second_encoder') if second else run['base_encoder'])
    assert all(source[k] == v for k, v in args.items() if k not in ('base_encoder', 'pretrain', 'num_class'))
    assert cfg['weights'] == f"{pretext_cfg['work_dir']}/epoch{pretext_cfg['num_epoch']}_model.pt"
    if task == 'linear_evaluation':
        assert (cfg['base_lr'], cfg['batch_size'], cfg['num_epoch'], cfg['step']) == (0.1, 64, 80, [50, 70])
        assert (cfg['weight_decay'], cfg['nesterov'], train['l_ratio']) == (0.0, False, [0.5, 1.0])
    else:
        assert cfg['knn_k'] == [1] and train['l_ratio'] == [0.95]
