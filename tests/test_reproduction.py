"""Reproduction files keep the originals' values; `behaviour: reference | fixed` switches every
compat option of a method in one line (explicit keys win); the compat options themselves."""
import glob
import os

import numpy as np
import pytest
import torch
import yaml

from feeder import composite
from feeder.array_feeder import DataError, SkeletonArrayDataset, first_per_class
from main import main
from processor.evaluation import FinetuneEvaluation
from tests.conftest import ROOT
from tests.test_evaluation import eval_argv, pretrained  # noqa: F401  (fixture)
from tests.test_shipped_configs import CONFIGS, load
from tools.view_stats import view_stds
from torchlight.registry import MODELS

# the methods whose original-named files carry `behaviour` (issue 12); MAMP's are its own
COVERED = {'skeletonclr', 'aimclr', 'asar', 'isc', 'isc_inter', 'hico', 'ascal'}


def method_of(path):
    with open(path) as f:
        return MODELS.canonical(yaml.safe_load(f)['model'])


# config/demo and config/nw_ucla are our own recipes (code defaults, chosen on validation data),
# not files named after an original
OURS = ('demo', 'nw_ucla')
REFERENCE = [p for p in CONFIGS if not p.endswith('_fixed.yaml')
             and not any(os.sep + d + os.sep in p for d in OURS) and method_of(p) in COVERED]
FIXED = [p for p in CONFIGS if p.endswith('_fixed.yaml')]


def rel(path):
    return os.path.relpath(path, ROOT)


def cfg_of(name, *extra):
    return load(os.path.join(ROOT, 'config', name), *extra)[2]


def raw_of(path):
    with open(path) as f:
        return yaml.safe_load(f)


# ------------------------------------------------------------------ every reproduction file
@pytest.mark.parametrize('path', REFERENCE, ids=rel)
def test_reproduction_files_say_reference_and_write_their_compat_keys(path):
    raw = raw_of(path)
    assert raw.get('behaviour') == 'reference'
    _, _, cfg = load(path)
    # every value the preset sets is also written in the file, with the same value
    task, _, _ = load(path)
    preset = task.behaviour_preset('reference', cfg)
    for dotted, value in preset.items():
        node = raw
        for part in dotted.split('.'):
            assert isinstance(node, dict) and part in node, f'{rel(path)} does not write {dotted}'
            node = node[part]
        assert node == value, f'{rel(path)}: {dotted} is {node!r}, the original is {value!r}'


@pytest.mark.parametrize('path', FIXED, ids=rel)
def test_fixed_files_pair_with_a_reproduction_file(path):
    assert raw_of(path).get('behaviour') == 'fixed'
    task, _, cfg = load(path)
    for dotted, value in task.behaviour_preset('fixed', cfg).items():
        top, *rest = dotted.split('.')
        got = cfg[top] if not rest else cfg[top][rest[0]]
        assert got == value, f'{rel(path)}: {dotted}'
    assert cfg['work_dir'].rstrip('/').endswith('_fixed')


def test_every_original_compat_option_has_a_fixed_file():
    pairs = {'pretext_aimclr_xsub_joint.yaml': 'pretext_aimclr_xsub_fixed.yaml',
             'pretext_asar_xsub.yaml': 'pretext_asar_xsub_fixed.yaml',
             'hico/xsub/pretext_joint.yaml': 'hico/xsub/pretext_joint_fixed.yaml',
             'semi_ascal_xsub_10p.yaml': 'semi_ascal_xsub_10p_fixed.yaml',
             'finetune_aimclr_xsub_joint.yaml': 'finetune_aimclr_xsub_joint_fixed.yaml'}
    names = {rel(p) for p in CONFIGS}
    for reference, fixed in pairs.items():
        assert any(n.endswith(reference) for n in names) and any(n.endswith(fixed) for n in names)


# ------------------------------------------------------------------ original values, by method
def test_aimclr_pretext_values():
    for name in ('ntu60/pretext/pretext_aimclr_xsub_joint.yaml', 'ntu120/pretext/pretext_aimclr_xset.yaml',
                 'pkummd/pretext/pretext_aimclr_pkup2cs.yaml'):
        cfg = cfg_of(name)
        assert cfg['weight_decay'] == 1e-4 and cfg['nesterov'] is False and cfg['step'] == [250]
        assert cfg['base_lr'] == 0.1 and cfg['num_epoch'] == 300 and cfg['batch_size'] == 128
        assert cfg['mining_epoch'] == 150 and cfg['topk'] == 1
        m, f = cfg['model_args'], cfg['train_feeder_args']
        assert m['queue_size'] == 32768 and m['momentum'] == 0.999 and m['Temperature'] == 0.07 and m['mlp']
        assert (m['eadm'], m['key_init']) == ('off', 'reference')
        assert (f['blur_normalized'], f['aug_order'], f['shear_amplitude'], f['temperal_padding_ratio']) == \
            (False, 'reference', 0.5, 6)


