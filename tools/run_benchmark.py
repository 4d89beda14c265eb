#!/usr/bin/env python
"""Runs a results benchmark end to end: prepare -> pretrain -> linear evaluation -> k-NN
(-> 3-stream ensemble), plus the untrained-encoder and raw-coordinate baselines, and writes the
table (JSON rows + Markdown).

    python tools/run_benchmark.py --suite config/nw_ucla/benchmark.yaml              # the test table
    python tools/run_benchmark.py --suite config/nw_ucla/benchmark.yaml --split val   # model selection

Every stage is a `python main.py <task>` run of the shipped configs, so the numbers are what a
user gets from the same commands (`--dry-run` prints them). Finished stages are skipped, and an
interrupted pretraining continues from its last epoch (`--resume auto`), so the command can be
killed and started again. `--split val` pre-trains and probes on the suite's validation split
(built from the training views only) and writes the validation table; hyper-parameters are
chosen there (`--set` tries a change to every pretraining config, under a `--tag`; `--set
probe.KEY=VALUE` a change of the linear probe, on the untagged run's checkpoints; `--set
all.KEY=VALUE` a change of every stage, e.g. the encoder's width; `--set bone.KEY=VALUE` a change
of one stream's pretraining, e.g. a shorter schedule for the bone stream), and the
test split is evaluated once per final config. `--data VARIANT` runs a data variant of the suite
(the same splits preprocessed otherwise, e.g. the NW-UCLA body frame) in its own folders, with
rows labelled [VARIANT] and paired with the untrained encoder on the same data.
`--ensemble-weights J M B` fuses the 3-stream ensembles with other weights than the reference
0.6 / 0.4 / 0.6 (chosen on validation scores with `tools/ensemble.py --search`; finished stages
are not re-run, so this only re-fuses); those rows are kept beside the reference-weight ones.

The suite file (YAML) names the data splits, the prepare commands and the rows; see
config/nw_ucla/benchmark.yaml.
"""
import argparse
import datetime
import functools
import itertools
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time

import yaml
from tqdm import tqdm

PROVENANCE = 'provenance.json'   # in a job's folder: the commit and device of its latest stage
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tools.ensemble import REFERENCE_WEIGHTS, STREAMS, ensemble   # noqa: E402
from torchlight import files   # noqa: E402


class SuiteError(Exception):
    pass


# --------------------------------------------------------------------------- suite
def load_suite(path):
    try:
        with open(path) as f:
            suite = yaml.safe_load(f)
    except OSError as err:
        raise SuiteError(f'cannot read suite file {path}: {err.strerror}') from None
    except yaml.YAMLError as err:
        raise SuiteError(f'{path}: not valid YAML: {err}') from None
    if not isinstance(suite, dict):
        raise SuiteError(f'{path}: expected a mapping with keys name, splits, rows')
    for key in ('name', 'splits', 'rows', 'work_root'):
        if key not in suite:
            raise SuiteError(f'{path}: missing key {key!r}')
    check_split_paths(path, 'splits', suite['splits'])
    for i, row in enumerate(suite['rows']):
        for key in ('method', 'evaluate'):
            if key not in row:
                raise SuiteError(f'{path}: rows[{i}] needs {key!r}')
        if 'pretrain' in row and not (isinstance(row['pretrain'], list) and len(row['pretrain']) == 2):
            raise SuiteError(f'{path}: rows[{i}].pretrain must be [task, config file]')
        if 'supervised' in row and not isinstance(row['supervised'], str):
            raise SuiteError(f'{path}: rows[{i}].supervised must be a config file (finetune_evaluation)')
    for name, variant in (suite.get('data_variants') or {}).items():
        if not re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9_-]*', str(name)) or name in suite['splits'] \
                or name == suite.get('data'):
            raise SuiteError(f'{path}: data_variants: {name!r} must be a plain name (letters, digits, _ -) '
                             f'other than a split or the default data')
        if not isinstance(variant, dict) or set(variant.get('splits') or {}) != set(suite['splits']):
            raise SuiteError(f'{path}: data_variants.{name} needs splits {sorted(suite["splits"])} '
                             f'(and optionally prepare)')
        check_split_paths(path, f'data_variants.{name}.splits', variant['splits'])
    methods = {row['method']: row for row in suite['rows']}
    for i, row in enumerate(suite['rows']):
        source = row.get('weights_from')
        if source is not None and ('pretrain' in row or 'pretrain' not in methods.get(source, {})):
            raise SuiteError(f'{path}: rows[{i}].weights_from must name a row with its own pretrain '
                             f'(and the row none): got {source!r}')
    return suite


