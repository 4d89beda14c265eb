"""HiCo through the command line: pretrain_hico for 2 epochs (tiny GRU variant, crop_pose views,
true frame counts from num_frame_path), then knn_retrieval and linear_evaluation on its
checkpoint with `weights_prefix: encoder_q.`; and the shipped HiCo configs' reference values."""
import json
import os

import numpy as np
import pytest
import torch

import main
from tests.conftest import ROOT, write_dataset
from torchlight.config import build_config
from torchlight.registry import TASKS

FRAMES = 8   # input_size of the tiny runs: s_input_size = 8 * 3
TINY_HICO = {'base_encoder': 'hico_encoder', 'encoder': 'GRU', 't_input_size': 150, 's_input_size': 3 * FRAMES,
             'hidden_size': 8, 'num_head': 2, 'granularity': 4}
PROJECTORS = ['encoder_q.clip_proj', 'encoder_q.part_proj', 'encoder_q.td_proj', 'encoder_q.sd_proj',
              'encoder_q.instance_proj']


def split_args(prefix, data, num_frame, l_ratio):
    return [f'--{prefix}.data_path', data[0], f'--{prefix}.label_path', data[1],
            f'--{prefix}.num_frame_path', num_frame, f'--{prefix}.l_ratio', str(l_ratio),
            f'--{prefix}.input_size', str(FRAMES)]


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp('hico'))
    data = {s: write_dataset(folder, s, n, seed=i) for i, (s, n) in enumerate((('train', 16), ('val', 8)))}
    frames = {}
    for split, (path, _) in data.items():   # true lengths 12..20 of the 20 stored frames
        n = np.load(path).shape[0]
        frames[split] = os.path.join(folder, f'{split}_num_frame.npy')
        np.save(frames[split], 12 + np.arange(n) % 9)
    work = os.path.join(folder, 'pretext')
    argv = ['pretrain_hico', '--work_dir', work,
            '--model_args', json.dumps({**TINY_HICO, 'feature_dim': 8, 'queue_size': 20, 'momentum': 0.9}),
            *split_args('train_feeder_args', data['train'], frames['train'], [0.1, 1.0]),
            '--batch_size', '8', '--num_epoch', '2', '--num_worker', '0', '--use_gpu', 'false',
            '--print_log', 'false', '--save_interval', '1', '--log_interval', '1']
    assert main.main(argv) == 0
    return {'folder': folder, 'data': data, 'frames': frames, 'work': work}


def test_pretraining_writes_reference_format_checkpoints(pretrained):
    log = open(os.path.join(pretrained['work'], 'log.txt')).read()
    assert "views ('crop_pose', 'crop_pose')" in log and 'Epoch 2 done' in log
    for term in ('loss_clip', 'loss_part', 'loss_domain_t', 'loss_domain_s', 'loss_instance', 'pos_top1'):
        assert term in log
    state = torch.load(os.path.join(pretrained['work'], 'epoch2_model.pt'), weights_only=True)
    assert state['c_queue'].shape == (8, 4 * 20) and int(state['c_queue_ptr']) == 2 * 2 * 8 * 4 % 80 == 48
    assert int(state['i_queue_ptr']) == 2 * 2 * 8 % 20 == 12
    assert any(k.startswith('encoder_q.hi_encoder.t_encoder.weight_ih_l0') for k in state)


def eval_argv(task, pretrained, name, extra=()):
    return [task, '--work_dir', os.path.join(pretrained['folder'], name), '--model', 'hico',
            '--model_args', json.dumps({**TINY_HICO, 'pretrain': False}),
            '--weights', os.path.join(pretrained['work'], 'epoch2_model.pt'),
            '--weights_prefix', 'encoder_q.', '--ignore_weights', *PROJECTORS,
            *split_args('train_feeder_args', pretrained['data']['train'], pretrained['frames']['train'], [0.95]),
            *split_args('test_feeder_args', pretrained['data']['val'], pretrained['frames']['val'], [0.95]),
            '--num_worker', '0', '--use_gpu', 'false', '--print_log', 'false', *extra]


def test_knn_retrieval_on_the_pretrained_encoder(pretrained):
    assert main.main(eval_argv('knn_retrieval', pretrained, 'knn', ['--knn_k', '1'])) == 0
    work = os.path.join(pretrained['folder'], 'knn')
    result = json.load(open(os.path.join(work, 'knn_results.json')))
    assert 0.0 <= result['k=1'] <= 1.0
    log = open(os.path.join(work, 'log.txt')).read()
    assert 'Filter [encoder_q.instance_proj]' in log and '; 2 missing' in log   # only the fc is new


def test_linear_evaluation_caches_centre_cropped_features(pretrained):
    argv = eval_argv('linear_evaluation', pretrained, 'linear',
                     ['--num_epoch', '2', '--step', '[1]', '--base_lr', '2.0', '--batch_size', '8',
                      '--test_batch_size', '8', '--save_result', 'false'])
    assert main.main(argv) == 0
    log = open(os.path.join(pretrained['folder'], 'linear', 'log.txt')).read()
    assert 'Cached features: train (16, 64), test (8, 64)' in log and 'RESULT final epoch 2' in log


def test_shipped_configs_hold_the_reference_protocol():
    for split in ('xsub', 'xview'):
        folder = os.path.join(ROOT, 'config', 'ntu60', 'hico', split)
        pre = build_config(TASKS.get('pretrain_hico').options, ['--config', os.path.join(folder, 'pretext_joint.yaml')])
        assert (pre['base_lr'], pre['batch_size'], pre['num_epoch'], pre['step']) == (0.01, 64, 451, [351])
        assert pre['model_args']['queue_size'] == 2048 and pre['model_args']['Temperature'] == 0.2
        assert pre['train_feeder_args']['l_ratio'] == [0.1, 1.0] and pre['nesterov'] is False
        lin = build_config(TASKS.get('linear_evaluation').options,
                           ['--config', os.path.join(folder, 'linear_eval_joint.yaml')])
        assert (lin['base_lr'], lin['batch_size'], lin['num_epoch'], lin['step']) == (2.0, 1024, 80, [50, 70])
        assert lin['train_feeder_args']['l_ratio'] == lin['test_feeder_args']['l_ratio'] == [0.95]
        assert lin['cache_features'] is True and lin['weights_prefix'] == 'encoder_q.'
        knn = build_config(TASKS.get('knn_retrieval').options, ['--config', os.path.join(folder, 'knn_joint.yaml')])
        assert knn['knn_k'] == [1] and knn['ignore_weights'] == lin['ignore_weights']