def test_aimclr_finetune_and_semi_follow_the_original_processor():
    for name in ('ntu60/finetune/finetune_aimclr_xsub_joint.yaml', 'ntu120/finetune/finetune_aimclr_xset.yaml',
                 'ntu60/semi/semi_aimclr_xview_joint_1p.yaml'):
        cfg = cfg_of(name)
        assert (cfg['bn_mode'], cfg['base_lr'], cfg['weight_decay'], cfg['nesterov'], cfg['step']) == \
            ('eval', 0.01, 1e-4, True, [])
        assert cfg['num_epoch'] == 80
    for pct, tag in ((0.01, '1p'), (0.1, '10p')):
        cfg = cfg_of(f'ntu60/semi/semi_aimclr_xsub_joint_{tag}.yaml')
        assert cfg['train_feeder_args']['label_percent'] == pct and cfg['grad_clip'] == 2
        assert cfg['train_feeder'] == 'feeder.ntu_feeder.Feeder_semi'
    fixed = cfg_of('ntu60/finetune/finetune_aimclr_xsub_joint_fixed.yaml')
    assert (fixed['bn_mode'], fixed['base_lr'], fixed['step'], fixed['num_epoch']) == ('train', 0.1, [80], 100)


def test_skeletonclr_and_asar_values():
    for name in ('ntu60/pretext/pretext_skeletonclr_xview.yaml', 'ntu120/pretext/pretext_skeletonclr_xsub.yaml',
                 'pkummd/pretext/pretext_skeletonclr_pkup1cs.yaml'):
        cfg = cfg_of(name)
        assert cfg['train_feeder'] == 'feeder.ntu_feeder.Feeder_dual' and cfg['model_args']['key_init'] == 'reference'
        assert (cfg['base_lr'], cfg['step'], cfg['num_epoch'], cfg['batch_size']) == (0.1, [250], 300, 128)
    for path in glob.glob(os.path.join(ROOT, 'config', '*', 'pretext', 'pretext_asar_*.yaml')):
        cfg = load(path)[2]
        compat = not path.endswith('_fixed.yaml')
        assert cfg['model_args']['asar_compat'] is compat
        # the reference's untransposed block only type-checks when the batch equals feature_dim
        assert cfg['batch_size'] == cfg['model_args']['feature_dim'] == 128


def test_isc_schedules():
    for ds, epochs, step in (('ntu60', 451, [351]), ('ntu120', 351, [251, 351])):
        for name in ('pretext_isc_gru', 'pretext_isc_inter_gru_agcn', 'pretext_isc_inter_agcn_hcn',
                     'pretext_isc_inter_gru_hcn'):
            cfg = cfg_of(f'{ds}/isc/xsub/{name}.yaml')
            assert (cfg['num_epoch'], cfg['step'], cfg['batch_size'], cfg['base_lr']) == (epochs, step, 64, 0.01)
            assert cfg['model_args']['queue_size'] == 16384 and cfg['train_feeder_args']['l_ratio'] == [0.1, 1.0]
    # every branch of every inter pair has a linear and a k-NN file on the right prefix
    for pair, branches in (('gru_hcn', (('gru', 'encoder_q.'), ('hcn', 'encoder_r.'))),
                           ('agcn_hcn', (('agcn', 'encoder_q.'), ('hcn', 'encoder_r.')))):
        for branch, prefix in branches:
            for kind in ('linear_eval', 'knn'):
                cfg = cfg_of(f'ntu120/isc/xset/{kind}_isc_inter_{pair}_{branch}.yaml')
                assert cfg['weights_prefix'] == prefix and f'isc_inter_{pair}' in cfg['weights']
                assert cfg['weights'].endswith('epoch351_model.pt')


def test_hico_values():
    for ds, split in (('ntu60', 'xsub'), ('ntu120', 'xset'), ('pkummd', 'pkup2cs')):
        for enc, kind in (('joint', 'Transformer'), ('gru', 'GRU'), ('lstm', 'LSTM')):
            cfg = cfg_of(f'{ds}/hico/{split}/pretext_{enc}.yaml')
            m = cfg['model_args']
            assert (m['queue_ptr_mod'], m['queue_size'], m['Temperature'], m['encoder']) == ('K', 2048, 0.2, kind)
            assert (cfg['num_epoch'], cfg['step'], cfg['batch_size'], cfg['base_lr']) == (451, [351], 64, 0.01)
            assert cfg_of(f'{ds}/hico/{split}/pretext_{enc}_fixed.yaml')['model_args']['queue_ptr_mod'] == 'GK'
            lin = cfg_of(f'{ds}/hico/{split}/linear_eval_{enc}.yaml')
            assert (lin['base_lr'], lin['batch_size'], lin['step'], lin['model_args']['encoder']) == (2.0, 1024, [50, 70], kind)