def check_split_paths(path, where, splits):
    """Every split of a suite (or of one of its data variants) names its four files."""
    for split, paths in splits.items():
        for key in ('train_data', 'train_label', 'test_data', 'test_label'):
            if key not in (paths or {}):
                raise SuiteError(f'{path}: {where}.{split} needs {key}')


def with_data_variant(suite, name):
    """The suite on its data variant `name` (other preprocessing of the same splits): the
    variant's data and prepare steps, a work root of its own, and rows labelled [name]."""
    variants = suite.get('data_variants') or {}
    if name not in variants:
        raise SuiteError(f'--data: no data variant {name!r} (the suite has {sorted(variants)})')
    return {**suite, 'splits': variants[name]['splits'], 'prepare': variants[name].get('prepare', {}),
            'work_root': f'{suite["work_root"]}_{name}', 'data': name, 'data_variant': True}


def variant_suffix(labels):
    """' [body, std]' for a row on data variant 'body' probed as variant 'std'; '' for none."""
    labels = [label for label in labels if label]
    return f' [{", ".join(labels)}]' if labels else ''


def read_config(path):
    with open(path) as f:
        return yaml.safe_load(f) or {}


def replace_options(options, replacements):
    """`options` (an argv list of --key value pairs) with the keys of `replacements` replaced."""
    replaced = set(replacements[::2])
    kept = [item for key, value in zip(options[::2], options[1::2]) if key not in replaced
            for item in (key, value)]
    return kept + list(replacements)


