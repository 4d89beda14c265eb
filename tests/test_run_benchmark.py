"""tools/run_benchmark.py end to end on tiny data, and the raw-coordinate baseline encoder."""
import json
import os
import re

import pytest
import torch
import yaml

from net.raw_coords import RawCoordinates
from tests.conftest import TINY_ENCODER, write_dataset
from tools import run_benchmark


def test_raw_coords_feature_is_the_flattened_clip():
    enc = RawCoordinates(in_channels=3, num_frames=4, num_joints=5, num_person=1, num_class=2)
    x = torch.randn(6, 3, 4, 5, 1)
    assert enc.feature_dim == 60
    assert torch.equal(enc.extract_feature(x), x.reshape(6, -1))
    assert enc(x).shape == (6, 2)
    with pytest.raises(ValueError, match=r'\(N, 3, 4, 5, 1\)'):
        enc.extract_feature(torch.randn(2, 3, 4, 5, 2))


def write_suite(tmp_path):
    folder = str(tmp_path / 'data')
    os.makedirs(folder)
    write_dataset(folder, 'train', 16, t=8, v=25, m=2, seed=1)
    write_dataset(folder, 'val', 8, t=8, v=25, m=2, seed=2)
    encoder = {**TINY_ENCODER, 'init_weights': False}
    common = {'num_worker': 0, 'use_gpu': False, 'seed': 0}
    pretrain = {**common, 'model': 'skeletonclr', 'batch_size': 8, 'num_epoch': 2, 'base_lr': 0.05,
                'save_interval': 1, 'log_interval': 1,
                'model_args': {**encoder, 'feature_dim': 8, 'queue_size': 8, 'momentum': 0.9, 'Temperature': 0.2},
                'train_feeder_args': {'shear_amplitude': 0.5, 'temperal_padding_ratio': 6}}
    linear = {**common, 'model': 'skeletonclr', 'batch_size': 8, 'test_batch_size': 8, 'num_epoch': 3,
              'base_lr': 0.5, 'eval_interval': 1, 'ignore_weights': ['encoder_q.fc', 'encoder_k', 'queue'],
              'model_args': {**encoder, 'pretrain': False, 'num_class': 4}}
    raw = {**linear, 'model_args': {'base_encoder': 'raw_coords', 'pretrain': False, 'num_class': 4,
                                    'num_frames': 8, 'num_joints': 25, 'num_person': 2, 'init_weights': False}}
    files = {}
    for name, cfg in (('pretrain', pretrain), ('linear', linear), ('raw', raw)):
        files[name] = str(tmp_path / f'{name}.yaml')
        with open(files[name], 'w') as f:
            yaml.safe_dump(cfg, f)
    split = {'train_data': f'{folder}/train_data.npy', 'train_label': f'{folder}/train_label.pkl',
             'test_data': f'{folder}/val_data.npy', 'test_label': f'{folder}/val_label.pkl'}
    suite = {'name': 'tiny', 'work_root': str(tmp_path / 'work'), 'seeds': [0],
             'splits': {'test': split}, 'results': {'test': str(tmp_path / 'results' / 'tiny.json')},
             'raw_baseline': {'evaluate': files['raw'], 'evaluate_args': []},
             'rows': [{'method': 'skeletonclr', 'pretrain': ['pretrain_skeletonclr', files['pretrain']],
                       'evaluate': files['linear'], 'streams': ['joint']}]}
    path = str(tmp_path / 'suite.yaml')
    with open(path, 'w') as f:
        yaml.safe_dump(suite, f)
    return path, suite


def logged_epoch_seconds(job_dir):
    """{epoch: seconds} of the 'Epoch E done ... | S s, ' lines of a job's pretraining log."""
    with open(os.path.join(job_dir, 'pretrain', 'log.txt')) as f:
        return {int(e): float(t) for e, t in re.findall(r'Epoch (\d+) done .*\| ([\d.]+) s, ', f.read())}


