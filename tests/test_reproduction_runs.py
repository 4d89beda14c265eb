"""Shipped reproduction files run through `main.py` as they are, with the compat options on,
shrunk to tiny data and models by command-line overrides (everything else from the file)."""
import os
import pickle

import torch
import yaml

from main import main
from tests.conftest import ROOT

RUN = ['--num_worker', '0', '--use_gpu', 'false', '--print_log', 'false', '--device', 'cpu']
ST_GCN = ['--model_args.hidden_channels', '2', '--model_args.hidden_dim', '8']


def config(name):
    return os.path.join(ROOT, 'config', name)


def data(tiny_data, *splits):
    words = []
    for split, feeder in zip(('train', 'val'), splits):
        words += [f'--{feeder}_feeder_args.data_path', tiny_data[split][0],
                  f'--{feeder}_feeder_args.label_path', tiny_data[split][1]]
    return words


def effective(work):
    with open(os.path.join(work, 'config.yaml')) as f:
        return yaml.safe_load(f)


def test_aimclr_reproduction_pretext_and_linear(tiny_data, tmp_path):
    work = str(tmp_path / 'pre')
    assert main(['pretrain_aimclr', '--config', config('ntu60/pretext/pretext_aimclr_xsub_joint.yaml'),
                 '--work_dir', work, *data(tiny_data, 'train'), *ST_GCN, *RUN,
                 '--model_args.queue_size', '16', '--model_args.feature_dim', '8',
                 '--batch_size', '8', '--num_epoch', '2', '--mining_epoch', '1']) == 0
    cfg = effective(work)
    assert (cfg['model_args']['eadm'], cfg['model_args']['key_init']) == ('off', 'reference')
    assert (cfg['train_feeder_args']['blur_normalized'], cfg['train_feeder_args']['aug_order']) == (False, 'reference')
    assert main(['linear_evaluation', '--config', config('ntu60/linear_eval/linear_eval_aimclr_xsub_joint.yaml'),
                 '--work_dir', str(tmp_path / 'lin'), '--weights', os.path.join(work, 'epoch2_model.pt'),
                 *data(tiny_data, 'train', 'test'), *ST_GCN, *RUN, '--model_args.num_class', '4',
                 '--num_epoch', '2', '--batch_size', '8']) == 0


def test_asar_reproduction_runs_active_sampling_with_the_untransposed_block(tiny_data, tmp_path):
    work = str(tmp_path / 'asar')
    # asar_compat needs the batch to equal feature_dim (128 in the shipped files; 8 here)
    assert main(['pretrain_asar', '--config', config('ntu60/pretext/pretext_asar_xsub.yaml'),
                 '--work_dir', work, *data(tiny_data, 'train'), *ST_GCN, *RUN,
                 '--model_args.queue_size', '32', '--model_args.feature_dim', '8',
                 '--model_args.active_epoch', '0', '--batch_size', '8', '--num_epoch', '1']) == 0
    assert effective(work)['model_args']['asar_compat'] is True
    assert 'enqueued' in open(os.path.join(work, 'log.txt')).read()


def test_hico_reproduction_pretext_and_knn(tiny_data, tmp_path):
    work = str(tmp_path / 'hico')
    tiny = ['--model_args.hidden_size', '8', '--model_args.num_head', '2']
    assert main(['pretrain_hico', '--config', config('ntu60/hico/xsub/pretext_joint.yaml'), '--work_dir', work,
                 '--train_feeder_args.data_path', tiny_data['train'][0], '--train_feeder_args.num_frame_path', '',
                 *tiny, *RUN, '--model_args.queue_size', '8', '--batch_size', '8', '--num_epoch', '1']) == 0
    assert effective(work)['model_args']['queue_ptr_mod'] == 'K'
    assert main(['knn_retrieval', '--config', config('ntu60/hico/xsub/knn_joint.yaml'), '--work_dir', str(tmp_path / 'knn'),
                 '--weights', os.path.join(work, 'epoch1_model.pt'), *data(tiny_data, 'train', 'test'),
                 '--train_feeder_args.num_frame_path', '', '--test_feeder_args.num_frame_path', '', *tiny, *RUN]) == 0


def test_ascal_semi_reproduction_runs_both_stages(tiny_data, tmp_path):
    frames = ['--train_feeder_args.selected_frames', '20']
    lstm = ['--model_args.hidden_units', '8']
    pre = str(tmp_path / 'pre')
    assert main(['pretrain_ascal', '--config', config('ntu60/ascal/xsub/pretext_ascal_xsub.yaml'), '--work_dir', pre,
                 *data(tiny_data, 'train'), *frames, *lstm, *RUN, '--model_args.queue_size', '16',
                 '--batch_size', '8', '--num_epoch', '2']) == 0
    stage1 = str(tmp_path / 'semi')
    both = [*data(tiny_data, 'train', 'test'), *frames, '--test_feeder_args.selected_frames', '20', *lstm, *RUN,
            '--model_args.num_class', '4', '--batch_size', '4', '--num_epoch', '2']
    assert main(['finetune_evaluation', '--config', config('ntu60/ascal/xsub/semi_ascal_xsub_10p.yaml'),
                 '--work_dir', stage1, '--weights', os.path.join(pre, 'epoch2_model.pt'),
                 '--train_feeder_args.label_percent', '0.5', *both]) == 0
    # the original's subset: the first int(0.5 * 24 / 4) = 3 clips of each class in file order
    with open(tiny_data['train'][1], 'rb') as f:
        names, labels = pickle.load(f)
    expected = [n for i, n in enumerate(names) if labels[:i].count(labels[i]) < 3]
    assert open(os.path.join(stage1, 'labelled_subset.txt')).read().split() == expected
    stage2 = str(tmp_path / 'stage2')
    assert main(['linear_evaluation', '--config', config('ntu60/ascal/xsub/semi_ascal_xsub_10p_stage2.yaml'),
                 '--work_dir', stage2, '--weights', os.path.join(stage1, 'best_train_model.pt'), *both]) == 0
    log = open(os.path.join(stage2, 'log.txt')).read()
    # the whole stage-1 model is loaded (encoder and its classifier: 6 tensors, nothing missing),
    # and only the classifier trains, on all 24 labelled clips
    assert 'Loaded 6 tensors' in log and 'issing' not in log
    assert '2 trainable tensors' in log and 'Cached features: train (24, 8)' in log
    first = torch.load(os.path.join(stage1, 'best_train_model.pt'), weights_only=True)
    assert sorted(first) == sorted(torch.load(os.path.join(stage2, 'best_model.pt'), weights_only=True))
