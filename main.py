#!/usr/bin/env python
"""skeleton-ssl command line: python main.py <task> --config x.yaml [--key value ...]

`python main.py --help` lists the tasks; `python main.py <task> --help` lists its options.
Launch with `torchrun --nproc_per_node=N main.py <task> ...` for distributed training.
"""
import os
import sys
import time

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


RANK_EXIT_DELAY_S = 3


def user_errors():
    """Exception classes that mean bad input (options, files, work_dir), not a bug: main exits
    with code 2 and one line instead of a traceback."""
    from torchlight.config import ConfigError
    from torchlight.io import DataFileError, WeightsError, WorkDirError   # DataFileError = feeder DataError
    return ConfigError, DataFileError, WeightsError, WorkDirError


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    from torchlight import dist
    dist.keep_freed_memory()
    from torchlight.registry import TASKS
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
    processor = None
    try:
        processor = cls.from_argv(rest)
        processor.start()
    except user_errors() as err:
        line = 'error: ' + ' '.join(str(err).split())
        if processor is not None:
            processor.log(line, echo=False)              # the run's log says why it stopped
        if int(os.environ.get('RANK', '0')) == 0:       # once, not once per torchrun rank
            print(line, file=sys.stderr)
        else:   # torchrun stops every rank once one exits: give rank 0 the time to print
            time.sleep(RANK_EXIT_DELAY_S)
        return 2
    except BaseException as err:
        if processor is not None:
            processor.log(f'failed: {type(err).__name__}: {err}', echo=False)
        raise
    finally:
        if processor is not None:
            processor.close()
        dist.cleanup()
    return 0


if __name__ == '__main__':
    sys.exit(main())
