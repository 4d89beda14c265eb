"""Parity with the reference skeleton-contrast code (shared fixtures `skeletoncontrast_*`, fixtures
README section 3): each released-format checkpoint goes through `weights:` (weights_only=True)
with `weights_prefix` and `python main.py extract_features`, and must reproduce the stored
features, for both branches of the inter-skeleton file. The full pretraining models load the
whole checkpoints (queues included) strictly."""
import os

import numpy as np
import pytest
import torch

from net.isc import ISC, ISCInter
from net.isc_gru import flatten
from tests.conftest import extract_features_cli, fixture_dir
from torchlight.io import read_checkpoint, state_dict_of, strip_module

CHECKPOINT = 'checkpoint_0000.pth.tar'
# the constructor arguments of fixture.json, under the reference class names
ENCODERS = {
    'gru': "base_encoder: moco.GRU.BIGRU\n  en_input_size: 150\n  en_hidden_size: 64\n  en_num_layers: 3",
    'agcn': "base_encoder: moco.AGCN.Model\n  num_point: 25\n  num_person: 2\n  graph_args: {labeling_mode: spatial}",
    'hcn': "base_encoder: moco.HCN.HCN\n  in_channel: 3\n  out_channel: 64\n  window_size: 64\n"
           "  num_joint: 25\n  num_person: 2",
}
CONFIG = """model: isc
model_args:
  pretrain: false
  num_class: 60
  {encoder}
weights_prefix: {prefix}
ignore_weights: [encoder_q.fc]
use_gpu: false
test_batch_size: 4
"""
# (fixture, encoder, weights_prefix, input array, feature array)
CASES = [
    ('skeletoncontrast_gru', 'gru', 'encoder_q.', 'clip', 'feature'),
    ('skeletoncontrast_agcn', 'agcn', 'encoder_q.', 'input', 'feature'),
    ('skeletoncontrast_hcn', 'hcn', 'encoder_q.', 'input', 'feature'),
    ('skeletoncontrast_inter_gru_agcn', 'gru', 'encoder_q.', 'input_graph', 'feature_seq'),
    ('skeletoncontrast_inter_gru_agcn', 'agcn', 'encoder_r.', 'input_graph', 'feature_graph'),
]


@pytest.mark.parametrize('name, encoder, prefix, inputs, feature', CASES,
                         ids=[f'{c[0]}-{c[2][:-1]}' for c in CASES])
def test_extract_features_reproduces_reference(name, encoder, prefix, inputs, feature, tmp_path):
    folder = fixture_dir(name)
    arrays = np.load(os.path.join(folder, 'fixture.npz'))
    config = CONFIG.format(encoder=ENCODERS[encoder], prefix=prefix)
    feats, log = extract_features_cli(tmp_path, config, os.path.join(folder, CHECKPOINT), arrays[inputs])
    diff = float(np.abs(feats - arrays[feature]).max())
    print(f'{name} branch {prefix} ({encoder}): feature {feats.shape} max abs diff {diff:.3g}')
    assert feats.shape == arrays[feature].shape and diff <= 1e-5
    # the reference loader's assertion: only the fresh classifier is missing
    assert log.count('Can not find weights') == 2 and 'Can not find weights [encoder_q.fc.weight]' in log


@pytest.mark.parametrize('name, seq', [('skeletoncontrast_gru', 'input'),
                                       ('skeletoncontrast_inter_gru_agcn', 'input_seq')])
def test_sequence_input_is_the_flattened_clip(name, seq):
    arrays = np.load(os.path.join(fixture_dir(name), 'fixture.npz'))
    clip = arrays['clip' if 'clip' in arrays else 'input_graph']
    assert np.array_equal(flatten(torch.from_numpy(clip)).numpy(), arrays[seq])


def reference_state(name):
    path = os.path.join(fixture_dir(name), CHECKPOINT)
    return {strip_module(k): v for k, v in state_dict_of(read_checkpoint(path), path).items()}


def test_pretraining_models_load_whole_checkpoints_strictly():
    models = {
        'skeletoncontrast_gru': ISC(base_encoder='isc_gru', en_hidden_size=64, queue_size=256),
        'skeletoncontrast_agcn': ISC(base_encoder='agcn', queue_size=256),
        'skeletoncontrast_hcn': ISC(base_encoder='hcn', mlp=False, queue_size=256),
        'skeletoncontrast_inter_gru_agcn': ISCInter(base_encoder='isc_gru', en_hidden_size=64,
                                                    second_encoder='agcn', queue_size=256),
    }
    for name, model in models.items():
        state = reference_state(name)
        assert set(state) == set(model.state_dict()), name
        model.load_state_dict(state, strict=True)
    inter = models['skeletoncontrast_inter_gru_agcn'].eval()
    assert int(inter.queue_ptr_S1) == int(inter.queue_ptr_S2) == 16
    arrays = np.load(os.path.join(fixture_dir('skeletoncontrast_inter_gru_agcn'), 'fixture.npz'))
    x = torch.from_numpy(arrays['input_graph'])
    with torch.no_grad():
        seq, graph = inter.encoder_q.extract_feature(x), inter.encoder_r.extract_feature(x)
    assert np.abs(seq.numpy() - arrays['feature_seq']).max() <= 1e-5
    assert np.abs(graph.numpy() - arrays['feature_graph']).max() <= 1e-5
