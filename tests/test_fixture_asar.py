"""Parity with the reference ASAR code (shared fixture `asar_stgcn`, fixtures README section 2):
its checkpoint goes through a config in the original ASAR linear-evaluation form and the
`extract_features` task, and must reproduce the stored feature and logits."""
import os

import numpy as np
import pytest
import torch

from net.asar import ASAR
from tests.conftest import extract_features_cli, fixture_dir
from torchlight.config import build_config
from torchlight.io import load_weights
from torchlight.registry import TASKS

IGNORE = ['encoder_q.fc', 'encoder_k', 'queue', 'predict_q', 'labels']

LINEAR_EVAL_YAML = """work_dir: {work_dir}

weights: /nonexistent/asar_joint/pretext/epoch300_model.pt
ignore_weights: [encoder_q.fc, encoder_k, queue,predict_q,labels]

# feeder
train_feeder: feeder.ntu_feeder.Feeder_single
train_feeder_args:
  data_path: /nonexistent/ntu60_frame50/xsub/train_position.npy
  label_path: /nonexistent/ntu60_frame50/xsub/train_label.pkl
  shear_amplitude: -1
  temperal_padding_ratio: -1
  mmap: True
test_feeder: feeder.ntu_feeder.Feeder_single
test_feeder_args:
  data_path: /nonexistent/ntu60_frame50/xsub/val_position.npy
  label_path: /nonexistent/ntu60_frame50/xsub/val_label.pkl
  shear_amplitude: -1
  temperal_padding_ratio: -1
  mmap: True

# model
model: net.asar.ASAR
model_args:
  base_encoder: net.st_gcn.Model
  pretrain: False
  # feature_dim: 128
  # queue_size: 32768
  in_channels: 3
  hidden_channels: 16
  hidden_dim: 256
  num_class: 60
  dropout: 0.5
  graph_args:
    layout: 'ntu-rgb+d'
    strategy: 'spatial'
  edge_importance_weighting: True

# optim
nesterov: False
weight_decay: 0.0
base_lr: 3.
optimizer: SGD
step: [80]

# training
device: [0]
batch_size: 128
test_batch_size: 128
num_epoch: 100
stream: 'joint'

# log
save_interval: -1
eval_interval: 5
"""


@pytest.fixture
def asar_dir():
    return fixture_dir('asar_stgcn')


def test_extract_features_reproduces_reference(asar_dir, tmp_path):
    arrays = np.load(os.path.join(asar_dir, 'fixture.npz'))
    weights = os.path.join(asar_dir, 'epoch1_model.pt')
    config_text = LINEAR_EVAL_YAML.format(work_dir=tmp_path / 'work')
    feature, _ = extract_features_cli(tmp_path, config_text, weights, arrays['input'])
    diff = float(np.abs(feature - arrays['feature']).max())
    print(f'asar_stgcn feature max abs diff {diff:.3g}')
    assert feature.shape == (4, 256) and diff <= 1e-4

    # logits of the linear-evaluation wrapper with the stored classifier, called as the
    # reference LE processor does: model(x, x, epoch)
    cfg = build_config(TASKS.get('linear_evaluation').options, ['--config', str(tmp_path / 'config.yaml')])
    model = ASAR(**cfg['model_args'])
    missing = load_weights(model, weights, cfg['ignore_weights'], log=lambda *_: None)
    assert cfg['ignore_weights'] == IGNORE
    assert sorted(missing) == ['encoder_q.fc.bias', 'encoder_q.fc.weight']
    model.eval()
    with torch.no_grad():
        model.encoder_q.fc.weight.copy_(torch.from_numpy(arrays['fc_weight']))
        model.encoder_q.fc.bias.copy_(torch.from_numpy(arrays['fc_bias']))
        x = torch.from_numpy(arrays['input'])
        logits = model(x, x, epoch=1)
    assert float((logits - torch.from_numpy(arrays['logits'])).abs().max()) <= 1e-4


def test_pretraining_model_loads_checkpoint_strictly(asar_dir):
    # The full ASAR pretraining model has exactly the reference's 365 keys.
    state = torch.load(os.path.join(asar_dir, 'epoch1_model.pt'), weights_only=True)
    model = ASAR(base_encoder='net.st_gcn.Model', in_channels=3, hidden_channels=16, hidden_dim=256,
                 dropout=0.5, edge_importance_weighting=True, queue_size=256)
    assert len(state) == 365 and set(model.state_dict()) == set(state)
    model.load_state_dict(state, strict=True)
    assert int(model.queue_ptr) == int(state['queue_ptr']) and (model.labels == -1).all()