# --------------------------------------------------------------------------- one row
class Job:
    """One (row, stream, seed) of a suite on one split: its commands, folders and results."""

    def __init__(self, suite, row, stream, seed, split, tag, overrides, kind, at_epoch=None, probe=(),
                 pretrain_tag=None, shared=()):
        self.suite, self.row, self.stream, self.seed = suite, row, stream, seed
        self.at_epoch = at_epoch   # evaluate this intermediate checkpoint (None: the final one)
        self.split, self.tag, self.overrides, self.kind = split, tag, overrides, kind
        self.probe = list(probe)   # linear-evaluation overrides of a probe variant (--set probe.KEY=VALUE)
        self.shared = list(shared)   # overrides of every stage, e.g. the encoder's width (--set all.KEY=VALUE)
        self.suffix = variant_suffix([suite['data'] if suite.get('data_variant') else '', tag])
        # the variant whose pretraining is evaluated: a probe variant's is the untagged run's ('')
        pretrain_tag = tag if pretrain_tag is None else pretrain_tag
        # a row with weights_from evaluates (another part of) that row's pretrained checkpoint
        self.source = None
        if kind == 'ssl' and row.get('weights_from'):
            source_row = next(r for r in suite['rows'] if r['method'] == row['weights_from'])
            self.source = Job(suite, source_row, stream, seed, split, tag, overrides, kind, at_epoch,
                              pretrain_tag=pretrain_tag, shared=shared)
        self.pretrain_row = self.source.row if self.source else row
        folder = {'ssl': row['method'], 'untrained': f'untrained_{row["method"]}', 'raw': 'raw_coords',
                  'supervised': f'supervised_{row["method"]}'}[kind]
        root = suite['work_root'] + ('' if split == 'test' else f'_{split}')
        self.work_dir = os.path.join(root, folder + (f'_{tag}' if tag else ''), stream, f'seed{seed}')
        self._pretrain_dir = os.path.join(root, folder + (f'_{pretrain_tag}' if pretrain_tag else ''), stream,
                                          f'seed{seed}', 'pretrain')
        paths = suite['splits'][split]
        self.data = ['--train_feeder_args.data_path', paths['train_data'],
                     '--train_feeder_args.label_path', paths['train_label'],
                     '--test_feeder_args.data_path', paths['test_data'],
                     '--test_feeder_args.label_path', paths['test_label']]
        self.test_label = paths['test_label']
        self.common = ['--stream', stream, '--seed', str(seed), '--print_log', 'false']
        # an evaluation stage without its marker did not finish: its partial outputs are redone
        self.redo = ['--overwrite', 'true']

    # ----------------------------------------------------------------- commands
    @functools.cached_property
    def epochs(self):
        if self.kind != 'ssl':
            return 0
        cfg = read_config(self.pretrain_row['pretrain'][1])
        for key, value in zip(self.overrides[::2], self.overrides[1::2]):
            if key == '--num_epoch':
                return int(value)
        return int(cfg.get('num_epoch', 300))

    def pretrain_dir(self):
        return self.source.pretrain_dir() if self.source else self._pretrain_dir

    def final_checkpoint(self):
        return os.path.join(self.pretrain_dir(), f'epoch{self.epochs}_model.pt')

    def eval_dir(self, stage):
        return os.path.join(self.work_dir, stage + (f'_e{self.at_epoch}' if self.at_epoch else ''))

    def stages(self):
        """[(name, done-marker file, argv)] in order."""
        main = [sys.executable, 'main.py']
        if self.kind == 'supervised':   # the encoder trained from scratch with the labels: a reference, not SSL
            return [('finetune', os.path.join(self.eval_dir('finetune'), 'results.json'),
                     main + ['finetune_evaluation', '--config', self.row['supervised'], '--work_dir',
                             self.eval_dir('finetune')] + self.data + self.common + self.redo)]
        paths = self.suite['splits'][self.split]
        out = []
        weights = ['--weights', 'null']
        if self.at_epoch:   # the pretraining stage belongs to the final-epoch job
            weights = ['--weights', os.path.join(self.pretrain_dir(), f'epoch{self.at_epoch}_model.pt')]
        elif self.kind == 'ssl':
            task, config = self.pretrain_row['pretrain']
            # Pretraining reads the unlabelled training clips only (no label_path).
            out.append(('pretrain', self.final_checkpoint(),
                        main + [task, '--config', config, '--work_dir', self.pretrain_dir(), '--resume', 'auto',
                                '--train_feeder_args.data_path', paths['train_data'],
                                '--train_feeder_args.label_path', 'null'] + self.common + self.overrides
                        + self.shared))
            weights = ['--weights', self.final_checkpoint()]
        extra = list(self.row.get('evaluate_args', []))
        if self.kind == 'untrained':   # random weights, batch-norm statistics of the training clips
            extra += ['--recalibrate_bn', 'true']
        if self.kind == 'raw':
            extra = list(self.suite['raw_baseline']['evaluate_args'])
        config = self.row['evaluate'] if self.kind != 'raw' else self.suite['raw_baseline']['evaluate']
        out.append(('linear', os.path.join(self.eval_dir('linear'), 'results.json'),
                    main + ['linear_evaluation', '--config', config, '--work_dir',
                            self.eval_dir('linear')] + weights + self.data + self.common + self.redo + extra
                    + self.shared + self.probe))
        out.append(('knn', os.path.join(self.eval_dir('knn'), 'knn_results.json'),
                    main + ['knn_retrieval', '--config', config, '--work_dir', self.eval_dir('knn'),
                            '--knn_k', '1', '5'] + weights + self.data + self.common + self.redo + extra
                    + self.shared))
        return out

    # ----------------------------------------------------------------- results
    def pretrain_seconds(self):
        """Sum of the epoch times in the pretraining log up to the evaluated epoch (the last
        entry of each epoch, so a resumed run counts each epoch once)."""
        log = os.path.join(self.pretrain_dir(), 'log.txt')
        if not os.path.isfile(log):
            return None
        times = {}
        with open(log) as f:
            for line in f:
                m = re.search(r'Epoch (\d+) done .*\| ([\d.]+) s, ', line)
                if m and int(m.group(1)) <= (self.at_epoch or self.epochs):
                    times[int(m.group(1))] = float(m.group(2))
        return round(sum(times.values()), 1) if times else None

    @property
    def label(self):
        """The row's name in the results: the method, or which baseline of its architecture, plus
        the variant suffix (e.g. 'untrained HiCo Transformer [body]')."""
        architecture = self.row.get('architecture', self.row['method'])
        name = {'ssl': self.row['method'], 'untrained': f'untrained {architecture}',
                'supervised': f'supervised {architecture}', 'raw': 'raw coordinates'}[self.kind]
        return name + self.suffix

    def record_provenance(self):
        """Note the code and machine of a stage just run, for the job's row (also when a later
        stage or job of the same invocation fails)."""
        files.write_json(os.path.join(self.work_dir, PROVENANCE), {'commit': commit(), 'device': device_name()})

    def provenance(self):
        """{'commit', 'device'} of the job's latest stage, or None for a run from before the file."""
        path = os.path.join(self.work_dir, PROVENANCE)
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return json.load(f)

    def result(self, made):
        """The job's row; made: its provenance() (None: this machine and commit, for a run from
        before provenance files)."""
        supervised = self.kind == 'supervised'
        linear = json.load(open(os.path.join(self.eval_dir('finetune' if supervised else 'linear'), 'results.json')))
        # the supervised reference has no k-NN (its saved model is the test-selected best epoch)
        knn = {} if supervised else json.load(open(os.path.join(self.eval_dir('knn'), 'knn_results.json')))
        pct = lambda v: None if v is None else round(100 * v, 2)
        made = made or {'commit': commit(), 'device': device_name()}
        config = {'ssl': lambda: self.pretrain_row['pretrain'][1], 'untrained': lambda: self.row['evaluate'],
                  'supervised': lambda: self.row['supervised'],
                  'raw': lambda: self.suite['raw_baseline']['evaluate']}[self.kind]()
        return {
            'method': self.label,
            'kind': self.kind, 'stream': self.stream, 'seed': self.seed, 'split': self.split,
            'data': self.suite.get('data'),
            'linear_top1_final': pct(linear['final_epoch']['accuracy']['1']),
            'linear_top1_best': pct(linear['best_epoch']['accuracy']['1']),
            'linear_best_epoch': linear['best_epoch']['epoch'],
            'linear_top5_final': pct(linear['final_epoch']['accuracy']['5']),
            'knn_top1': pct(knn.get('k=1')), 'knn5_top1': pct(knn.get('k=5')),
            # 1 = every training clip embeds alike (a collapsed encoder)
            'train_mean_pairwise_cosine': knn.get('train_mean_pairwise_cosine'),
            'pretrain_seconds': self.pretrain_seconds() if self.kind == 'ssl' else 0,
            'epochs': self.at_epoch or self.epochs, 'device': made['device'], 'config': config,
            'overrides': ' '.join(self.overrides + self.shared + self.probe),
            # options of every stage (all.KEY): the encoder or its input differ from the plain baseline's
            'shared_overrides': ' '.join(self.shared), 'commit': made['commit'], 'work_dir': self.work_dir,
        }


