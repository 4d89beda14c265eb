"""Parity with features computed by the reference AimCLR / ASAR code (shared fixtures 1, 2)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from net.init import weights_init
from net.st_gcn import Model
from tests.conftest import fixture_dir

FIXTURES = ['aimclr_stgcn_seed1', 'aimclr_stgcn_seed2', 'asar_stgcn']
PREFIX = 'encoder_q.'


def build_encoder():
    return Model(in_channels=3, hidden_channels=16, hidden_dim=256, num_class=60, dropout=0.5,
                 edge_importance_weighting=True)


def encoder_state(d):
    ckpt = torch.load(d / 'epoch1_model.pt', map_location='cpu', weights_only=True)
    return {k[len(PREFIX):]: v for k, v in ckpt.items()
            if k.startswith(PREFIX) and not k.startswith(PREFIX + 'fc')}


@pytest.mark.parametrize('name', FIXTURES)
def test_feature_and_logits_match_reference(name):
    d = Path(fixture_dir(name))
    arrays = np.load(d / 'fixture.npz')
    model = build_encoder()
    result = model.load_state_dict(encoder_state(d), strict=False)
    assert sorted(result.missing_keys) == ['fc.bias', 'fc.weight']
    assert result.unexpected_keys == []
    model.eval()
    x = torch.from_numpy(arrays['input'])
    with torch.no_grad():
        feature = model.extract_feature(x)
        torch.testing.assert_close(feature, torch.from_numpy(arrays['feature']),
                                   rtol=1e-5, atol=1e-5)
        model.fc.weight.copy_(torch.from_numpy(arrays['fc_weight']))
        model.fc.bias.copy_(torch.from_numpy(arrays['fc_bias']))
        torch.testing.assert_close(model(x), torch.from_numpy(arrays['logits']),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', FIXTURES)
def test_weights_init_reproduces_reference_classifier(name):
    # The reference seeds 1000 + seed, builds the eval encoder and applies weights_init; the
    # same construction order and init must give the stored classifier bit for bit.
    d = Path(fixture_dir(name))
    arrays = np.load(d / 'fixture.npz')
    seed = json.loads((d / 'fixture.json').read_text())['seed']
    torch.manual_seed(1000 + seed)
    model = build_encoder()
    model.apply(weights_init)
    assert torch.equal(model.fc.weight, torch.from_numpy(arrays['fc_weight']))
    assert torch.equal(model.fc.bias, torch.from_numpy(arrays['fc_bias']))
