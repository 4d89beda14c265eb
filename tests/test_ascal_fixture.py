"""Parity with the reference AS-CAL code (shared fixture `ascal_lstm`, fixtures README section 5):
the released-format checkpoint (`{'opt': Namespace, 'model', 'model_ema', ...}`) goes through
`weights:` (weights_only=True with argparse.Namespace allow-listed) and `extract_features`, and
must give the stored CAE features of the stored (already first-150-frames, centred) clips."""
import os

import numpy as np
import pytest
import torch

from net.ascal import ASCAL
from net.rnn_encoder import BiLSTM
from tests.conftest import extract_features_cli, fixture_dir
from torchlight.io import WeightsError, load_weights, read_checkpoint

CONFIG = """work_dir: {work_dir}
weights_prefix: ''          # the file's 'model' entry is the bare encoder (bi_lstm.*)
{container}
model: ascal
model_args:
  base_encoder: models.Models.Bi_lstm
  pretrain: False
  hidden_units: 256
  lstm_layer: 1
  tap: mean
  num_class: 60
"""


@pytest.fixture
def ascal_dir():
    return fixture_dir('ascal_lstm')


def features(ascal_dir, tmp_path, container=''):
    arrays = np.load(os.path.join(ascal_dir, 'fixture.npz'))
    text = CONFIG.format(work_dir=tmp_path / 'work', container=container)
    feats, log = extract_features_cli(tmp_path, text, os.path.join(ascal_dir, 'ckpt_epoch_2.pth'), arrays['input'])
    return feats, arrays, log


def test_query_encoder_reproduces_the_reference_feature(ascal_dir, tmp_path):
    feats, arrays, log = features(ascal_dir, tmp_path)
    diff = float(np.abs(feats - arrays['feature']).max())
    print(f'ascal_lstm feature max abs diff {diff:.3g}')
    assert feats.shape == (4, 256) and diff <= 1e-5
    assert 'Loaded 4 tensors' in log and 'Can not find weights [encoder_q.fc.weight]' in log


def test_model_ema_branch(ascal_dir, tmp_path):
    feats, arrays, _ = features(ascal_dir, tmp_path, container='weights_container: model_ema')
    ckpt = read_checkpoint(os.path.join(ascal_dir, 'ckpt_epoch_2.pth'))
    enc = BiLSTM().eval()
    enc.load_state_dict(ckpt['model_ema'], strict=False)
    with torch.no_grad():
        expected = enc.extract_feature(torch.from_numpy(arrays['input'])).numpy()
    assert np.abs(feats - expected).max() <= 1e-6
    # the momentum encoder differs from the query encoder by the margin fixture.json records
    assert np.abs(feats - arrays['feature']).max() == pytest.approx(0.0093, abs=5e-4)


def test_loader_errors_name_the_option(ascal_dir):
    path = os.path.join(ascal_dir, 'ckpt_epoch_2.pth')
    model = ASCAL(pretrain=False, num_class=60)
    with pytest.raises(WeightsError, match=r"no entry 'ema' \(weights_container\).*model_ema"):
        load_weights(model, path, log=lambda s: None, prefix='', container='ema')
    with pytest.raises(WeightsError, match=r"unexpected keys.*'bi_lstm.weight_ih_l0'"):
        load_weights(model, path, log=lambda s: None)   # bare keys need weights_prefix: ''