def test_ascal_values():
    for ds, split, classes in (('ntu60', 'xsub', 60), ('ntu120', 'xset', 120)):
        for tag, epochs, step in (('1p', 35, [15, 30]), ('10p', 15, [8]), ('50p', 10, [7])):
            cfg = cfg_of(f'{ds}/ascal/{split}/semi_ascal_{split}_{tag}.yaml')
            assert cfg['train_feeder_args']['subset_rule'] == 'first' and cfg['keep_best_train'] is True
            assert (cfg['num_epoch'], cfg['step'], cfg['base_lr'], cfg['weight_decay']) == (epochs, step, 0.01, 0.0)
            assert cfg['weights'].endswith('epoch60_model.pt')
            stage2 = cfg_of(f'{ds}/ascal/{split}/semi_ascal_{split}_{tag}_stage2.yaml')
            assert stage2['weights'] == os.path.join(cfg['work_dir'], 'best_train_model.pt')
            assert (stage2['base_lr'], stage2['num_epoch'], stage2['step'], stage2['lr_decay_rate'], stage2['nesterov']) == \
                (1.0, 90, [15, 35, 60, 75], 0.5, True)
            assert stage2['train_feeder_args'].get('label_percent', 1.0) == 1.0
            assert stage2['model_args']['num_class'] == classes
            fixed = cfg_of(f'{ds}/ascal/{split}/semi_ascal_{split}_{tag}_fixed.yaml')
            assert fixed['train_feeder_args']['subset_rule'] == 'balanced' and fixed['keep_best_train'] is False
    nucla = cfg_of('nucla_ascal_reference/pretext_ascal_nucla_view1.yaml')
    assert (nucla['model_args']['queue_size'], nucla['train_feeder_args']['selected_frames'], nucla['batch_size'],
            nucla['step'], nucla['num_epoch'], nucla['model_args']['input_size']) == (500, 60, 31, [30, 70, 150], 61, 60)


# ------------------------------------------------------------------ the switch
def test_behaviour_switch_from_the_command_line_and_explicit_keys_win():
    name = 'ntu60/pretext/pretext_aimclr_xsub_joint.yaml'
    fixed = cfg_of(name, '--behaviour', 'fixed')
    assert (fixed['model_args']['eadm'], fixed['model_args']['key_init']) == ('fixed', 'copy')
    assert (fixed['train_feeder_args']['blur_normalized'], fixed['train_feeder_args']['aug_order']) == (True, 'written')
    assert fixed['train_feeder_args']['data_path'].endswith('train_position.npy')   # other keys untouched
    mixed = cfg_of(name, '--behaviour', 'fixed', '--model_args.eadm', 'off')   # YAML reads off as false
    assert (mixed['model_args']['eadm'], mixed['model_args']['key_init']) == (False, 'copy')
    from net.st_gcn import EADM
    assert EADM(mode=False).mode == 'off'
    assert cfg_of('ntu60/pretext/pretext_asar_xsub_fixed.yaml', '--behaviour', 'reference')['model_args']['asar_compat'] is True
    assert cfg_of('ntu60/semi/semi_aimclr_xsub_joint_1p_fixed.yaml', '--behaviour', 'reference')['bn_mode'] == 'eval'


def test_behaviour_in_a_file_yields_to_its_explicit_keys(tmp_path):
    path = tmp_path / 'x.yaml'
    path.write_text('behaviour: reference\nmodel: aimclr\nmodel_args: {eadm: fixed}\n'
                    'train_feeder_args: {data_path: d.npy}\n')
    from processor.pretrain_aimclr import AimCLRPretrain
    cfg = AimCLRPretrain.build_config(['--config', str(path)])
    assert cfg['model_args'] == {'eadm': 'fixed', 'key_init': 'reference'}
    assert cfg['train_feeder_args'] == {'blur_normalized': False, 'aug_order': 'reference', 'data_path': 'd.npy'}
    assert AimCLRPretrain.build_config(['--config', str(path), '--behaviour', 'fixed'])['model_args']['eadm'] == 'fixed'


def test_bad_behaviour_is_a_clear_error(capsys):
    code = main(['pretrain_aimclr', '--config', os.path.join(ROOT, 'config/ntu60/pretext/pretext_aimclr_xsub_joint.yaml'),
                 '--behaviour', 'original'])
    err = capsys.readouterr().err
    assert code == 2 and "'behaviour'" in err and 'reference, fixed' in err


