"""Every YAML under config/ loads through its task's config system (no data needed): known keys,
model / encoder / feeder names resolve, model_args and feeder args pass the signature checks."""
import glob
import inspect
import os

import pytest
import yaml

from tests.conftest import ROOT
from torchlight.config import build_config, check_kwargs
from torchlight.registry import ENCODERS, FEEDERS, MODELS, TASKS

CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'config', '**', '*.yaml'), recursive=True))


def task_of(path, raw):
    """The task a shipped file is meant for, from its folder / file name."""
    name = os.path.basename(path)
    parts = os.path.relpath(path, os.path.join(ROOT, 'config')).split(os.sep)
    if 'pretext' in parts or name.startswith(('pretext_', 'pretrain_')):
        return 'pretrain_' + MODELS.canonical(raw['model'])
    if 'linear_eval' in parts or name.startswith('linear_eval'):
        return 'linear_evaluation'
    if {'finetune', 'semi'} & set(parts) or name.startswith(('finetune', 'semi')):
        return 'finetune_evaluation'
    if 'knn' in name:
        return 'knn_retrieval'
    raise AssertionError(f'cannot tell the task of {path}: add a rule to task_of')


def test_configs_are_shipped():
    names = {os.path.relpath(p, ROOT) for p in CONFIGS}
    for ds, split in (('ntu60', 'xsub'), ('ntu60', 'xview'), ('pkummd', 'pkup1cs')):
        for stream in ('joint', 'motion', 'bone'):
            assert f'config/{ds}/pretext/pretext_aimclr_{split}_{stream}.yaml' in names
            assert f'config/{ds}/linear_eval/linear_eval_aimclr_{split}_{stream}.yaml' in names
    assert 'config/demo/pretrain_aimclr.yaml' in names


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_loads_through_its_task(path):
    with open(path) as f:
        raw = yaml.safe_load(f)
    task = TASKS.get(task_of(path, raw))
    cfg = build_config(task.options, ['--config', path])
    model_cls = MODELS.get(cfg['model'])
    args = dict(cfg['model_args'])
    default = inspect.signature(model_cls).parameters.get('base_encoder')   # the method's own encoder
    default = default.default if default is not None else 'net.st_gcn.Model'
    encoder_cls = ENCODERS.get(args.get('base_encoder', default))
    check_kwargs(args, 'model_args', model_cls, encoder_cls)
    for split in ('train', 'test'):
        if cfg[f'{split}_feeder_args']:
            check_kwargs(cfg[f'{split}_feeder_args'], f'{split}_feeder_args', FEEDERS.get(cfg[f'{split}_feeder']))
    assert cfg['stream'] in ('joint', 'motion', 'bone') and cfg['optimizer'] in ('SGD', 'Adam', 'AdamW')
    if cfg['model_args'].get('pretrain', True) is False and not hasattr(model_cls, 'adapt_weights'):
        # the key encoder is dropped by name, or by selecting the query branch (weights_prefix);
        # a method with adapt_weights (MAMP) drops its decoder itself
        assert cfg['ignore_weights'] and ('encoder_k' in cfg['ignore_weights'] or cfg['weights_prefix'])
    if cfg['stream'] != 'joint':   # joint/motion/bone files differ in the stream only
        assert cfg['stream'] in os.path.basename(path)


def test_semi_configs_match_the_reference_protocol():
    for pct, tag in ((0.01, '1p'), (0.1, '10p')):
        path = os.path.join(ROOT, 'config', 'ntu60', 'semi', f'semi_aimclr_xsub_joint_{tag}.yaml')
        cfg = build_config(TASKS.get('finetune_evaluation').options, ['--config', path])
        assert cfg['train_feeder_args']['label_percent'] == pct and cfg['grad_clip'] == 2
        assert FEEDERS.get(cfg['train_feeder']).__name__ == 'SemiArrayDataset'


def test_reference_pretext_values():
    path = os.path.join(ROOT, 'config', 'ntu60', 'pretext', 'pretext_aimclr_xsub_joint.yaml')
    cfg = build_config(TASKS.get('pretrain_aimclr').options, ['--config', path])
    assert cfg['weight_decay'] == 1e-4 and cfg['nesterov'] is False and cfg['step'] == [250]
    assert cfg['mining_epoch'] == 150 and cfg['topk'] == 1 and cfg['num_epoch'] == 300
    assert cfg['model_args']['queue_size'] == 32768 and cfg['batch_size'] == 128
