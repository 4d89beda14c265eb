"""AimCLR: D3M, nearest-neighbour mining, EADM modes, loss composition and a run through the engine."""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from net.aimclr import AimCLR, d3m_loss, masked_infonce, neighbour_mask
from processor.pretrain_aimclr import AimCLRPretrain
from tests.conftest import TINY_ENCODER, write_dataset
from torchlight.registry import MODELS, TASKS


def tiny(**kw):
    torch.manual_seed(0)
    args = {**TINY_ENCODER, 'dropout': 0.0, 'feature_dim': 4, 'queue_size': 12, 'momentum': 0.9,
            'Temperature': 0.2, **kw}
    return AimCLR(**args)


def test_registered_under_reference_names():
    assert MODELS.get('net.aimclr.AimCLR') is AimCLR and MODELS.get('aimclr') is AimCLR
    assert TASKS.get('processor.pretrain_aimclr.AimCLR_Processor') is AimCLRPretrain
    assert AimCLR.views == ('extreme', 'normal', 'normal')
    assert AimCLRPretrain.options['mining_epoch'].default == 150
    assert AimCLRPretrain.options['model'].default == 'aimclr'


# ---------------------------------------------------------------- losses on hand-made logits
def test_d3m_equals_kl_plus_entropy():
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, -0.4]])
    logits_e = torch.tensor([[1.0, 1.0, 0.0, -2.0], [0.0, 0.0, 2.0, 1.0]])
    logits_ed = torch.tensor([[-1.0, 0.5, 0.5, 0.0], [3.0, -1.0, 0.0, 0.0]])

    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    expected = 0.0
    for r_logits in (logits_e, logits_ed):
        rows = []
        for a, b in zip(logits.double().numpy(), r_logits.double().numpy()):
            p, r = softmax(a), softmax(b)
            kl = float(np.sum(p * (np.log(p) - np.log(r))))
            entropy = float(-np.sum(p * np.log(p)))
            rows.append(kl + entropy)
        expected += 0.5 * np.mean(rows)
    assert d3m_loss(logits, logits_e, logits_ed).item() == pytest.approx(expected, rel=1e-6)
    # the target carries no gradient; the extreme logits do
    a, b, c = (t.clone().requires_grad_() for t in (logits, logits_e, logits_ed))
    d3m_loss(a, b, c).backward()
    assert a.grad is None or torch.all(a.grad == 0)
    assert b.grad.abs().sum() > 0 and c.grad.abs().sum() > 0


def test_neighbour_mask_on_hand_made_queue():
    # queue columns: 6 unit vectors in 4-D; each view's query is close to a known column
    queue = F.normalize(torch.tensor([[1.0, 0, 0, 1, 0, 0],
                                      [0, 1, 0, 0, 1, 0],
                                      [0, 0, 1, 0, 0, 1],
                                      [0, 0, 0, 0.5, 0.5, 0.5]]), dim=0)
    q = F.normalize(torch.tensor([[0.0, 1, 0, 0], [1, 0, 0, 0]]), dim=1)          # -> cols 1, 0
    q_e = F.normalize(torch.tensor([[0.0, 0, 1, 0], [1, 0, 0, 0.1]]), dim=1)      # -> cols 2, 0
    q_ed = F.normalize(torch.tensor([[0.0, 1, 0, 0.1], [0, 0, 1, 1.5]]), dim=1)   # -> cols 1, 5
    sims = [v @ queue for v in (q, q_e, q_ed)]
    mask = neighbour_mask(sims, topk=1)
    expected = torch.zeros(2, 7)
    expected[:, 0] = 1
    expected[0, 1 + torch.tensor([1, 2])] = 1
    expected[1, 1 + torch.tensor([0, 5])] = 1
    assert torch.equal(mask, expected)
    # topk=2 adds each view's second neighbour (union)
    mask2 = neighbour_mask(sims, topk=2)
    for row in range(2):
        want = {0}
        for s in sims:
            want |= {1 + int(j) for j in s[row].topk(2).indices}
        assert set(torch.nonzero(mask2[row]).flatten().tolist()) == want


