"""Parity with the reference MAMP code (shared fixture mamp_transformer, fixtures README section 6):
the original's checkpoint ({'model', 'optimizer', 'args': argparse.Namespace, ...}) loads with
weights_only=True through `weights:`, gives the stored linear-probe feature through
`python main.py extract_features`, the fine-tune feature and the logits with the stored
classifier; the pretraining model loads the whole file strictly and reproduces the stored
decoder prediction and loss on the stored mask, and redraws that mask from the same seed."""
import json
import os

import numpy as np
import pytest
import torch

from net.mamp import MAMP
from tests.conftest import extract_features_cli, fixture_dir
from torchlight.io import load_weights, read_checkpoint

CONFIG = """
model: mamp
model_args:
  dim_in: 3
  num_classes: 60
  dim_feat: 64
  depth: 8
  num_heads: 8
  mlp_ratio: 4
  num_frames: 120
  num_joints: 25
  patch_size: 1
  t_patch_size: 4
  qkv_bias: True
  qk_scale: None
  drop_rate: 0.
  attn_drop_rate: 0.
  drop_path_rate: 0.
  protocol: linprobe
use_gpu: false
test_batch_size: 4
stream: joint
"""


def load():
    folder = fixture_dir('mamp_transformer')
    with open(os.path.join(folder, 'fixture.json')) as f:
        meta = json.load(f)
    arrays = np.load(os.path.join(folder, 'fixture.npz'))
    return meta, arrays, os.path.join(folder, meta['checkpoint']['file'])


def downstream(meta, checkpoint, **overrides):
    args = dict(meta['downstream']['constructor_args'], **overrides)   # the original's block as it is
    model = MAMP(pretrain=False, **args)
    missing = load_weights(model, checkpoint, log=lambda line: None)
    return model.eval(), missing


def test_checkpoint_reads_with_weights_only():
    meta, _, checkpoint = load()
    ckpt = read_checkpoint(checkpoint)   # weights_only=True with argparse.Namespace allow-listed
    assert ckpt['args'].model_args['dim_feat'] == 64 and len(ckpt['model']) == meta['checkpoint']['num_model_keys']


def test_extract_features_reproduces_reference(tmp_path):
    _, arrays, checkpoint = load()
    feature, log = extract_features_cli(tmp_path, CONFIG, checkpoint, arrays['input'])
    diff = float(np.abs(feature - arrays['feature']).max())
    print(f'mamp: extract_features max abs diff {diff:.3g}')
    assert feature.shape == (4, 64) and diff <= 1e-5
    # every encoder tensor arrived; only the classifier (BN statistics + linear) is missing
    assert 'Loaded 102 tensors' in log and '5 missing' in log
    assert 'MAMP: 45 decoder / mask-token tensors' in log


def test_tokens_logits_and_finetune_feature():
    meta, arrays, checkpoint = load()
    x = torch.from_numpy(arrays['input'])
    model, missing = downstream(meta, checkpoint)
    assert sorted(missing) == ['encoder_q.fc.0.num_batches_tracked', 'encoder_q.fc.0.running_mean',
                               'encoder_q.fc.0.running_var', 'encoder_q.fc.1.bias', 'encoder_q.fc.1.weight']
    with torch.no_grad():
        model.encoder_q.fc[1].weight.copy_(torch.from_numpy(arrays['fc_weight']))
        model.encoder_q.fc[1].bias.copy_(torch.from_numpy(arrays['fc_bias']))
        tokens = model.encoder_q.tokens(x)
        logits = model(x)
    assert torch.allclose(tokens, torch.from_numpy(arrays['tokens']), atol=1e-5, rtol=1e-5)
    assert torch.allclose(logits, torch.from_numpy(arrays['logits']), atol=1e-5, rtol=1e-5)
    finetune, missing = downstream(meta, checkpoint, protocol='finetune')
    assert {k.split('.')[2] for k in missing} == {'fc1', 'bn', 'fc2'}
    with torch.no_grad():
        feature = finetune.extract_feature(x)
    assert feature.shape == (4, 1600)
    assert torch.allclose(feature, torch.from_numpy(arrays['feature_finetune']), atol=1e-5, rtol=1e-5)


def pretraining_model(meta, checkpoint):
    pre = meta['pretraining']
    model = MAMP(**pre['constructor_args'], mask_ratio=pre['mask_ratio'], motion_aware_tau=pre['motion_aware_tau'],
                 motion_stride=pre['motion_stride'])
    assert load_weights(model, checkpoint, log=lambda line: None) == []   # the whole file, strictly
    return model.eval()


def test_pretraining_loss_on_the_stored_mask():
    meta, arrays, checkpoint = load()
    model = pretraining_model(meta, checkpoint)
    x, mask = torch.from_numpy(arrays['input']), torch.from_numpy(arrays['pretrain_check_mask'])
    with torch.no_grad():
        loss, pred, _ = model.predict(x, MAMP.keep_from_mask(mask), mask)
    assert torch.allclose(pred, torch.from_numpy(arrays['pretrain_check_pred']), atol=1e-5, rtol=1e-5)
    assert abs(loss.item() - float(arrays['pretrain_check_loss'][0])) <= 1e-5
    # the reference drew the mask after torch.manual_seed(7): our batched draw gives the same one
    torch.manual_seed(7)
    with torch.no_grad():
        loss, _, drawn = model.predict(x)
    assert torch.equal(drawn, mask) and int((1 - mask).sum(1)[0]) == meta['pretraining']['tokens_kept_per_sequence']
    assert abs(loss.item() - float(arrays['pretrain_check_loss'][0])) <= 1e-5


def test_temp_embed_interpolated_for_another_frame_count():
    meta, arrays, checkpoint = load()
    lines = []
    model = MAMP(pretrain=False, **dict(meta['downstream']['constructor_args'], num_frames=60))
    load_weights(model, checkpoint, log=lines.append)
    assert any('interpolated from 30 to 15' in line for line in lines)
    stored = read_checkpoint(checkpoint)['model']['temp_embed']
    # bicubic (A = -0.75, align_corners=False) halving samples half-way between source pairs:
    # weights -3/32, 19/32, 19/32, -3/32 on patches 2i-1 .. 2i+2, indices clamped at the borders
    ours = model.encoder_q.temp_embed.detach()
    assert ours.shape == (1, 15, 1, 64)
    idx = torch.arange(15) * 2
    taps = [stored[:, (idx + offset).clamp(0, 29)] for offset in (-1, 0, 1, 2)]
    expected = (19 * (taps[1] + taps[2]) - 3 * (taps[0] + taps[3])) / 32
    assert torch.allclose(ours, expected, atol=1e-6)
    model.eval()
    with torch.no_grad():
        assert model.extract_feature(torch.from_numpy(arrays['input'][:, :, :60])).shape == (4, 64)


def test_weight_decay_groups_match_the_original_optimizer(tmp_path):
    from processor.pretrain_mamp import MAMPPretrain
    from torchlight.config import build_config
    meta, _, checkpoint = load()
    model = pretraining_model(meta, checkpoint)
    proc = MAMPPretrain(build_config(MAMPPretrain.options, ['--work_dir', str(tmp_path), '--use_gpu', 'false',
                                                            '--print_log', 'false']))
    ours = {g['weight_decay']: len(g['params']) for g in proc.build_optimizer(model).param_groups}
    stored = read_checkpoint(checkpoint)['optimizer']['param_groups']
    assert ours == {g['weight_decay']: len(g['params']) for g in stored} == {0.0: 95, 0.05: 52}