# --------------------------------------------------------------------------- environment
@functools.lru_cache(maxsize=None)
def device_name():
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        with open('/proc/cpuinfo') as f:
            model = cpu_model(f.read())
    except OSError:
        model = None
    return f'cpu ({os.cpu_count()} cores, {model or platform.processor() or platform.machine()})'


def cpu_model(cpuinfo):
    """The first CPU's name from /proc/cpuinfo text, with its family and model numbers: VMs that all
    call themselves "AMD EPYC" ran the same benchmark 2.3x apart, and only these numbers tell them apart."""
    fields = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(':')
        if not sep:
            if fields:
                break               # the blank line after the first processor's block
            continue
        fields.setdefault(key.strip(), value.strip())
    name = fields.get('model name')
    if name and 'cpu family' in fields and 'model' in fields:
        return f"{name}, family {fields['cpu family']} model {fields['model']}"
    return name


@functools.lru_cache(maxsize=None)
def commit():
    """HEAD's short hash, '-dirty' when tracked code or configs differ from it. docs/ is left out:
    nothing there changes a figure, and the runner's own result tables live there, so a second
    invocation would otherwise mark every row it makes -dirty."""
    try:
        sha = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no', '--', '.',
                                ':(exclude)docs'], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return sha + ('-dirty' if dirty else '')
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def run_stage(argv, log_path):
    """Runs one stage; its output goes to log_path. Raises SuiteError naming the log on failure."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    start = time.time()
    with open(log_path, 'a') as log:
        log.write(f'\n$ {shlex.join(argv)}\n')
        log.flush()
        code = subprocess.run(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SuiteError(f'stage failed (exit {code}): {shlex.join(argv)}; see {log_path}')
    return time.time() - start


# --------------------------------------------------------------------------- tables
def mean_range(values):
    values = [v for v in values if v is not None]
    if not values:
        return '-'
    mean = sum(values) / len(values)
    if len(values) == 1 or min(values) == max(values):   # e.g. the k-NN of raw coordinates over probe seeds
        return f'{mean:.1f}'
    return f'{mean:.1f} ({min(values):.1f}-{max(values):.1f})'


def gain_over_untrained(row, rows, architectures):
    """(linear final, k-NN) top-1 of an SSL row minus those of its own untrained encoder (same
    architecture, stream and seed); None for other rows or when that baseline was not run."""
    name, _, labels = row['method'].partition(' [')
    labels = labels.rstrip(']').split(', ') if labels else []
    base = architectures.get(name)
    twins = {u['method']: u for u in rows if u.get('kind') == 'untrained' and u['stream'] == row['stream']
             and u['seed'] == row['seed'] and u.get('data') == row.get('data')}
    # a variant's own untrained row (same data and probe) when there is one, else the one on the
    # same data (a data variant's label comes first); a variant that changed every stage (all.KEY:
    # width, input scale) pairs only with its own, built and fed the same way
    on_data = labels[:1] if labels and labels[0] == row.get('data') else []
    names = [f'untrained {base}{variant_suffix(labels)}']
    if not row.get('shared_overrides'):
        names.append(f'untrained {base}{variant_suffix(on_data)}')
    twin = [twins[m] for m in names if m in twins][:1]
    if row.get('kind') != 'ssl' or not twin:
        return None
    return (row['linear_top1_final'] - twin[0]['linear_top1_final'], row['knn_top1'] - twin[0]['knn_top1'])


def markdown(rows, ensembles, title, architectures=None):
    """The results table; `architectures` (suite method -> architecture) adds the gain of every
    SSL row over its untrained encoder."""
    groups = {}
    for r in rows:
        groups.setdefault((r['method'], r['stream'], r['epochs'], r.get('data')), []).append(r)
    lines = [f'## {title}', '',
             '| method | stream | seeds | linear top-1, final | linear top-1, best* | k-NN top-1 (k=1) | '
             'gain over untrained (linear / k-NN) | pretrain epochs | pretrain time |',
             '|---|---|---|---|---|---|---|---|---|']
    for (method, stream, _, _), rs in groups.items():
        rs = sorted(rs, key=lambda r: r['seed'])
        secs = [r['pretrain_seconds'] for r in rs if r['pretrain_seconds']]
        time_text = f'{sum(secs) / len(secs) / 60:.0f} min' if secs else '-'
        paired = [(r['seed'], g) for r in rs for g in [gain_over_untrained(r, rows, architectures or {})] if g]
        gains = [g for _, g in paired]
        gain_text = (f'{sum(g[0] for g in gains) / len(gains):+.1f} / {sum(g[1] for g in gains) / len(gains):+.1f}'
                     if gains else '-')
        if gains and len(gains) < len(rs):   # the baseline exists for some seeds only
            gain_text += f' (seed {",".join(str(seed) for seed, _ in paired)})'
        lines.append(f'| {method} | {stream} | {",".join(str(r["seed"]) for r in rs)} | '
                     f'{mean_range([r["linear_top1_final"] for r in rs])} | '
                     f'{mean_range([r["linear_top1_best"] for r in rs])} | '
                     f'{mean_range([r["knn_top1"] for r in rs])} | {gain_text} | {rs[0]["epochs"] or "-"} | '
                     f'{time_text} |')
    for e in ensembles:
        weights = e.get('weights') or REFERENCE_WEIGHTS
        weight_text = '' if weights == REFERENCE_WEIGHTS else f', weights {"/".join(f"{w:g}" for w in weights)}'
        lines.append(f'| {e["method"]} | ensemble ({"+".join(e["streams"])}{weight_text}) | {e["seed"]} | '
                     f'{e["linear_top1_final"]:.1f} | - | - | - | - | - |')
    lines += ['', 'Mean over the listed seeds with the range in brackets. * best epoch of the linear '
              'probe, selected on the evaluated split (the reference protocol); the final epoch is the honest '
              'number. Gain: points over the same architecture untrained (batch-norm statistics '
              're-estimated), same seeds and probe.', '']
    return '\n'.join(lines)


def row_key(row):
    """A result row is identified by its work_dir and epoch (an ensemble by method, seed, split and
    fusion weights)."""
    if row.get('work_dir'):
        return row['work_dir'], row.get('epochs')
    return row['method'], row.get('kind'), row['seed'], row['split'], tuple(row.get('weights') or ())


def read_rows(path):
    """The result rows in `path` ([] when there is no such file yet)."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return json.load(f)


