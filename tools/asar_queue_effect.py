"""What `asar_compat` changes in one ASAR active-sampling step.

Builds the ASAR model of a pretraining config (through `pretrain_asar`, `behaviour` presets
included) twice from the same initial state, once with `asar_compat: true` (the original's
untransposed dequeue block) and once with `false`, runs one step with active sampling on the same
views of random N(0, 0.5^2) clips, and reports how the written queue columns differ and what
they hold: new keys, the displaced keys (the fix keeps some of them), or feature-dimension
vectors of the old block (the original's defect).

    python tools/asar_queue_effect.py --config config/ntu60/pretext/pretext_asar_xsub.yaml
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from feeder.views import make_views  # noqa: E402
from torchlight.registry import MODELS, TASKS  # noqa: E402


def matches(rows, pool, tol=1e-5):
    """How many of `rows` equal some row of `pool`."""
    return int((torch.cdist(rows, pool).amin(dim=1) < tol).sum())


def queue_effect(config, overrides=(), seed=0):
    cfg = TASKS.get('pretrain_asar').build_config(['--config', config] + list(overrides))
    cls, args = MODELS.get(cfg['model']), dict(cfg['model_args'])
    n, frames = cfg['batch_size'], 50
    torch.manual_seed(seed)
    models = {'compat': cls(**{**args, 'asar_compat': True}), 'fixed': cls(**{**args, 'asar_compat': False})}
    models['fixed'].load_state_dict(models['compat'].state_dict())
    gen = torch.Generator().manual_seed(seed + 1)
    clips = torch.randn(n, 3, frames, 25, 2, generator=gen) * 0.5
    view_args = {k: v for k, v in cfg['train_feeder_args'].items() if k in ('shear_amplitude', 'temperal_padding_ratio')}
    views = make_views(clips, cls.views, gen, view_args)
    before = models['compat'].queue.clone()
    ptr = int(models['compat'].queue_ptr)
    columns = (ptr + torch.arange(n)) % before.shape[1]
    report = {}
    for name, model in models.items():
        model.train()
        torch.manual_seed(seed + 2)
        model(*views, epoch=model.active_epoch + 1)
        written = model.queue[:, columns].T
        displaced = matches(written, before[:, columns].T)
        dimensions = matches(written, before[:, columns])
        report[name] = {'displaced keys': displaced, 'feature-dimension rows': dimensions,
                        'new keys': n - displaced - dimensions}
    diff = (models['compat'].queue - models['fixed'].queue).abs()
    report['max abs queue difference'] = diff.max().item()
    report['columns differing'] = int((diff.amax(dim=0) > 0).sum())
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', required=True, help='ASAR pretraining YAML file')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('overrides', nargs='*', help='task options after --, e.g. -- --model_args.queue_size 4096')
    args = parser.parse_args(argv)
    report = queue_effect(args.config, args.overrides, args.seed)
    for key, value in report.items():
        print(f'{key}: {value}')
    return report


if __name__ == '__main__':
    main()