def test_masked_infonce_without_neighbours_is_infonce():
    torch.manual_seed(0)
    logits = torch.randn(5, 9)
    mask = torch.zeros(5, 9)
    mask[:, 0] = 1
    ce = F.cross_entropy(logits, torch.zeros(5, dtype=torch.long))
    assert masked_infonce(logits, mask).item() == pytest.approx(ce.item(), rel=1e-6)
    mask[1, 3] = mask[1, 4] = 1   # row 1 averages -log p over its three positives
    log_p = F.log_softmax(logits, 1)
    rows = -log_p[:, 0]
    rows[1] = -(log_p[1, 0] + log_p[1, 3] + log_p[1, 4]) / 3
    assert masked_infonce(logits, mask).item() == pytest.approx(rows.mean().item(), rel=1e-6)


# ---------------------------------------------------------------- the method
def hand_loss(model, queue, views, mining):
    """Loss recomputed from the model's parameters after the step (encoder_q unchanged, the key
    encoder already updated; BN uses batch statistics in train mode)."""
    x_e, x_q, x_k = views
    q = F.normalize(model.encoder_q(x_q), dim=1)
    e, ed = model.encoder_q(x_e, drop=True)
    q_e, q_ed = F.normalize(e, dim=1), F.normalize(ed, dim=1)
    k = F.normalize(model.encoder_k(x_k), dim=1)
    lg = [torch.cat([(v * k).sum(1, keepdim=True), v @ queue], 1) / model.T for v in (q, q_e, q_ed)]
    p = F.softmax(lg[0], 1)
    d3m = 0.5 * sum(-(p * F.log_softmax(l, 1)).sum(1).mean() for l in lg[1:])
    if not mining:
        return -F.log_softmax(lg[0], 1)[:, 0].mean() + d3m, d3m
    n = q.shape[0]
    total = 0.0
    for i in range(n):
        positives = {0} | {1 + int(torch.argmax(v[i] @ queue)) for v in (q, q_e, q_ed)}   # topk 1
        log_p = F.log_softmax(lg[0][i], 0)
        total = total - sum(log_p[j] for j in positives) / len(positives)
    return total / n + d3m, d3m


@pytest.mark.parametrize('epoch, mining', [(3, False), (4, True)])
def test_loss_composition_before_and_after_mining_epoch(epoch, mining):
    model = tiny(mining_epoch=3, topk=1).train()
    torch.manual_seed(1)
    views = [torch.randn(4, 3, 12, 25, 2) for _ in range(3)]
    queue = model.queue.clone()
    out = model(*views, epoch=epoch)
    assert ('loss_nnm' in out) == mining and ('loss_nce' in out) == (not mining)
    main = out['loss_nnm'] if mining else out['loss_nce']
    assert torch.allclose(out['loss'], main + out['loss_d3m'])
    with torch.no_grad():
        expected, d3m = hand_loss(model, queue, views, mining)
    assert out['loss'].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out['loss_d3m'].item() == pytest.approx(d3m.item(), rel=1e-5)
    # only the normal key entered the queue
    with torch.no_grad():
        k = F.normalize(model.encoder_k(views[2]), dim=1)
    assert torch.allclose(model.queue[:, :4], k.T, atol=1e-6) and int(model.queue_ptr) == 4
    out['loss'].backward()
    assert model.encoder_q.fc[0].weight.grad.abs().sum() > 0


def test_eadm_modes():
    assert tiny().encoder_q.dropout.mode == 'fixed'          # default
    x = torch.randn(4, 3, 12, 25, 2)
    off = tiny(eadm='off').train()
    e, ed = off.encoder_q(x, drop=True)
    assert torch.equal(e, ed)                                 # identity drop: q_ed == q_e
    fixed = tiny(eadm='fixed').train()
    e, ed = fixed.encoder_q(x, drop=True)
    assert not torch.allclose(e, ed)
    with pytest.raises(ValueError, match='eadm'):
        tiny(eadm='paper')
    # an eval wrapper (linear evaluation) accepts and ignores the pretraining options
    ev = AimCLR(**TINY_ENCODER, pretrain=False, num_class=5, mining_epoch=3, eadm='off')
    assert ev(x).shape == (4, 5) and not hasattr(ev, 'queue')


