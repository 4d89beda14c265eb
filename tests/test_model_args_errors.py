"""A model argument that a method or encoder refuses is a ConfigError whose message starts with
the key at fault (`model_args.KEY`), so the CLI prints one line naming it and exits 2 (the CLI
path itself: tests/test_config.py)."""
import pytest

from net.agcn import Model as AGCN
from net.ascal import ASCAL
from net.asar import ASAR
from net.graph import Graph
from net.hcn import HCN
from net.hico import HiCo
from net.hico_encoder import HiEncoder
from net.mamp import MAMP
from net.mamp_transformer import MAMPTransformer
from net.rnn_encoder import BiLSTM
from net.st_gcn import Model as STGCN
from torchlight.config import ConfigError, check_kwargs

TINY_MAMP = dict(dim_feat=8, depth=1, num_heads=2, num_frames=8, num_joints=4, t_patch_size=2)
TINY_STGCN = dict(hidden_channels=2, hidden_dim=4, num_class=3)


@pytest.mark.parametrize('build, key', [
    (lambda: HiCo(queue_ptr_mod='G'), 'queue_ptr_mod'),
    (lambda: HiCo(base_encoder='net.st_gcn.Model'), 'base_encoder'),
    (lambda: HiEncoder(encoder='RNN'), 'encoder'),
    (lambda: HiEncoder(encoder='GRU', hidden_size=7), 'hidden_size'),
    (lambda: HiEncoder(hidden_size=10, num_head=4), 'hidden_size'),
    (lambda: HiEncoder(granularity=0), 'granularity'),
    (lambda: MAMPTransformer(protocol='probe', **TINY_MAMP), 'protocol'),
    (lambda: MAMPTransformer(**{**TINY_MAMP, 'dim_feat': 9}), 'dim_feat'),
    (lambda: MAMPTransformer(**{**TINY_MAMP, 'num_frames': 9}), 'num_frames'),
    (lambda: MAMP(mask_ratio=1.0, **TINY_MAMP), 'mask_ratio'),
    (lambda: MAMP(motion_stride=8, **TINY_MAMP), 'motion_stride'),
    (lambda: MAMP(decoder_dim_feat=7, **TINY_MAMP), 'decoder_dim_feat'),
    (lambda: STGCN(impl='quick', **TINY_STGCN), 'impl'),
    (lambda: STGCN(eadm='sometimes', **TINY_STGCN), 'eadm'),
    (lambda: STGCN(graph_args={'layout': 'ntu-rgb+d', 'labeling_mode': 'spatial'}, **TINY_STGCN), 'graph_args'),
    (lambda: Graph(strategy='star'), 'graph_args.strategy'),
    (lambda: Graph(dilation=0), 'graph_args'),
    (lambda: AGCN(graph_args={'layout': 'ntu-rgb+d', 'labeling_mode': 'star'}), 'graph_args.labeling_mode'),
    (lambda: AGCN(num_point=20), 'num_point'),
    (lambda: HCN(window_size=20), 'window_size'),
    (lambda: BiLSTM(tap="max"), 'tap'),
    (lambda: ASCAL(loss_type='hinge', base_encoder='ascal_lstm'), 'loss_type'),
    (lambda: ASAR(queue_size=4, neighbours=5, **TINY_STGCN), 'queue_size'),
])
def test_a_refused_model_argument_names_its_key(build, key):
    with pytest.raises(ConfigError) as err:
        build()
    assert str(err.value).startswith(f'model_args.{key}'), str(err.value)


@pytest.mark.parametrize('kwargs, key', [
    ({'topk': 'abc'}, 'topk'),                      # AimCLR's own argument (default 1)
    ({'queue_size': 'big'}, 'queue_size'),          # MoCo's, through the method's signature
    ({'hidden_channels': 'x'}, 'hidden_channels'),  # the encoder's (default 64)
])
def test_a_word_for_a_numeric_argument_names_its_key(kwargs, key):
    from net.aimclr import AimCLR
    with pytest.raises(ConfigError) as err:
        check_kwargs(kwargs, 'model_args', AimCLR, STGCN)
    assert str(err.value).startswith(f"model_args.{key}: cannot read '{kwargs[key]}' as a number"), str(err.value)


def test_numbers_written_as_words_and_non_numeric_defaults_pass():
    from net.aimclr import AimCLR
    # '1e-4' and '3' are numbers; eadm's default is a word; qk_scale's default is None (YAML 'None')
    check_kwargs({'Temperature': '1e-4', 'topk': '3', 'eadm': 'off'}, 'model_args', AimCLR, STGCN)
    check_kwargs({'qk_scale': 'None'}, 'model_args', MAMPTransformer)