def merge_rows(path, new_rows):
    """The rows already in `path` with the new ones replacing those of the same key."""
    old = read_rows(path)
    fresh = {row_key(r) for r in new_rows}
    return [r for r in old if row_key(r) not in fresh] + new_rows


# --------------------------------------------------------------------------- main
def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--suite', required=True, help='suite YAML (e.g. config/nw_ucla/benchmark.yaml)')
    p.add_argument('--split', default='test', help="a split of the suite: 'test' (the table) or 'val' "
                   '(model selection on the training views)')
    p.add_argument('--rows', nargs='+', help='only these methods (default: all rows of the suite)')
    p.add_argument('--streams', nargs='+', help='only these streams (default: each row\'s streams)')
    p.add_argument('--seeds', type=int, nargs='+', help="seeds (default: the suite's seeds)")
    p.add_argument('--baselines', choices=['yes', 'no', 'only'], default='yes',
                   help='also run the untrained-encoder and raw-coordinate rows (default yes)')
    p.add_argument('--set', nargs='+', default=[], metavar='KEY=VALUE',
                   help='override pretraining options (e.g. model_args.queue_size=128), or, as probe.KEY=VALUE, '
                        'options of the linear evaluation (e.g. probe.standardize_features=true: the untagged '
                        'run\'s pretraining is evaluated, and the baselines get the same probe), or, as all.KEY=VALUE, '
                        'options of every stage (e.g. all.model_args.hidden_channels=32: pretraining, probe and '
                        'k-NN build the same encoder), or, as STREAM.KEY=VALUE (joint, motion, bone), '
                        'a pretraining option of that stream only (e.g. bone.num_epoch=10); needs --tag. An option that '
                        'a task it reaches does not declare is refused before any stage runs')
    p.add_argument('--eval-epochs', type=int, nargs='+', default=[],
                   help='also evaluate these intermediate pretraining epochs (model selection of the epoch '
                        'count on --split val; checkpoints are saved at their greatest common divisor)')
    p.add_argument('--data', metavar='VARIANT',
                   help="run on a data variant of the suite (data_variants, e.g. 'body': other "
                        "preprocessing of the same splits); rows are labelled [VARIANT]")
    p.add_argument('--tag', default='', help='names a --set variant (folder and method suffix)')
    p.add_argument('--ensemble-weights', type=float, nargs=3, metavar=('JOINT', 'MOTION', 'BONE'),
                   default=list(REFERENCE_WEIGHTS), help='fusion weights of the 3-stream ensembles (default the reference 0.6 0.4 0.6); '
                        'choose them on --split val scores with tools/ensemble.py --search. Rows with other '
                        'weights are kept beside the reference ones')
    p.add_argument('--out', help='JSON rows file (default: the suite\'s results[split])')
    p.add_argument('--dry-run', action='store_true', help='print the commands, run nothing')
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    os.chdir(ROOT)
    try:
        return run(args)
    except SuiteError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2


