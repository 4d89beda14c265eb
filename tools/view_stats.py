"""Per-channel standard deviation of the training views a pretraining config makes.

Draws `--clips` clips of i.i.d. N(0, `--std`^2) values, shape (N, 3, `--frames`, 25, 2), writes
them to a temporary .npy file, points the config's training feeder at it, and builds the views
of the configured method exactly as `python main.py <task>` does (task config with its
`behaviour` presets and command-line overrides, the feeder's augmentation keys, `make_views`,
the `stream`). Prints the std of every view per coordinate channel.

    python tools/view_stats.py --config config/ntu60/pretext/pretext_aimclr_xsub_joint.yaml
    python tools/view_stats.py --config ... --task pretrain_aimclr --clips 3000 -- --behaviour fixed

This is how the reproduction of the AimCLR extreme view is checked: the reference feeder gives
0.608 / 0.605 / 0.607 on such clips (docs/METHODS.md, "Reproduction and fixed behaviour").
"""
import argparse
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from feeder.views import make_views  # noqa: E402
from processor.base import configured_layout, stream_input  # noqa: E402
from torchlight import dist  # noqa: E402
from torchlight.config import check_kwargs  # noqa: E402
from torchlight.registry import FEEDERS, MODELS, TASKS  # noqa: E402


def view_stds(config, task=None, overrides=(), clips=3000, std=0.5, frames=50, seed=0, batch=500):
    """{f'{position} {kind}': per-channel std (3,) of that view} over `clips` random clips."""
    rng = np.random.default_rng(seed)
    data = rng.normal(0.0, std, size=(clips, 3, frames, 25, 2)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'clips.npy')
        np.save(path, data)
        if task is None:
            import yaml
            with open(config) as f:
                task = 'pretrain_' + MODELS.canonical(yaml.safe_load(f)['model'])
        cfg = TASKS.get(task).build_config(['--config', config, '--train_feeder_args.data_path', path,
                                            '--train_feeder_args.label_path', ''] + list(overrides))
        feeder_cls = FEEDERS.get(cfg['train_feeder'])
        check_kwargs(cfg['train_feeder_args'], 'train_feeder_args', feeder_cls)
        dataset = feeder_cls(**cfg['train_feeder_args'])
        kinds = MODELS.get(cfg['model']).views
        layout = configured_layout(cfg)
        sums = np.zeros((len(kinds), 3))
        squares = np.zeros((len(kinds), 3))
        count = 0
        for step, start in enumerate(range(0, clips, batch)):
            x = torch.from_numpy(data[start:start + batch])
            gen = dist.generator(cfg['seed'], 'views', 1, step, 0)
            for i, view in enumerate(make_views(x, kinds, gen, dataset.view_args)):
                view = stream_input(view, cfg, layout).double()   # what the encoder gets
                sums[i] += view.sum(dim=(0, 2, 3, 4)).numpy()
                squares[i] += (view * view).sum(dim=(0, 2, 3, 4)).numpy()
            count += x.numel() // 3
    means = sums / count
    stds = np.sqrt(squares / count - means ** 2)
    return {f'{i} {kind}': stds[i] for i, kind in enumerate(kinds)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', required=True, help='pretraining YAML file')
    parser.add_argument('--task', default=None, help='task (default: pretrain_<model of the file>)')
    parser.add_argument('--clips', type=int, default=3000)
    parser.add_argument('--std', type=float, default=0.5, help='std of the random clip values')
    parser.add_argument('--frames', type=int, default=50)
    parser.add_argument('--seed', type=int, default=0, help='seed of the clip values (views: the config seed)')
    parser.add_argument('overrides', nargs='*', help='task options after --, e.g. -- --behaviour fixed')
    args = parser.parse_args(argv)
    stats = view_stds(args.config, args.task, args.overrides, args.clips, args.std, args.frames, args.seed)
    print(f'{args.clips} clips N(0, {args.std}^2), T {args.frames}, V 25, M 2; per-channel std (x / y / z):')
    for name, values in stats.items():
        print(f'  view {name:<12} ' + ' / '.join(f'{v:.3f}' for v in values))
    return stats


if __name__ == '__main__':
    main()
