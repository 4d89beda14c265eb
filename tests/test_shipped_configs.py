"""Every YAML under config/ goes through its task (no real data needed): the task's config system
(`behaviour` presets included), the model built from the effective model_args (one build per
distinct model configuration), and the feeders built on a tiny stand-in array of the layout the
file expects, with one batch of the method's views drawn from it."""
import functools
import glob
import inspect
import json
import os
import pickle

import numpy as np
import pytest
import torch
import yaml

from feeder.views import eval_view, make_views
from tests.conftest import ROOT
from torchlight.config import check_kwargs
from torchlight.registry import ENCODERS, FEEDERS, MODELS, TASKS

# benchmark.yaml files are suites of tools/run_benchmark.py (tests/test_run_benchmark.py), not task configs
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, 'config', '**', '*.yaml'), recursive=True)
                 if os.path.basename(p) != 'benchmark.yaml')


def task_of(path, raw):
    """The task a shipped file is meant for, from its folder / file name."""
    name = os.path.basename(path)
    parts = os.path.relpath(path, os.path.join(ROOT, 'config')).split(os.sep)
    if 'pretext' in parts or name.startswith(('pretext_', 'pretrain')):
        return 'pretrain_' + MODELS.canonical(raw['model'])
    if 'linear_eval' in parts or name.startswith('linear') or name.endswith('_stage2.yaml'):
        return 'linear_evaluation'
    if {'finetune', 'semi'} & set(parts) or name.startswith(('finetune', 'semi', 'supervised')):
        return 'finetune_evaluation'
    if 'knn' in name:
        return 'knn_retrieval'
    raise AssertionError(f'cannot tell the task of {path}: add a rule to task_of')


def load(path, *extra):
    with open(path) as f:
        raw = yaml.safe_load(f)
    task = TASKS.get(task_of(path, raw))
    return task, raw, task.build_config(['--config', path, *extra])


@functools.lru_cache(maxsize=None)
def build_model(model, args_json):
    args = json.loads(args_json)
    with torch.random.fork_rng():
        return type(MODELS.get(model)(**args)).__name__


def stand_in_data(folder, split, args):
    """A 4-clip array with the layout the feeder args imply (frames, joints, persons)."""
    nucla = 'nw_ucla' in args['data_path']
    frames = 60 if nucla else (300 if ('num_frame_path' in args or 'selected_frames' in args) else 50)
    shape = (4, 3, frames, 20 if nucla else 25, 1 if nucla else 2)
    data = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    out = {'data_path': os.path.join(folder, f'{split}_data.npy')}
    np.save(out['data_path'], data)
    if args.get('label_path'):
        out['label_path'] = os.path.join(folder, f'{split}_label.pkl')
        with open(out['label_path'], 'wb') as f:
            pickle.dump(([f's{i}' for i in range(4)], [0, 1, 0, 1]), f)
    if args.get('num_frame_path'):
        out['num_frame_path'] = os.path.join(folder, f'{split}_num_frame.npy')
        np.save(out['num_frame_path'], np.array([300, 120, 64, 200]))
    return out


def test_configs_are_shipped():
    names = {os.path.relpath(p, ROOT) for p in CONFIGS}
    for ds, split in (('ntu60', 'xsub'), ('ntu60', 'xview'), ('pkummd', 'pkup1cs')):
        for stream in ('joint', 'motion', 'bone'):
            assert f'config/{ds}/pretext/pretext_aimclr_{split}_{stream}.yaml' in names
            assert f'config/{ds}/linear_eval/linear_eval_aimclr_{split}_{stream}.yaml' in names
    assert 'config/demo/pretrain_aimclr.yaml' in names


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_builds_through_its_task(path, tmp_path):
    task, raw, cfg = load(path)
    model_cls = MODELS.get(cfg['model'])
    args = dict(cfg['model_args'])
    if task_of(path, raw).startswith('pretrain_'):
        args.update({k: cfg[o] for k, o in task.method_options.items() if k not in args and o in cfg
                     and k in model_cls.__init__.__code__.co_varnames})
    else:
        args.setdefault('num_class', 60)
        args['pretrain'] = False
    default = inspect.signature(model_cls).parameters.get('base_encoder')   # the method's own encoder
    default = default.default if default is not None else 'net.st_gcn.Model'
    check_kwargs(args, 'model_args', model_cls, ENCODERS.get(args.get('base_encoder', default)))
    assert build_model(cfg['model'], json.dumps(args, sort_keys=True))
    assert cfg['stream'] in ('joint', 'motion', 'bone') and cfg['optimizer'] in ('SGD', 'Adam', 'AdamW')
    if (cfg['model_args'].get('pretrain', True) is False and not hasattr(model_cls, 'adapt_weights')
            and args.get('base_encoder') != 'raw_coords'):   # the raw-coordinate baseline loads no weights
        # the key encoder is dropped by name, or by selecting the query branch (weights_prefix);
        # a method with adapt_weights (MAMP) drops its decoder itself
        assert cfg['ignore_weights'] and ('encoder_k' in cfg['ignore_weights'] or cfg['weights_prefix'])
    if cfg['stream'] != 'joint':   # joint/motion/bone files differ in the stream only
        assert cfg['stream'] in os.path.basename(path)
    assert '{' not in cfg['work_dir'] and '{' not in (cfg['weights'] or '')
    for split in ('train', 'test'):
        feeder_args = cfg[f'{split}_feeder_args']
        if not feeder_args:
            continue
        feeder_cls = FEEDERS.get(cfg[f'{split}_feeder'])
        check_kwargs(feeder_args, f'{split}_feeder_args', feeder_cls)
        dataset = feeder_cls(**{**feeder_args, **stand_in_data(str(tmp_path), split, feeder_args)})
        x = torch.stack([dataset[i][0] for i in range(2)])
        if split == 'train' and task_of(path, raw).startswith('pretrain_'):
            kinds = model_cls.views
        else:
            kinds = (eval_view(dataset.view_args, split == 'train'),)
        views = make_views(x, kinds, torch.Generator().manual_seed(0), dataset.view_args,
                           dataset.frame_counts(np.arange(2)))
        assert all(v.shape[:2] == (2, 3) and torch.isfinite(v).all() for v in views)