def test_help_shows_the_switch(capsys):
    assert main(['pretrain_aimclr', '--help']) == 0
    out = capsys.readouterr().out
    assert '--behaviour' in out and 'reference | fixed' in out and "model_args.eadm: 'off'" in out


def test_stream_placeholder_names_the_run():
    cfg = cfg_of('ntu120/linear_eval/linear_eval_aimclr_xsub.yaml', '--stream', 'bone')
    assert cfg['work_dir'] == './work_dir/ntu120_xsub/aimclr_bone/linear_eval'
    assert cfg['weights'] == './work_dir/ntu120_xsub/aimclr_bone/pretext/epoch300_model.pt'


# ------------------------------------------------------------------ the compat options
def test_aug_order_reference_tests_membership_in_the_order_1_to_6():
    assert composite.parse_aug_method('5421', 'reference') == composite.parse_aug_method('1245')
    assert composite.parse_aug_method('44', 'reference') == ['gaussian_blur']
    assert composite.parse_aug_method('44') == ['gaussian_blur', 'gaussian_blur']
    with pytest.raises(ValueError, match='aug_order'):
        composite.parse_aug_method('12', 'sorted')


def test_bad_aug_order_and_subset_rule_name_the_key(tiny_data):
    data, labels = tiny_data['train']
    with pytest.raises(DataError, match='aug_order'):
        SkeletonArrayDataset(data, labels, aug_order='1-6')
    with pytest.raises(DataError, match='subset_rule'):
        SkeletonArrayDataset(data, labels, subset_rule='random')


def test_first_per_class_is_the_ascal_rule():
    labels = [2, 0, 0, 1, 2, 0, 1, 1, 2, 0, 1, 2]   # 12 clips, 3 classes
    # int(0.5 * 12 / 3) = 2 per class, the first ones in file order
    assert first_per_class(labels, 0.5).tolist() == [0, 1, 2, 3, 4, 6]
    assert first_per_class(labels, 0.01).tolist() == [0, 1, 3]   # at least one per class


def test_keep_best_train_saves_the_stage1_model(tiny_data, tmp_path, pretrained):  # noqa: F811
    work = tmp_path / 'semi'
    FinetuneEvaluation.from_argv(eval_argv(tiny_data, str(work), pretrained, [
        '--num_epoch', '2', '--eval_interval', '2', '--keep_best_train', 'true',
        '--train_feeder_args.label_percent', '0.5', '--train_feeder_args.subset_rule', 'first'])).start()
    saved = torch.load(work / 'best_train_model.pt', weights_only=True)
    assert 'encoder_q.fc.weight' in saved
    log = (work / 'log.txt').read_text()
    assert 'best training top1' in log and 'train top1' in log


def test_aimclr_extreme_view_std_matches_the_original():
    """The measurement of docs/METHODS.md on 300 clips (the docs: 3,000): the original feeder gives
    0.608 / 0.605 / 0.607; the normalised blur (fixed) about 0.41."""
    path = os.path.join(ROOT, 'config/ntu60/pretext/pretext_aimclr_xsub_joint.yaml')
    reference = view_stds(path, clips=300)['0 extreme']
    fixed = view_stds(path, overrides=['--behaviour', 'fixed'], clips=300)['0 extreme']
    assert np.all(np.abs(reference - np.array([0.608, 0.605, 0.607])) < 0.04), reference
    assert np.all(fixed < 0.47), fixed


def test_view_stats_measure_the_input_the_encoder_gets_stream_scales_included():
    path = os.path.join(ROOT, 'config/ntu60/pretext/pretext_aimclr_xsub_joint.yaml')
    plain = view_stds(path, overrides=['--stream', 'motion'], clips=64)
    scaled = view_stds(path, overrides=['--stream', 'motion', '--stream_scales.motion', '10'], clips=64)
    for kind in plain:
        assert np.allclose(scaled[kind], 10 * plain[kind], rtol=1e-6), kind


def test_asar_compat_writes_feature_dimension_rows_and_the_fix_does_not():
    from tools.asar_queue_effect import queue_effect
    report = queue_effect(os.path.join(ROOT, 'config/ntu60/pretext/pretext_asar_xsub.yaml'), [
        '--model_args.queue_size', '512', '--model_args.hidden_channels', '2', '--model_args.hidden_dim', '8'])
    assert report['compat']['feature-dimension rows'] > 0 and report['compat']['displaced keys'] == 0
    assert report['fixed']['feature-dimension rows'] == 0
    assert sum(report['fixed'].values()) == sum(report['compat'].values()) == 128
    assert report['columns differing'] > 0
