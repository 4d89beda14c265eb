#!/usr/bin/env python
"""skeleton-ssl command line: python main.py <task> --config x.yaml [--key value ...]

`python main.py --help` lists the tasks; `python main.py <task> --help` lists its options.
Launch with `torchrun --nproc_per_node=N main.py <task> ...` for distributed training.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _task_list(tasks):
    width = max(len(name) for name, _ in tasks)
    return '\n'.join(f'  {name:<{width}}  {cls.description}' for name, cls in tasks)


def _usage(tasks):
    return ('usage: python main.py <task> --config FILE [--key value ...]\n\n'
            f'tasks:\n{_task_list(tasks)}\n\n'
            'Options: python main.py <task> --help. Nested keys: --model_args.queue_size 1024.\n')


def _task_help(name, cls):
    lines = [f'usage: python main.py {name} --config FILE [--key value ...]', '', cls.description, '',
             'options (default):']
    for key, opt in cls.options.items():
        lines.append(f'  --{key:<22} {opt.help} (default: {opt.default!r})')
    lines += behaviour_help(cls)
    lines += ['', 'Values are read as YAML scalars; several values make a list (--step 250 280);',
              'nested keys use dots (--model_args.queue_size 1024, --train_feeder_args.data_path X).']
    return '\n'.join(lines)


def behaviour_help(cls):
    """What `--behaviour reference | fixed` sets for the task's default model."""
    if cls.behaviour_scope is None:
        return []
    model = cls.options['model'].default
    presets = {choice: cls.behaviour_preset(choice, {'model': model}) for choice in ('reference', 'fixed')}
    if not any(presets.values()):
        return ['', '--behaviour reference | fixed: the compat options it sets depend on the model '
                    '(docs/METHODS.md#reproduction-and-fixed-behaviour).']
    lines = ['', f'--behaviour reference | fixed sets, for model {model} (keys set next to it or later win):']
    for choice, preset in presets.items():
        lines.append(f'  {choice:<9} ' + ', '.join(f'{k}: {v!r}' for k, v in preset.items()))
    return lines


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    from torchlight import dist
    dist.keep_freed_memory()
    from torchlight.config import ConfigError
    from torchlight.io import WeightsError
    from torchlight.registry import TASKS
    from feeder.array_feeder import DataError
    tasks = TASKS.items()
    if not argv or argv[0] in ('-h', '--help'):
        print(_usage(tasks))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in TASKS:
        print(f'unknown task {name!r}\n\n{_usage(tasks)}', file=sys.stderr)
        return 2
    cls = TASKS.get(name)
    if '-h' in rest or '--help' in rest:
        print(_task_help(name, cls))
        return 0
    try:
        processor = cls.from_argv(rest)
        processor.start()
    except (ConfigError, DataError, WeightsError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    finally:
        dist.cleanup()
    return 0


if __name__ == '__main__':
    sys.exit(main())