def test_runner_writes_rows_and_skips_finished_stages(tmp_path, capsys):
    path, suite = write_suite(tmp_path)
    assert run_benchmark.main(['--suite', path]) == 0
    rows = json.load(open(suite['results']['test']))
    by_method = {r['method']: r for r in rows}
    assert set(by_method) == {'skeletonclr', 'untrained skeletonclr', 'raw coordinates'}
    ssl = by_method['skeletonclr']
    for key in ('method', 'stream', 'linear_top1_final', 'linear_top1_best', 'knn_top1', 'pretrain_seconds',
                'epochs', 'device', 'config', 'commit'):
        assert key in ssl
    assert ssl['epochs'] == 2 and ssl['stream'] == 'joint'
    # the logged epoch times, summed (a tiny epoch on a fast machine is logged as 0.0 s)
    logged = logged_epoch_seconds(os.path.join(suite['work_root'], 'skeletonclr', 'joint', 'seed0'))
    assert sorted(logged) == [1, 2] and ssl['pretrain_seconds'] == round(sum(logged.values()), 1)
    assert 0 <= ssl['linear_top1_final'] <= 100 and ssl['linear_top1_best'] >= ssl['linear_top1_final']
    # the row holds what the evaluation wrote
    linear = json.load(open(os.path.join(ssl['work_dir'], 'linear', 'results.json')))
    assert ssl['linear_top1_final'] == round(100 * linear['final_epoch']['accuracy']['1'], 2)
    # pretraining read no label
    cfg = yaml.safe_load(open(os.path.join(ssl['work_dir'], 'pretrain', 'config.yaml')))
    assert cfg['train_feeder_args'].get('label_path') is None
    assert by_method['untrained skeletonclr']['pretrain_seconds'] == 0
    table = open(suite['results']['test'].replace('.json', '.md')).read()
    assert '| skeletonclr | joint | 0 |' in table and 'raw coordinates' in table

    # a second run finds every stage done and runs nothing; --dry-run marks them done
    log = os.path.join(ssl['work_dir'], 'runner.log')
    before = open(log).read()
    capsys.readouterr()
    assert run_benchmark.main(['--suite', path]) == 0
    assert open(log).read() == before
    assert len(json.load(open(suite['results']['test']))) == 3   # rows replaced, not appended
    capsys.readouterr()
    assert run_benchmark.main(['--suite', path, '--dry-run']) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 7 and all(line.startswith('# done: ') for line in printed)


def test_runner_resumes_an_interrupted_pretraining(tmp_path):
    path, suite = write_suite(tmp_path)
    # a run killed after epoch 1: the runner continues it instead of starting again
    assert run_benchmark.main(['--suite', path, '--baselines', 'no', '--set', 'num_epoch=1', '--tag', 'x']) == 0
    work = os.path.join(suite['work_root'], 'skeletonclr_x', 'joint', 'seed0')
    os.makedirs(os.path.join(suite['work_root'], 'skeletonclr', 'joint'))
    os.rename(work, os.path.join(suite['work_root'], 'skeletonclr', 'joint', 'seed0'))
    work = os.path.join(suite['work_root'], 'skeletonclr', 'joint', 'seed0')
    for stage in ('linear', 'knn'):
        os.rename(os.path.join(work, stage), os.path.join(work, stage + '_old'))
    assert run_benchmark.main(['--suite', path, '--baselines', 'no']) == 0
    log = open(os.path.join(work, 'pretrain', 'log.txt')).read()
    assert 'resum' in log.lower() and 'Epoch 2 done' in log and log.count('Epoch 1 done') == 1

    # an intermediate epoch evaluated afterwards: its own rows, its part of the pretraining time
    assert run_benchmark.main(['--suite', path, '--baselines', 'no', '--eval-epochs', '1']) == 0
    rows = {(r['method'], r['epochs']): r for r in json.load(open(suite['results']['test']))}
    first, last = rows[('skeletonclr', 1)], rows[('skeletonclr', 2)]
    assert os.path.isfile(os.path.join(work, 'linear_e1', 'results.json'))
    logged = logged_epoch_seconds(work)
    assert first['pretrain_seconds'] == round(logged[1], 1)
    assert last['pretrain_seconds'] == round(logged[1] + logged[2], 1) >= first['pretrain_seconds']


@pytest.mark.parametrize('argv, message', [
    (['--split', 'val'], "no split 'val'"),
    (['--rows', 'nosuch'], "unknown row(s) ['nosuch']"),
    (['--set', 'num_epoch=1'], '--set needs a --tag'),
    (['--set', 'num_epoch=1', '--tag', 'default'], "--tag 'default': use letters"),   # the suite's data name
    (['--tag', 'a, b]'], "--tag 'a, b]'"),
    (['--data', 'missing'], "--data: no data variant 'missing'"),
    # a misspelt stream prefix or option is refused before any stage runs, naming the task
    (['--tag', 'x', '--set', 'bnoe.num_epoch=1'], "'bnoe' is not an option of pretrain_skeletonclr (did you mean: bone?)"),
    (['--tag', 'x', '--set', 'probe.base_lrr=1'], "'base_lrr' is not an option of linear_evaluation (did you mean: base_lr?)"),
    (['--tag', 'x', '--set', 'all.stream_scale.motion=2'], "'stream_scale' is not an option of"),
])
def test_runner_bad_arguments_exit_2(tmp_path, capsys, argv, message):
    path, _ = write_suite(tmp_path)
    assert run_benchmark.main(['--suite', path] + argv) == 2
    assert message in capsys.readouterr().err


def test_runner_bad_suite_exit_2(tmp_path, capsys):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('name: x\nrows: []\n')
    assert run_benchmark.main(['--suite', str(bad)]) == 2
    assert "missing key 'splits'" in capsys.readouterr().err


