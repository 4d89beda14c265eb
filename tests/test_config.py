import os

import pytest
import torch
import yaml

import main
from processor.pretrain import PretrainProcessor
from torchlight.config import ConfigError, Opt, build_config, parse_overrides, parse_scalar

OPTIONS = {
    'lr': Opt(0.1, float), 'epochs': Opt(10, int), 'flag': Opt(False, bool), 'name': Opt('a', str),
    'step': Opt([], (list, int)), 'model_args': Opt({'depth': 2, 'width': 8}, dict),
}


def write_yaml(tmp_path, text):
    path = tmp_path / 'c.yaml'
    path.write_text(text)
    return str(path)


def test_precedence_defaults_yaml_cli(tmp_path):
    path = write_yaml(tmp_path, 'lr: 1e-4\nepochs: 5\nmodel_args: {depth: 3}\n')
    cfg = build_config(OPTIONS, ['--config', path, '--epochs', '7', '--model_args.width', '16'])
    assert cfg['lr'] == pytest.approx(1e-4) and isinstance(cfg['lr'], float)   # YAML '1e-4' is a string
    assert cfg['epochs'] == 7                                                  # CLI beats YAML
    assert cfg['model_args'] == {'depth': 3, 'width': 16}                      # key-wise merge
    assert cfg['flag'] is False and cfg['name'] == 'a'                         # defaults kept


def test_cli_types_lists_and_bools(tmp_path):
    cfg = build_config(OPTIONS, ['--step', '250', '280', '--flag', 'yes', '--name', '12'])
    assert cfg['step'] == [250, 280] and cfg['flag'] is True and cfg['name'] == '12'
    assert build_config(OPTIONS, ['--step', '[1, 2]'])['step'] == [1, 2]
    assert build_config(OPTIONS, ['--flag'])['flag'] is True
    assert build_config(OPTIONS, ['--epochs', '1e6'])['epochs'] == 1000000   # reference mining_epoch
    assert parse_scalar('1e-4') == 1e-4 and parse_scalar('3.') == 3.0 and parse_scalar('x') == 'x'


def test_nested_dict_option_from_cli_mapping():
    cfg = build_config(OPTIONS, ['--model_args', '{depth: 5}', '--model_args.extra.k', '1e-3'])
    assert cfg['model_args'] == {'depth': 5, 'width': 8, 'extra': {'k': 1e-3}}


@pytest.mark.parametrize('argv, needle', [
    (['--lrr', '1'], "did you mean: lr"),
    (['--epochs', 'abc'], "'epochs'"),
    (['--lr.x', '1'], 'no sub-keys'),
    (['stray'], 'unexpected argument'),
])
def test_bad_options_name_the_key(argv, needle):
    with pytest.raises(ConfigError, match=needle):
        build_config(OPTIONS, argv)


def test_unknown_yaml_key_suggests(tmp_path):
    path = write_yaml(tmp_path, 'epoch: 3\n')
    with pytest.raises(ConfigError, match=r"unknown option 'epoch'.*did you mean: epochs"):
        build_config(OPTIONS, ['--config', path])
    with pytest.raises(ConfigError, match='not found'):
        build_config(OPTIONS, ['--config', str(tmp_path / 'missing.yaml')])


def test_override_parser_forms():
    assert parse_overrides(['-c', 'x.yaml', '--a=1', '--b', '-1']) == {'config': 'x.yaml', 'a': 1, 'b': -1}


def test_main_exit_codes_and_help(capsys, tmp_path):
    assert main.main(['--help']) == 0
    out = capsys.readouterr().out
    for task in ('pretrain_skeletonclr', 'linear_evaluation', 'knn_retrieval', 'extract_features'):
        assert task in out
    assert main.main(['no_such_task']) == 2
    assert 'unknown task' in capsys.readouterr().err
    assert main.main(['linear_evaluation', '--help']) == 0
    assert '--base_lr' in capsys.readouterr().out
    path = write_yaml(tmp_path, 'num_epochs: 3\n')
    assert main.main(['pretrain_skeletonclr', '--config', path]) == 2
    err = capsys.readouterr().err
    assert "unknown option 'num_epochs'" in err and 'num_epoch' in err


def test_model_args_typo_is_reported(tiny_data, tmp_path, capsys):
    from tests.conftest import pretrain_argv
    argv = ['pretrain_skeletonclr'] + pretrain_argv(tiny_data, str(tmp_path / 'w'), extra=['--model_args.queue_sise', '8'])
    assert main.main(argv) == 2
    assert "unknown key 'queue_sise' in model_args (did you mean: queue_size?)" in capsys.readouterr().err


def test_an_isc_gru_readout_it_does_not_know_is_one_clear_line(tiny_data, tmp_path, capsys):
    from tests.conftest import pretrain_argv
    gru = {'base_encoder': 'isc_gru', 'en_input_size': 150, 'en_hidden_size': 4, 'en_num_layers': 1,
           'readout': 'max'}
    argv = ['pretrain_isc'] + pretrain_argv(tiny_data, str(tmp_path / 'w'), model='isc', encoder=gru)
    assert main.main(argv) == 2
    assert "error: model_args.readout must be one of ('last', 'mean'), got 'max'" in capsys.readouterr().err