def test_one_step_lowers_the_loss_on_a_fixed_batch():
    """Gradient sanity: a small SGD step on the AimCLR loss lowers it for the same inputs/queue."""
    torch.manual_seed(2)
    views = [torch.randn(6, 3, 12, 25, 2) for _ in range(3)]
    for epoch in (1, 5):   # InfoNCE and mining branches
        model = tiny(mining_epoch=2, momentum=1.0).train()   # momentum 1: frozen key encoder
        queue_before = model.queue.clone()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        losses = []
        for _ in range(2):
            model.queue.copy_(queue_before)
            model.queue_ptr.zero_()
            out = model(*views, epoch=epoch)
            losses.append(out['loss'].item())
            opt.zero_grad()
            out['loss'].backward()
            opt.step()
        assert losses[1] < losses[0]


# ---------------------------------------------------------------- through the engine
def test_short_run_with_mining_switched_on(tmp_path):
    """Tiny AimCLR through `pretrain_aimclr` with the reference YAML layout (top-level
    mining_epoch/topk): finite losses, InfoNCE until mining_epoch, mining after it."""
    data, label = write_dataset(str(tmp_path), 'train', 24, seed=1)
    work = str(tmp_path / 'w')
    config = tmp_path / 'pretext.yaml'
    config.write_text(f"""
train_feeder: feeder.ntu_feeder.Feeder_triple
train_feeder_args: {{data_path: {data}, label_path: {label}, shear_amplitude: 0.5,
                    temperal_padding_ratio: 6, mmap: True, aug_method: '123456'}}
model: net.aimclr.AimCLR
model_args: {json.dumps({**TINY_ENCODER, 'pretrain': True, 'feature_dim': 8, 'queue_size': 16,
                          'momentum': 0.9, 'Temperature': 0.2, 'mlp': True, 'num_class': 60})}
nesterov: False
weight_decay: 1e-4
base_lr: 0.05
optimizer: SGD
step: [250]
device: [0]
use_gpu: False
batch_size: 8
num_epoch: 3
stream: 'joint'
mining_epoch: 2
topk: 1
save_interval: 5
eval_interval: -1
""")
    proc = AimCLRPretrain.from_argv(['--config', str(config), '--work_dir', work, '--num_worker', '0',
                                     '--print_log', 'false'])
    history = []
    train_epoch = proc.train_epoch
    proc.train_epoch = lambda epoch, writer: history.append(train_epoch(epoch, writer)) or history[-1]
    proc.start()
    assert proc.model.mining_epoch == 2 and proc.model.topk == 1
    assert proc.model.encoder_q.dropout.mode == 'fixed'
    assert proc.dataset.view_args['aug_method'] == '123456'
    assert len(history) == 3
    for epoch, means in enumerate(history, 1):
        assert all(math.isfinite(v) for v in means.values())
        assert ('loss_nnm' in means) == (epoch > 2) and ('loss_nce' in means) == (epoch <= 2)
        assert means['loss'] == pytest.approx(means.get('loss_nnm', means.get('loss_nce')) + means['loss_d3m'], rel=1e-5)
    assert history[-1]['mined_positives'] >= 1
    saved = torch.load(os.path.join(work, 'epoch3_model.pt'), weights_only=True)
    assert {'queue', 'queue_ptr'} <= set(saved) and 'encoder_k.fc.2.weight' in saved


def test_model_args_override_top_level_method_options(tmp_path):
    data, label = write_dataset(str(tmp_path), 'train', 8, seed=1)
    argv = ['--work_dir', str(tmp_path / 'w'), '--print_log', 'false', '--use_gpu', 'false',
            '--model_args', json.dumps({**TINY_ENCODER, 'queue_size': 8, 'feature_dim': 4,
                                        'topk': 3, 'eadm': 'off'}),
            '--train_feeder_args.data_path', data, '--mining_epoch', '7', '--batch_size', '4',
            '--num_worker', '0']
    proc = AimCLRPretrain.from_argv(argv)
    proc.setup()
    assert proc.model.mining_epoch == 7 and proc.model.topk == 3
    assert proc.model.encoder_q.dropout.mode == 'off'
