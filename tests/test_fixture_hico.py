"""Parity with the reference HiCo code (shared fixtures hico_{gru,lstm,transformer}): the
checkpoints load through `weights:` + `weights_prefix: encoder_q.` (weights_only=True) and give
the stored DownstreamEncoder knn_eval features through `python main.py extract_features`; the
stored (xc, xp) are our tokenisation of the stored clip; the whole pretraining model loads the
file strictly; a config with another encoder type fails with a clear error."""
import json
import os

import numpy as np
import pytest
import torch

from net.hico import HiCo
from net.hico_encoder import space_majored, time_majored
from tests.conftest import extract_features_cli, fixture_dir
from torchlight.io import WeightsError, load_weights, read_checkpoint, state_dict_of

FIXTURES = {'hico_gru': 'GRU', 'hico_lstm': 'LSTM', 'hico_transformer': 'Transformer'}
PROJECTORS = '[encoder_q.clip_proj, encoder_q.part_proj, encoder_q.td_proj, encoder_q.sd_proj, encoder_q.instance_proj]'

# A HiCo linear-evaluation config at the fixtures' width (hidden 64; the release uses 512).
CONFIG = """
weights: /placeholder/checkpoint_0450.pth.tar
weights_prefix: encoder_q.
ignore_weights: {projectors}
model: hico
model_args:
  t_input_size: 150
  s_input_size: 192
  kernel_size: 5
  stride: 1
  padding: 2
  factor: 2
  hidden_size: 64
  num_head: 4
  num_layer: 1
  granularity: 4
  encoder: {encoder}
  num_class: 60
use_gpu: false
test_batch_size: 4
stream: joint
"""


def load(name):
    folder = fixture_dir(name)
    with open(os.path.join(folder, 'fixture.json')) as f:
        meta = json.load(f)
    return folder, meta, np.load(os.path.join(folder, 'fixture.npz')), os.path.join(folder, meta['checkpoint']['file'])


@pytest.mark.parametrize('name', sorted(FIXTURES))
def test_extract_features_reproduces_reference(name, tmp_path):
    _, meta, arrays, checkpoint = load(name)
    assert meta['downstream']['constructor_args']['encoder'] == FIXTURES[name]
    config = CONFIG.format(projectors=PROJECTORS, encoder=FIXTURES[name])
    feature, log = extract_features_cli(tmp_path, config, checkpoint, arrays['clip'])
    diff = float(np.abs(feature - arrays['feature']).max())
    print(f'{name}: extract_features max abs diff {diff:.3g}')
    assert feature.shape == (4, 512) and diff <= 1e-5
    # exactly the classifier is missing, every hi_encoder tensor arrived
    assert 'Can not find weights [encoder_q.fc.weight]' in log and '2 missing' in log


@pytest.mark.parametrize('name', sorted(FIXTURES))
def test_stored_token_inputs_are_our_tokenisation(name):
    _, _, arrays, _ = load(name)
    clip = torch.from_numpy(arrays['clip'])
    assert torch.equal(time_majored(clip), torch.from_numpy(arrays['input_xc']))
    assert torch.equal(space_majored(clip), torch.from_numpy(arrays['input_xp']))


@pytest.mark.parametrize('name', sorted(FIXTURES))
def test_pretraining_model_loads_the_reference_file_strictly(name):
    _, meta, arrays, checkpoint = load(name)
    state = state_dict_of(read_checkpoint(checkpoint))
    pre = meta['pretraining']
    model = HiCo(**pre['encoder_args'] | {'num_class': 60}, feature_dim=pre['dim'], queue_size=pre['K'],
                 momentum=pre['m'], Temperature=pre['T'])
    assert len(state) == meta['checkpoint']['num_state_dict_keys'] and set(model.state_dict()) == set(state)
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():   # the query encoder of the pretraining model gives the same feature
        feature = model.extract_feature(torch.from_numpy(arrays['clip']))
    assert float((feature - torch.from_numpy(arrays['feature'])).abs().max()) <= 1e-5


@pytest.mark.parametrize('name', sorted(FIXTURES))
def test_configured_encoder_type_must_match_the_checkpoint(name):
    _, _, _, checkpoint = load(name)
    found = FIXTURES[name]
    other = 'GRU' if found != 'GRU' else 'LSTM'
    model = HiCo(hidden_size=64, encoder=other, pretrain=False)
    with pytest.raises(WeightsError, match=f"holds a HiCo {found} encoder.*set model_args.encoder: {found}"):
        load_weights(model, checkpoint, ['encoder_q.clip_proj', 'encoder_q.part_proj', 'encoder_q.td_proj',
                                         'encoder_q.sd_proj', 'encoder_q.instance_proj'],
                     log=lambda *_: None, prefix='encoder_q.')