@pytest.mark.parametrize('task, model_args, line', [
    ('pretrain_skeletonclr', {'key_init': 'zero'}, "model_args.key_init must be 'copy' or 'reference', got 'zero'"),
    ('pretrain_skeletonclr', {'impl': 'quick'}, "model_args.impl: unknown impl 'quick'"),
    ('pretrain_skeletonclr', {'eadm': 'sometimes'}, "model_args.eadm: unknown eadm mode 'sometimes'"),
    ('pretrain_skeletonclr', {'graph_args': {'layout': 'ntu-rgb+d', 'strategy': 'star'}},
     "model_args.graph_args.strategy: unknown graph strategy 'star'"),
    ('pretrain_aimclr', {'topk': 0}, 'model_args.topk must be >= 1, got 0'),
    ('pretrain_aimclr', {'topk': 'abc'}, "model_args.topk: cannot read 'abc' as a number (the default is 1)"),
])
def test_a_model_argument_an_encoder_refuses_is_one_line_naming_the_key(tiny_data, tmp_path, capsys, task,
                                                                         model_args, line):
    from tests.conftest import pretrain_argv
    argv = [task] + pretrain_argv(tiny_data, str(tmp_path / 'w'), model=task.split('_', 1)[1],
                                  model_args=model_args)
    assert main.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: ' + line), err


def test_effective_config_saved_and_previous_kept(tiny_data, tmp_path):
    from tests.conftest import pretrain_argv
    work = str(tmp_path / 'w')
    proc = PretrainProcessor.from_argv(pretrain_argv(tiny_data, work, epochs=1, extra=['--weight_decay', '1e-3']))
    assert not os.path.exists(os.path.join(work, 'config.yaml'))   # written once the run is accepted
    proc.start()
    saved = yaml.safe_load(open(os.path.join(work, 'config.yaml')))
    assert saved['weight_decay'] == pytest.approx(1e-3) and saved['model_args']['queue_size'] == 20
    assert proc.cfg['device'] == 'auto' and str(proc.device) == 'cpu'
    PretrainProcessor.from_argv(pretrain_argv(tiny_data, work, epochs=1, extra=['--resume', 'auto'])).start()
    assert len([f for f in os.listdir(work) if f.startswith('config')]) == 2


def test_reference_device_keys(tiny_data, tmp_path):
    from tests.conftest import pretrain_argv
    proc = PretrainProcessor.from_argv(pretrain_argv(tiny_data, str(tmp_path / 'w'), extra=['--device', '0', '1']))
    assert proc.cfg['device'] == [0, 1]
    with pytest.raises(ConfigError, match='device'):
        PretrainProcessor.from_argv(pretrain_argv(tiny_data, str(tmp_path / 'x'), extra=['--device', 'gpu7']))


def test_stream_scales_multiply_their_stream_only_and_reject_bad_values(tiny_data, tmp_path):
    from tests.conftest import pretrain_argv
    clips = torch.randn(2, 3, 6, 25, 2)
    scales = ['--stream_scales.motion', '10', '--stream_scales.bone', '2.5']
    plain = PretrainProcessor.from_argv(pretrain_argv(tiny_data, str(tmp_path / 'a'), extra=['--stream', 'motion']))
    motion = PretrainProcessor.from_argv(pretrain_argv(tiny_data, str(tmp_path / 'b'),
                                                       extra=['--stream', 'motion'] + scales))
    joint = PretrainProcessor.from_argv(pretrain_argv(tiny_data, str(tmp_path / 'c'), extra=scales))
    assert plain.cfg['stream_scales'] == {} and motion.cfg['stream_scales'] == {'motion': 10, 'bone': 2.5}
    expected = torch.zeros_like(clips)
    expected[:, :, :-1] = clips[:, :, 1:] - clips[:, :, :-1]
    assert torch.equal(plain.to_stream(clips), expected)   # default: the originals' input, untouched
    assert torch.allclose(motion.to_stream(clips), 10 * expected)
    assert torch.equal(joint.to_stream(clips), clips)       # no factor for the joint stream
    empty = PretrainProcessor.from_argv(pretrain_argv(tiny_data, str(tmp_path / 'e'), extra=['--stream_scales', 'null']))
    assert empty.cfg['stream_scales'] == {}                 # an empty YAML entry means no factors
    for extra, needle in ((['--stream_scales.motion', '0'], r"'stream_scales.motion' must be a positive number"),
                          (['--stream_scales.motion', '-2'], r"'stream_scales.motion' must be a positive number"),
                          (['--stream_scales.motion', '.nan'], r"'stream_scales.motion' must be a positive number"),
                          (['--stream_scales.motion', '.inf'], r"'stream_scales.motion' must be a positive number"),
                          (['--stream_scales.motion', 'true'], r"'stream_scales.motion' must be a positive number"),
                          (['--stream_scales.motion', 'x'], r"'stream_scales.motion' must be a positive number"),
                          (['--stream_scales.speed', '2'], r"'stream_scales': unknown stream 'speed'")):
        with pytest.raises(ConfigError, match=needle):
            PretrainProcessor.from_argv(pretrain_argv(tiny_data, str(tmp_path / 'd'), extra=extra))
