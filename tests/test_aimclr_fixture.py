"""AimCLR reference checkpoints (shared fixtures 1) through an original linear-evaluation config,
`weights:` with the reference ignore list and `python main.py extract_features`."""
import os

import numpy as np
import pytest
import torch

from processor.base import Processor
from tests.conftest import extract_features_cli, fixture_dir
from torchlight.config import build_config
from torchlight.io import load_weights

FIXTURES = ['aimclr_stgcn_seed1', 'aimclr_stgcn_seed2']

# The reference linear-evaluation file, CPU only and without data paths (extract_features
# reads its clips from --input).
REFERENCE_LINEAR_CONFIG = """
weights: /placeholder/released_model.pt
ignore_weights: [encoder_q.fc, encoder_k, queue]

model: net.aimclr.AimCLR
model_args:
  base_encoder: net.st_gcn.Model
  pretrain: False
  in_channels: 3
  hidden_channels: 16
  hidden_dim: 256
  num_class: 60
  dropout: 0.5
  graph_args:
    layout: 'ntu-rgb+d'
    strategy: 'spatial'
  edge_importance_weighting: True

nesterov: False
weight_decay: 0.0
base_lr: 3.
optimizer: SGD
step: [80]

use_gpu: False
device: [0]
batch_size: 128
test_batch_size: 128
num_epoch: 100
stream: 'joint'
save_interval: -1
eval_interval: 5
"""


@pytest.mark.parametrize('name', FIXTURES)
def test_extract_features_reproduces_reference(name, tmp_path):
    d = fixture_dir(name)
    arrays = np.load(os.path.join(d, 'fixture.npz'))
    feats, log = extract_features_cli(tmp_path, REFERENCE_LINEAR_CONFIG,
                                      os.path.join(d, 'epoch1_model.pt'), arrays['input'])
    diff = np.abs(feats - arrays['feature']).max()
    print(f'{name}: extract_features max abs diff {diff:.3g}')
    assert feats.shape == (4, 256) and diff < 1e-4
    # the log names exactly the reference filters and the two missing classifier tensors
    assert 'Can not find weights [encoder_q.fc.weight]' in log and 'Can not find weights [encoder_q.fc.bias]' in log
    assert log.count('Can not find weights') == 2


@pytest.mark.parametrize('name', FIXTURES)
def test_linear_model_logits_with_reference_classifier(name, tmp_path):
    d = fixture_dir(name)
    arrays = np.load(os.path.join(d, 'fixture.npz'))
    config = tmp_path / 'c.yaml'
    config.write_text(REFERENCE_LINEAR_CONFIG)
    cfg = build_config(Processor.options, ['--config', str(config)])
    proc = Processor.__new__(Processor)   # only build_model is needed: no work dir, no data
    proc.cfg = cfg
    model = proc.build_model()
    missing = load_weights(model, os.path.join(d, 'epoch1_model.pt'), cfg['ignore_weights'], log=lambda s: None)
    assert sorted(missing) == ['encoder_q.fc.bias', 'encoder_q.fc.weight']
    with torch.no_grad():
        model.encoder_q.fc.weight.copy_(torch.from_numpy(arrays['fc_weight']))
        model.encoder_q.fc.bias.copy_(torch.from_numpy(arrays['fc_bias']))
        model.eval()
        logits = model(torch.from_numpy(arrays['input']))
    diff = (logits - torch.from_numpy(arrays['logits'])).abs().max().item()
    print(f'{name}: logits max abs diff {diff:.3g}')
    assert diff < 1e-4