@pytest.mark.parametrize('variants, message', [
    ({'test': {'splits': {}}}, "data_variants: 'test' must be a plain name"),      # a split's name
    ({'a b': {'splits': {}}}, "data_variants: 'a b' must be a plain name"),
    ({'body': {'splits': {}}}, 'data_variants.body needs splits'),
    ({'body': {'splits': {'test': {'train_data': 'x'}}}}, 'data_variants.body.splits.test needs train_label'),
])
def test_bad_data_variant_names_the_key(tmp_path, capsys, variants, message):
    path, suite = write_suite(tmp_path)
    with open(path, 'w') as f:
        yaml.safe_dump({**suite, 'data_variants': variants}, f)
    assert run_benchmark.main(['--suite', path, '--dry-run']) == 2
    assert message in capsys.readouterr().err


def test_row_with_weights_from_evaluates_the_source_rows_checkpoint(tmp_path, capsys):
    """A row with weights_from (e.g. the AGCN branch of ISC's inter-skeleton pair) has no
    pretraining of its own: it evaluates the source row's final checkpoint, and asks for the
    source's pretraining (skipped when done) so that it can run alone."""
    path, suite = write_suite(tmp_path)
    suite['rows'].append({'method': 'branch', 'weights_from': 'skeletonclr', 'evaluate': suite['rows'][0]['evaluate'],
                          'streams': ['joint'], 'untrained_baseline': False})
    with open(path, 'w') as f:
        yaml.safe_dump(suite, f)
    assert run_benchmark.main(['--suite', path, '--rows', 'branch', '--baselines', 'no', '--dry-run']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    source = os.path.join(suite['work_root'], 'skeletonclr', 'joint', 'seed0', 'pretrain')
    assert len(lines) == 3 and 'pretrain_skeletonclr' in lines[0] and f'--work_dir {source} ' in lines[0]
    for line, stage in zip(lines[1:], ('linear', 'knn')):
        assert f'--weights {source}/epoch2_model.pt' in line
        assert f"--work_dir {os.path.join(suite['work_root'], 'branch', 'joint', 'seed0', stage)} " in line
    # a weights_from naming no pretrained row is refused
    suite['rows'][1]['weights_from'] = 'nosuch'
    with open(path, 'w') as f:
        yaml.safe_dump(suite, f)
    assert run_benchmark.main(['--suite', path, '--dry-run']) == 2
    assert "weights_from must name a row with its own pretrain" in capsys.readouterr().err


def test_shipped_suites_name_existing_configs():
    """Every shipped suite parses and every file it names exists (tests/test_shipped_configs.py builds them)."""
    suites = [os.path.join(run_benchmark.ROOT, 'config', d, 'benchmark.yaml')
              for d in os.listdir(os.path.join(run_benchmark.ROOT, 'config'))]
    suites = [p for p in suites if os.path.isfile(p)]
    assert suites
    for path in suites:
        suite = run_benchmark.load_suite(path)
        files = [suite['raw_baseline']['evaluate']] if 'raw_baseline' in suite else []
        for row in suite['rows']:
            files += [row['evaluate']] + ([row['pretrain'][1]] if 'pretrain' in row else [])
            files += [row['supervised']] if 'supervised' in row else []
        for f in files:
            assert os.path.isfile(os.path.join(run_benchmark.ROOT, f)), f'{path}: {f} missing'
        assert set(suite['results']) == set(suite['splits'])


def test_plot_results_draws_rows_and_refuses_bad_files(tmp_path, capsys):
    from tools import plot_results
    rows = [{'method': 'skeletonclr', 'kind': 'ssl', 'stream': s, 'seed': seed, 'linear_top1_final': acc,
             'pretrain_seconds': 600.0} for s, seed, acc in (('joint', 0, 60.0), ('joint', 1, 64.0), ('bone', 0, 58.0))]
    rows += [{'method': 'raw coordinates', 'kind': 'raw', 'stream': 'joint', 'seed': 0, 'linear_top1_final': 41.8,
              'pretrain_seconds': 0},
             {'method': 'skeletonclr', 'kind': 'ensemble', 'seed': 0, 'linear_top1_final': 70.0}]
    results = tmp_path / 'rows.json'
    results.write_text(json.dumps(rows))
    out = tmp_path / 'plot.png'
    assert plot_results.main(['--results', str(results), '--out', str(out)]) == 0
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    results.write_text('{"not": "rows"}')
    assert plot_results.main(['--results', str(results), '--out', str(tmp_path / 'x.png')]) == 2
    assert 'expected a list of result rows' in capsys.readouterr().err
    assert not (tmp_path / 'x.png').exists()


def test_table_gain_over_untrained_pairs_architecture_stream_and_seed():
    row = lambda method, kind, seed, lin, knn, stream='joint': {
        'method': method, 'kind': kind, 'stream': stream, 'seed': seed, 'epochs': 10 if kind == 'ssl' else 0,
        'linear_top1_final': lin, 'linear_top1_best': lin, 'knn_top1': knn, 'pretrain_seconds': 60 if kind == 'ssl' else 0}
    rows = [row('clr', 'ssl', 0, 60.0, 50.0), row('clr', 'ssl', 1, 70.0, 40.0),
            row('untrained ST-GCN', 'untrained', 0, 45.0, 47.5),
            row('untrained ST-GCN', 'untrained', 0, 10.0, 10.0, stream='bone'),   # other stream: not a twin
            row('clr', 'ssl', 0, 55.0, 55.0, stream='bone'),
            row('other', 'ssl', 0, 30.0, 30.0)]                                   # no baseline of its own
    table = run_benchmark.markdown(rows, [], 't', {'clr': 'ST-GCN', 'other': 'GRU'})
    lines = {(line.split(' | ')[0], line.split(' | ')[1]): line for line in table.splitlines() if line.startswith('| ')}
    assert '| +15.0 / +2.5 (seed 0) |' in lines[('| clr', 'joint')]    # only seed 0 has a twin
    assert '| +45.0 / +45.0 |' in lines[('| clr', 'bone')]
    assert lines[('| other', 'joint')].split(' | ')[6] == '-'
    assert lines[('| untrained ST-GCN', 'joint')].split(' | ')[6] == '-'
    # the gain of a tagged variant is against the same untrained encoder
    tagged = dict(rows[0], method='clr [rot60]')
    assert run_benchmark.gain_over_untrained(tagged, rows, {'clr': 'ST-GCN'}) == (15.0, 2.5)
    # never against an untrained encoder on other data, even one of the same name
    other_data = [dict(r, data='other') if r['kind'] == 'untrained' else dict(r, data='mine') for r in rows]
    assert run_benchmark.gain_over_untrained(other_data[0], other_data, {'clr': 'ST-GCN'}) is None


def test_probe_variant_reuses_the_pretraining_and_probes_the_baselines_alike(tmp_path, capsys):
    path, suite = write_suite(tmp_path)
    assert run_benchmark.main(['--suite', path]) == 0
    base = os.path.join(suite['work_root'], 'skeletonclr', 'joint', 'seed0')
    log_before = open(os.path.join(base, 'pretrain', 'log.txt')).read()
    capsys.readouterr()
    assert run_benchmark.main(['--suite', path, '--set', 'probe.standardize_features=true', '--tag', 'std']) == 0
    # no second pretraining: the variant evaluated the untagged run's checkpoint
    assert open(os.path.join(base, 'pretrain', 'log.txt')).read() == log_before
    tagged = os.path.join(suite['work_root'], 'skeletonclr_std', 'joint', 'seed0')
    assert not os.path.exists(os.path.join(tagged, 'pretrain'))
    rows = {r['method']: r for r in json.load(open(suite['results']['test']))}
    assert set(rows) == {'skeletonclr', 'untrained skeletonclr', 'raw coordinates', 'skeletonclr [std]',
                         'untrained skeletonclr [std]', 'raw coordinates [std]'}
    for name in ('skeletonclr [std]', 'untrained skeletonclr [std]', 'raw coordinates [std]'):
        assert rows[name]['overrides'] == '--standardize_features true'
        log = open(os.path.join(rows[name]['work_dir'], 'linear', 'log.txt')).read()
        assert 'Classifier trained on standardised features' in log
    assert 'standardised' not in open(os.path.join(base, 'linear', 'log.txt')).read()
    assert rows['skeletonclr [std]']['pretrain_seconds'] == rows['skeletonclr']['pretrain_seconds']
    # the variant's gain is over the untrained encoder under the same probe
    gain = run_benchmark.gain_over_untrained(rows['skeletonclr [std]'], list(rows.values()),
                                             {'skeletonclr': 'skeletonclr'})
    twin = rows['untrained skeletonclr [std]']
    assert gain == (rows['skeletonclr [std]']['linear_top1_final'] - twin['linear_top1_final'],
                    rows['skeletonclr [std]']['knn_top1'] - twin['knn_top1'])


def test_eval_epochs_keep_the_baselines_and_probe_variants_share_the_pretraining(tmp_path, capsys):
    """--eval-epochs adds a --save_interval to the pretraining: that is no variant of the recipe,
    so the untagged run keeps its baselines, and a probe variant still reads the untagged checkpoints."""
    path, suite = write_suite(tmp_path)
    assert run_benchmark.main(['--suite', path, '--eval-epochs', '1', '--dry-run']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any('untrained_skeletonclr' in line for line in lines) and any('raw_coords' in line for line in lines)
    assert run_benchmark.main(['--suite', path, '--eval-epochs', '1', '--set', 'probe.standardize_features=true',
                               '--tag', 'std', '--dry-run']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    shared = os.path.join(suite['work_root'], 'skeletonclr', 'joint', 'seed0', 'pretrain')
    assert f'--work_dir {shared} ' in lines[0] and not any('skeletonclr_std/joint/seed0/pretrain' in l for l in lines)
    assert any('untrained_skeletonclr_std' in line for line in lines)
    # a pretraining variant has its own pretraining and no baselines
    assert run_benchmark.main(['--suite', path, '--set', 'num_epoch=1', '--tag', 'short', '--dry-run']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert 'skeletonclr_short/joint/seed0/pretrain' in lines[0] and not any('untrained' in l for l in lines)


def test_data_variant_runs_on_its_own_data_and_pairs_gains_on_the_same_data(tmp_path, capsys):
    path, suite = write_suite(tmp_path)
    folder = str(tmp_path / 'data_b')
    os.makedirs(folder)
    write_dataset(folder, 'train', 16, t=8, v=25, m=2, seed=3)
    write_dataset(folder, 'val', 8, t=8, v=25, m=2, seed=4)
    suite['data'] = 'plain'
    suite['data_variants'] = {'other': {'splits': {'test': {
        'train_data': f'{folder}/train_data.npy', 'train_label': f'{folder}/train_label.pkl',
        'test_data': f'{folder}/val_data.npy', 'test_label': f'{folder}/val_label.pkl'}}}}
    with open(path, 'w') as f:
        yaml.safe_dump(suite, f)
    assert run_benchmark.main(['--suite', path]) == 0
    assert run_benchmark.main(['--suite', path, '--data', 'other']) == 0
    assert run_benchmark.main(['--suite', path, '--data', 'other', '--set', 'probe.standardize_features=true',
                               '--tag', 'std']) == 0
    rows = {r['method']: r for r in json.load(open(suite['results']['test']))}
    assert set(rows) == {'skeletonclr', 'untrained skeletonclr', 'raw coordinates',
                         'skeletonclr [other]', 'untrained skeletonclr [other]', 'raw coordinates [other]',
                         'skeletonclr [other, std]', 'untrained skeletonclr [other, std]',
                         'raw coordinates [other, std]'}
    assert rows['skeletonclr']['data'] == 'plain' and rows['skeletonclr [other, std]']['data'] == 'other'
    variant_dir = rows['skeletonclr [other]']['work_dir']
    assert variant_dir.startswith(suite['work_root'] + '_other' + os.sep)
    commands = open(os.path.join(variant_dir, 'runner.log')).read()
    assert f'{folder}/train_data.npy' in commands and f"{tmp_path / 'data'}/" not in commands
    # the pretraining of [other, std] is that of [other], not the default data's
    assert rows['skeletonclr [other, std]']['pretrain_seconds'] == rows['skeletonclr [other]']['pretrain_seconds']
    arch = {'skeletonclr': 'skeletonclr'}
    for method, twin in (('skeletonclr', 'untrained skeletonclr'),
                         ('skeletonclr [other]', 'untrained skeletonclr [other]'),
                         ('skeletonclr [other, std]', 'untrained skeletonclr [other, std]')):
        assert run_benchmark.gain_over_untrained(rows[method], list(rows.values()), arch) == (
            rows[method]['linear_top1_final'] - rows[twin]['linear_top1_final'],
            rows[method]['knn_top1'] - rows[twin]['knn_top1'])
    # a pretraining variant on the data variant has no baselines of its own: it pairs with [other]'s
    tagged = dict(rows['skeletonclr [other]'], method='skeletonclr [other, e80]')
    twin = rows['untrained skeletonclr [other]']
    assert run_benchmark.gain_over_untrained(tagged, list(rows.values()), arch)[0] == (
        tagged['linear_top1_final'] - twin['linear_top1_final'])
    capsys.readouterr()
    assert run_benchmark.main(['--suite', path, '--data', 'missing']) == 2
    assert "no data variant 'missing'" in capsys.readouterr().err


def test_supervised_reference_trains_the_encoder_with_labels_once(tmp_path, capsys):
    path, suite = write_suite(tmp_path)
    linear = yaml.safe_load(open(suite['rows'][0]['evaluate']))
    supervised = {**linear, 'num_epoch': 2, 'base_lr': 0.05, 'eval_interval': 1, 'bn_mode': 'train'}
    supervised.pop('ignore_weights')
    supervised_path = str(tmp_path / 'supervised.yaml')
    with open(supervised_path, 'w') as f:
        yaml.safe_dump(supervised, f)
    suite['rows'][0]['supervised'] = supervised_path
    with open(path, 'w') as f:
        yaml.safe_dump(suite, f)
    assert run_benchmark.main(['--suite', path, '--baselines', 'only']) == 0
    rows = {r['method']: r for r in json.load(open(suite['results']['test']))}
    ref = rows['supervised skeletonclr']
    assert ref['kind'] == 'supervised' and ref['knn_top1'] is None and ref['pretrain_seconds'] == 0
    out = json.load(open(os.path.join(ref['work_dir'], 'finetune', 'results.json')))
    assert ref['linear_top1_final'] == round(100 * out['final_epoch']['accuracy']['1'], 2)
    # it read the labels of the training split, from scratch (no weights)
    cfg = yaml.safe_load(open(os.path.join(ref['work_dir'], 'finetune', 'config.yaml')))
    assert cfg['train_feeder_args']['label_path'] == suite['splits']['test']['train_label']
    assert cfg.get('weights') is None
    table = open(suite['results']['test'].replace('.json', '.md')).read()
    assert '| supervised skeletonclr | joint | 0 |' in table
    # a probe variant probes frozen encoders only: no second supervised run
    capsys.readouterr()
    assert run_benchmark.main(['--suite', path, '--baselines', 'only', '--tag', 'p',
                               '--set', 'probe.base_lr=0.1', '--dry-run']) == 0
    assert 'finetune_evaluation' not in capsys.readouterr().out
    # a supervised entry that is not a file name is refused with the key named
    suite['rows'][0]['supervised'] = ['x']
    with open(path, 'w') as f:
        yaml.safe_dump(suite, f)
    assert run_benchmark.main(['--suite', path]) == 2
    assert 'rows[0].supervised must be a config file' in capsys.readouterr().err


def test_all_prefix_changes_every_stage_so_a_wider_encoder_is_probed(tmp_path, capsys):
    path, suite = write_suite(tmp_path)
    width = ['all.model_args.hidden_channels=4', 'all.model_args.hidden_dim=16']
    argv = ['--suite', path, '--baselines', 'no', '--tag', 'w4', '--set', 'num_epoch=1'] + width
    assert run_benchmark.main(argv + ['--dry-run']) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 3 and all('--model_args.hidden_channels 4' in c for c in commands)
    assert sum('--num_epoch 1' in c for c in commands) == 1   # a plain key: the pretraining only
    # the probe and the k-NN build the same wider encoder, so the checkpoint loads and the row lands
    assert run_benchmark.main(argv) == 0
    row = {r['method']: r for r in json.load(open(suite['results']['test']))}['skeletonclr [w4]']
    assert '--model_args.hidden_channels 4' in row['overrides'] and row['epochs'] == 1
    cfg = yaml.safe_load(open(os.path.join(row['work_dir'], 'linear', 'config.yaml')))
    assert cfg['model_args']['hidden_channels'] == 4


def test_all_prefix_variant_gets_an_untrained_encoder_built_and_fed_the_same_way(tmp_path, capsys):
    path, suite = write_suite(tmp_path)
    width = ['all.model_args.hidden_channels=4', 'all.model_args.hidden_dim=16']
    argv = ['--suite', path, '--tag', 'w4', '--set', 'num_epoch=1'] + width
    assert run_benchmark.main(argv + ['--dry-run']) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    untrained = [c for c in commands if 'untrained_skeletonclr_w4' in c]
    assert len(untrained) == 2 and all('--model_args.hidden_channels 4' in c for c in untrained)
    assert not any('raw_coords' in c for c in commands)   # raw coordinates have no encoder to change
    assert not any('--num_epoch 1' in c for c in untrained)   # a plain key is the pretraining's only
    assert run_benchmark.main(argv) == 0
    rows = {r['method']: r for r in json.load(open(suite['results']['test']))}
    assert set(rows) == {'skeletonclr [w4]', 'untrained skeletonclr [w4]'}
    twin = rows['untrained skeletonclr [w4]']
    cfg = yaml.safe_load(open(os.path.join(twin['work_dir'], 'linear', 'config.yaml')))
    assert cfg['model_args']['hidden_channels'] == 4 and cfg['weights'] is None
    gain = run_benchmark.gain_over_untrained(rows['skeletonclr [w4]'], list(rows.values()),
                                             {'skeletonclr': 'skeletonclr'})
    assert gain == (rows['skeletonclr [w4]']['linear_top1_final'] - twin['linear_top1_final'],
                    rows['skeletonclr [w4]']['knn_top1'] - twin['knn_top1'])
    # without its own twin such a variant has no gain: the plain untrained encoder is another model
    plain = {**twin, 'method': 'untrained skeletonclr', 'shared_overrides': ''}
    assert run_benchmark.gain_over_untrained(rows['skeletonclr [w4]'], [rows['skeletonclr [w4]'], plain],
                                             {'skeletonclr': 'skeletonclr'}) is None
    pretrain_only = {**rows['skeletonclr [w4]'], 'shared_overrides': ''}   # e.g. a --set num_epoch=1 variant
    assert run_benchmark.gain_over_untrained(pretrain_only, [pretrain_only, plain],
                                             {'skeletonclr': 'skeletonclr'}) is not None


def test_mean_range_text():
    assert run_benchmark.mean_range([70.0, 72.0, None]) == '71.0 (70.0-72.0)'
    assert run_benchmark.mean_range([79.31, 79.31]) == '79.3'   # identical over seeds: no range
    assert run_benchmark.mean_range([None]) == '-'


def test_untrained_encoders_get_their_own_three_stream_ensemble(tmp_path, capsys):
    """With all three streams of the untrained encoder evaluated, the runner fuses them like the
    self-supervised ones (the ensemble's baseline): same weights, same score files."""
    from tools.ensemble import ensemble
    path, suite = write_suite(tmp_path)
    suite['rows'][0].update({'streams': ['joint', 'motion', 'bone'], 'ensemble': True, 'architecture': 'tiny ST-GCN'})
    with open(path, 'w') as f:
        yaml.safe_dump(suite, f)
    assert run_benchmark.main(['--suite', path, '--baselines', 'only']) == 0
    rows = json.load(open(suite['results']['test']))
    fused = [r for r in rows if r['kind'] == 'ensemble']
    assert [r['method'] for r in fused] == ['untrained tiny ST-GCN']   # no SSL run, so no SSL ensemble
    untrained = {r['stream']: r for r in rows if r['kind'] == 'untrained'}
    assert fused[0]['per_stream_top1'] == {s: untrained[s]['linear_top1_final'] for s in ('joint', 'motion', 'bone')}
    expected = ensemble(suite['splits']['test']['test_label'],
                        {s: os.path.join(untrained[s]['work_dir'], 'linear', 'test_result_final.pkl')
                         for s in ('joint', 'motion', 'bone')})
    assert fused[0]['linear_top1_final'] == round(100 * expected['accuracy'][1], 2)
    assert fused[0]['weights'] == [0.6, 0.4, 0.6] and fused[0]['seed'] == 0
    assert '| untrained tiny ST-GCN | ensemble (joint+motion+bone) | 0 |' in \
        open(suite['results']['test'].replace('.json', '.md')).read()


def test_ensemble_weights_refuse_and_are_kept_beside_the_reference_rows(tmp_path, capsys):
    """--ensemble-weights re-fuses finished runs (nothing re-trained) into rows of their own: with
    all the weight on motion the ensemble is the motion stream's top-1. Rows of runs that were not
    re-run keep the commit and device they were produced with."""
    path, suite = write_suite(tmp_path)
    suite['rows'][0].update({'streams': ['joint', 'motion', 'bone'], 'ensemble': True, 'architecture': 'tiny ST-GCN'})
    with open(path, 'w') as f:
        yaml.safe_dump(suite, f)
    assert run_benchmark.main(['--suite', path, '--baselines', 'only']) == 0
    # as if the runs had been made with other code on another machine: the provenance file of each
    # job (written when its stages ran) for joint and bone, only the JSON row for motion (a run from
    # before provenance files)
    made = {r['stream']: os.path.join(r['work_dir'], run_benchmark.PROVENANCE)
            for r in json.load(open(suite['results']['test'])) if r['kind'] == 'untrained'}
    for stream, provenance in made.items():
        with open(provenance, 'w') as f:
            json.dump({'commit': f'{stream}123', 'device': 'another CPU'}, f)
    os.remove(made['motion'])
    rows = json.load(open(suite['results']['test']))
    for r in rows:
        r.update({'commit': 'motion123', 'device': 'another CPU'} if r.get('stream') == 'motion' else {})
    with open(suite['results']['test'], 'w') as f:
        json.dump(rows, f)
    capsys.readouterr()
    assert run_benchmark.main(['--suite', path, '--baselines', 'only', '--ensemble-weights', '0', '1', '0']) == 0
    assert 'done in' not in capsys.readouterr().out   # every stage was already done
    rows = json.load(open(suite['results']['test']))
    # nothing re-ran, so the rows keep the code and machine they ran with; the new fusion is new
    assert {r['stream']: (r['commit'], r['device']) for r in rows if r['kind'] == 'untrained'} == \
        {s: (f'{s}123', 'another CPU') for s in ('joint', 'motion', 'bone')}
    assert [r['commit'] for r in rows if r.get('weights') == [0.0, 1.0, 0.0]] == [run_benchmark.commit()]
    fused = {tuple(r['weights']): r for r in rows if r['kind'] == 'ensemble'}
    assert sorted(fused) == [(0.0, 1.0, 0.0), (0.6, 0.4, 0.6)]
    motion = next(r for r in rows if r['kind'] == 'untrained' and r['stream'] == 'motion')
    assert fused[(0.0, 1.0, 0.0)]['linear_top1_final'] == motion['linear_top1_final']
    table = open(suite['results']['test'].replace('.json', '.md')).read()
    assert '| untrained tiny ST-GCN | ensemble (joint+motion+bone, weights 0/1/0) | 0 |' in table
    assert '| untrained tiny ST-GCN | ensemble (joint+motion+bone) | 0 |' in table
    assert run_benchmark.main(['--suite', path, '--baselines', 'only', '--ensemble-weights', '0', '0', '0']) == 2
    assert '--ensemble-weights' in capsys.readouterr().err


def test_replace_options_lets_the_later_value_of_a_key_win_once():
    assert run_benchmark.replace_options(['--a', '1', '--b', '2'], ['--a', '3']) == ['--b', '2', '--a', '3']
    assert run_benchmark.replace_options(['--a', '1'], []) == ['--a', '1']


def test_stream_prefix_changes_that_streams_pretraining_only(tmp_path, capsys):
    """`--set bone.num_epoch=1`: the bone stream gets its own schedule, the joint stream keeps the
    variant's, and the bone probe loads the bone run's own last checkpoint."""
    path, suite = write_suite(tmp_path)
    suite['rows'][0]['streams'] = ['joint', 'bone']
    with open(path, 'w') as f:
        yaml.safe_dump(suite, f)
    argv = ['--suite', path, '--tag', 'b1', '--baselines', 'no', '--set', 'num_epoch=2', 'bone.num_epoch=1',
            'bone.base_lr=0.01']
    assert run_benchmark.main(argv + ['--dry-run']) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    pretrain = {s: next(c for c in commands if 'pretrain_skeletonclr' in c and f'--stream {s}' in c)
                for s in ('joint', 'bone')}
    assert '--num_epoch 2' in pretrain['joint'] and '--base_lr' not in pretrain['joint']
    assert pretrain['bone'].count('--num_epoch') == 1 and '--num_epoch 1' in pretrain['bone']
    assert '--base_lr 0.01' in pretrain['bone']
    bone_probe = next(c for c in commands if 'linear_evaluation' in c and '--stream bone' in c)
    assert 'skeletonclr_b1/bone/seed0/pretrain/epoch1_model.pt' in bone_probe
    assert run_benchmark.main(argv) == 0
    rows = {r['stream']: r for r in json.load(open(suite['results']['test']))}
    assert rows['joint']['epochs'] == 2 and rows['bone']['epochs'] == 1
    assert '--num_epoch 1' in rows['bone']['overrides'] and '--num_epoch 2' not in rows['bone']['overrides']
    assert os.path.isfile(os.path.join(os.path.dirname(rows['bone']['work_dir']), 'seed0', 'pretrain',
                                       'epoch1_model.pt'))


def test_plot_results_grows_with_its_legend_so_no_entry_is_cut_off(tmp_path):
    """One legend entry per row: a table of many rows gets a taller picture whose legend fits."""
    from matplotlib import image
    from tools import plot_results
    few = [{'method': 'skeletonclr', 'kind': 'ssl', 'stream': 'joint', 'seed': 0, 'linear_top1_final': 60.0,
            'pretrain_seconds': 600.0}]
    many = [{**few[0], 'method': f'method {i}', 'linear_top1_final': 20.0 + i} for i in range(60)]
    heights = []
    for name, rows in (('few', few), ('many', many)):
        plot_results.plot(rows, str(tmp_path / f'{name}.png'), name)
        heights.append(image.imread(str(tmp_path / f'{name}.png')).shape[0])
    # 60 legend lines at 7 pt need more than 60 * 7 / 72 * 120 dpi ~ 700 pixels
    assert heights[1] > heights[0] and heights[1] > 700


def test_commit_is_dirty_for_changed_code_but_not_for_changed_docs(tmp_path, monkeypatch):
    """A row's commit says whether the code that made it differs from HEAD; the runner's own result
    tables (docs/results) and other docs change no figure, so they leave it clean."""
    import subprocess
    git = lambda *a: subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *a], cwd=tmp_path,
                                    check=True, capture_output=True, text=True).stdout.strip()
    (tmp_path / 'net').mkdir()
    (tmp_path / 'docs' / 'results').mkdir(parents=True)
    (tmp_path / 'net' / 'encoder.py').write_text('WIDTH = 16\n')
    (tmp_path / 'docs' / 'results' / 'rows.json').write_text('[]\n')
    git('init', '-q')
    git('add', '.')
    git('commit', '-qm', 'init')
    sha = git('rev-parse', '--short', 'HEAD')
    monkeypatch.setattr(run_benchmark, 'ROOT', str(tmp_path))
    try:
        run_benchmark.commit.cache_clear()
        assert run_benchmark.commit() == sha
        (tmp_path / 'docs' / 'results' / 'rows.json').write_text('[{"method": "m"}]\n')
        run_benchmark.commit.cache_clear()
        assert run_benchmark.commit() == sha
        (tmp_path / 'net' / 'encoder.py').write_text('WIDTH = 32\n')
        run_benchmark.commit.cache_clear()
        assert run_benchmark.commit() == sha + '-dirty'
    finally:
        run_benchmark.commit.cache_clear()


def test_cpu_model_names_family_and_model_of_the_first_cpu():
    first = 'processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n'
    second = 'processor\t: 1\ncpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Other\n'
    assert run_benchmark.cpu_model(first + '\n' + second) == 'AMD EPYC, family 25 model 17'
    assert run_benchmark.cpu_model('model name\t: Intel(R) Xeon(R) Processor\n') == 'Intel(R) Xeon(R) Processor'
    assert run_benchmark.cpu_model('processor\t: 0\n') is None