def check_set_option(item, name, reach, suite_rows, rows):
    """Refuse a --set option that a task it reaches does not declare, before any stage runs: a
    misspelt stream prefix (bnoe.num_epoch=10) would otherwise reach the pretraining as option
    'bnoe' and stop the run at its first stage. `reach`: 'pretrain', 'probe' or 'all'."""
    from torchlight.config import suggest
    from torchlight.registry import TASKS
    tasks = {'probe': {'linear_evaluation'}, 'all': {'linear_evaluation', 'knn_retrieval'}}.get(reach, set())
    if reach != 'probe':   # a weights_from row's pretraining is its source row's
        by_method = {r['method']: r for r in suite_rows}
        pretrained = (by_method[r.get('weights_from', r['method'])] for r in rows)
        tasks.update(r['pretrain'][0] for r in pretrained if 'pretrain' in r)
    for task in sorted(tasks):
        options = TASKS.get(task).options
        if name not in options:
            words = [*options, *STREAMS, 'all', 'probe']
            raise SuiteError(f'--set {item}: {name!r} is not an option of {task}{suggest(name, words)}; '
                             f'prefixes: {", ".join(STREAMS)} (that stream), all. (every stage), probe. (the probe)')


def run(args):
    suite = load_suite(args.suite)
    suite.setdefault('data', 'default')
    data_names = {suite['data'], *(suite.get('data_variants') or {})}
    if args.data:
        suite = with_data_variant(suite, args.data)
    if args.split not in suite['splits']:
        raise SuiteError(f'{args.suite}: no split {args.split!r} (has {sorted(suite["splits"])})')
    if args.set and not args.tag:
        raise SuiteError('--set needs a --tag naming the variant')
    if min(args.ensemble_weights) < 0 or not any(args.ensemble_weights):
        raise SuiteError(f'--ensemble-weights {args.ensemble_weights}: weights must be >= 0 and not all zero')
    if args.tag in data_names or not re.fullmatch(r'[A-Za-z0-9_.-]*', args.tag):
        raise SuiteError(f'--tag {args.tag!r}: use letters, digits and _ . - and not the name of the '
                         f'suite\'s data ({sorted(data_names)})')
    rows = [r for r in suite['rows'] if not args.rows or r['method'] in args.rows]
    if args.rows and len(rows) != len(set(args.rows)):
        known = [r['method'] for r in suite['rows']]
        raise SuiteError(f'unknown row(s) {sorted(set(args.rows) - set(known))}; the suite has {known}')
    overrides, probe, shared = [], [], []
    stream_overrides = {}   # STREAM.KEY=VALUE: that stream's pretraining only (e.g. a shorter bone schedule)
    for item in args.set:
        if '=' not in item:
            raise SuiteError(f'--set {item!r}: expected KEY=VALUE')
        key, value = item.split('=', 1)
        prefix, _, rest = key.partition('.')
        if not rest or prefix not in ('probe', 'all', *STREAMS):
            prefix, rest = None, key   # a pretraining option
        check_set_option(item, rest.split('.')[0], prefix if prefix in ('probe', 'all') else 'pretrain',
                         suite['rows'], rows)
        if prefix == 'probe':   # a linear-evaluation option: the pretraining is not touched
            probe += [f'--{rest}', value]
        elif prefix == 'all':   # every stage, e.g. an encoder's width that the probe must match
            shared += [f'--{rest}', value]
        elif prefix in STREAMS:   # a stream name: that stream's jobs only
            stream_overrides.setdefault(prefix, []).extend([f'--{rest}', value])
        else:
            overrides += [f'--{key}', value]
    # a variant that changes the pretraining has its own; the untagged run and probe variants share one
    pretrain_tag = args.tag if overrides or shared or stream_overrides else ''
    if args.eval_epochs:
        overrides += ['--save_interval', str(functools.reduce(math.gcd, args.eval_epochs))]
    seeds = args.seeds or suite.get('seeds', [0])

    jobs = []
    for row in rows:
        streams = [s for s in row.get('streams', ['joint']) if not args.streams or s in args.streams]
        for stream in streams:
            stream_pretrain = replace_options(overrides, stream_overrides.get(stream, []))
            for seed in seeds:
                if args.baselines != 'only':
                    final = Job(suite, row, stream, seed, args.split, args.tag, stream_pretrain, 'ssl', probe=probe,
                                pretrain_tag=pretrain_tag, shared=shared)
                    jobs.append(final)
                    jobs += [Job(suite, row, stream, seed, args.split, args.tag, stream_pretrain, 'ssl', at_epoch=e,
                                 probe=probe, pretrain_tag=pretrain_tag, shared=shared)
                             for e in sorted(set(args.eval_epochs)) if e < final.epochs]
                # no untrained baseline for a pretraining-only variant; a probe variant's gets its probe,
                # and one that changes every stage (all.KEY: width, input scale) its encoder and input
                if (args.baselines != 'no' and (not pretrain_tag or shared)
                        and row.get('untrained_baseline', True)):
                    jobs.append(Job(suite, row, stream, seed, args.split, args.tag, [], 'untrained', probe=probe,
                                    shared=shared))
                # the supervised reference does not use the probe, so probe variants do not repeat it;
                # one stream (joint) as the reference point, not a third training per row
                if args.baselines != 'no' and not args.tag and row.get('supervised') and stream == 'joint':
                    jobs.append(Job(suite, row, stream, seed, args.split, '', [], 'supervised'))
    if args.baselines != 'no' and not pretrain_tag and 'raw_baseline' in suite:
        jobs.append(Job(suite, {'method': 'raw'}, 'joint', seeds[0], args.split, args.tag, [], 'raw', probe=probe))
    # one untrained (supervised) row per architecture and stream: rows sharing its file share it
    seen, unique = set(), []
    for job in jobs:
        # the file that defines a baseline's run: rows naming the same one share it
        run_file = {'untrained': job.row.get('evaluate'), 'supervised': job.row.get('supervised')}.get(job.kind)
        ident = (job.kind, run_file or id(job), job.stream, job.seed)
        if ident not in seen:
            seen.add(ident)
            unique.append(job)
    jobs = unique

    prepare = suite.get('prepare', {}).get(args.split, [])
    if args.dry_run:
        for cmd in prepare:
            print(shlex.join(cmd['run']))
        for job in jobs:
            for name, marker, argv in job.stages():
                print(('# done: ' if os.path.isfile(marker) else '') + shlex.join(argv))
        return 0
    for cmd in prepare:
        if not os.path.isfile(cmd['creates']):
            print(f'prepare: {shlex.join(cmd["run"])}', file=sys.stderr)
            if subprocess.run(cmd['run'], cwd=ROOT).returncode != 0:
                raise SuiteError(f'prepare step failed: {shlex.join(cmd["run"])}')

    stages = [(job, s) for job in jobs for s in job.stages()]
    bar = tqdm(stages, desc='benchmark', unit='stage')
    for job, (name, marker, argv) in bar:
        bar.set_postfix_str(f'{job.row["method"]}/{job.kind}/{job.stream}/seed{job.seed}: {name}')
        if os.path.isfile(marker):
            continue
        seconds = run_stage(argv, os.path.join(job.work_dir, 'runner.log'))
        job.record_provenance()
        tqdm.write(f'{job.work_dir}: {name} done in {seconds / 60:.1f} min')

    out_json = args.out or suite['results'][args.split]
    previous = {row_key(r): r for r in read_rows(out_json)}
    results = []
    for job in jobs:
        made = job.provenance()
        result = job.result(made)
        if made is None and row_key(result) in previous:   # a run from before provenance files
            old = previous[row_key(result)]
            result.update({k: old[k] for k in ('commit', 'device') if k in old})
        results.append(result)
    ensembles = []
    for row in rows:
        if not row.get('ensemble'):
            continue
        # the untrained encoder's ensemble is the baseline of the self-supervised one
        for seed, kind in itertools.product(seeds, ('ssl', 'untrained')):
            by_stream = {j.stream: j for j in jobs
                         if j.row is row and j.kind == kind and j.seed == seed and not j.at_epoch}
            if not all(s in by_stream for s in STREAMS):
                continue
            out = ensemble(suite['splits'][args.split]['test_label'],
                           {s: os.path.join(by_stream[s].eval_dir('linear'), 'test_result_final.pkl')
                            for s in STREAMS}, dict(zip(STREAMS, args.ensemble_weights)))
            ensembles.append({'method': by_stream['joint'].label, 'data': suite['data'],
                              'kind': 'ensemble', 'streams': list(STREAMS), 'seed': seed,
                              'split': args.split, 'weights': args.ensemble_weights,
                              'linear_top1_final': round(100 * out['accuracy'][1], 2),
                              'linear_top5_final': round(100 * out['accuracy'][5], 2),
                              'per_stream_top1': {s: round(100 * a[1], 2) for s, a in out['per_stream'].items()},
                              'commit': commit()})
            old = previous.get(row_key(ensembles[-1]))
            if old and old['linear_top1_final'] == ensembles[-1]['linear_top1_final']:
                ensembles[-1]['commit'] = old.get('commit')   # the same figure: keep its row as it was
    all_rows = merge_rows(out_json, results + ensembles)
    files.write_json(out_json, all_rows)
    table = markdown([r for r in all_rows if r.get('kind') != 'ensemble'],
                     [r for r in all_rows if r.get('kind') == 'ensemble'],
                     f'{suite["name"]}, split {args.split} '
                     f'({datetime.date.today().isoformat()}, {device_name()})',
                     {row['method']: row.get('architecture', row['method']) for row in suite['rows']})
    files.atomic_write(os.path.splitext(out_json)[0] + '.md', lambda f: f.write(table), binary=False)
    print(table)
    return 0


if __name__ == '__main__':
    sys.exit(main())
