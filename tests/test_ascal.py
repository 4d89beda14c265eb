"""AS-CAL: encoder layout and recurrence, losses on hand-made logits, queue and EMA, the engine."""
import math
import os

import pytest
import torch

from net.ascal import ASCAL, infonce_loss, logistic_loss, triplet_loss
from net.rnn_encoder import BiLSTM, GRUModel, RNNModel, flatten_frames
from processor.evaluation import LinearEvaluation
from processor.pretrain_ascal import ASCALPretrain
from torchlight.registry import ENCODERS, MODELS, TASKS

TINY = {'hidden_units': 6, 'queue_size': 5, 'momentum': 0.9, 'Temperature': 0.5}


def clips(n=3, t=7, v=25, m=2, seed=0):
    return torch.randn(n, 3, t, v, m, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- encoder
def test_flatten_order_is_c50_v2_m():
    x = clips(n=2, t=3)
    flat = flatten_frames(x)
    assert flat.shape == (3, 2, 150)
    for c in range(3):
        for v in range(25):
            for m in range(2):
                assert torch.equal(flat[:, :, c * 50 + v * 2 + m], x[:, c, :, v, m].T)


def slow_lstm(enc, x):
    """Frame-by-frame LSTM from the weights (gates i, f, g, o), outputs (T, N, H)."""
    w_ih, w_hh = enc.bi_lstm.weight_ih_l0, enc.bi_lstm.weight_hh_l0
    b = enc.bi_lstm.bias_ih_l0 + enc.bi_lstm.bias_hh_l0
    n, hidden = x.shape[0], w_hh.shape[1]
    h, c = torch.zeros(n, hidden), torch.zeros(n, hidden)
    outs = []
    for t in range(x.shape[2]):
        frame = torch.stack([x[i, :, t].reshape(-1) for i in range(n)])   # (c, v, m) row-major
        i, f, g, o = (frame @ w_ih.T + h @ w_hh.T + b).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs)


@pytest.mark.parametrize('tap', ['mean', 'last', 'sum'])
def test_lstm_feature_matches_a_frame_by_frame_loop(tap):
    torch.manual_seed(0)
    enc = BiLSTM(hidden_units=6, tap=tap)
    x = clips()
    x[2, :, 4:] = 0   # zero padding is part of the sequence (CAE averages over all frames)
    outs = slow_lstm(enc, x)
    expected = {'mean': outs.mean(0), 'last': outs[-1], 'sum': outs.sum(0)}[tap]
    with torch.no_grad():
        assert torch.allclose(enc.extract_feature(x), expected, atol=1e-6)
        assert isinstance(enc.fc, torch.nn.Identity) and torch.equal(enc(x), enc.extract_feature(x))


def test_reference_key_names_sizes_and_aliases():
    lstm = BiLSTM()
    assert sorted(lstm.state_dict()) == ['bi_lstm.bias_hh_l0', 'bi_lstm.bias_ih_l0',
                                         'bi_lstm.weight_hh_l0', 'bi_lstm.weight_ih_l0']
    assert lstm.bi_lstm.weight_ih_l0.shape == (1024, 150) and not lstm.bi_lstm.bidirectional
    assert sum(p.numel() for p in lstm.parameters()) == 417792 and lstm.feature_dim == 256
    assert 'GRU.weight_ih_l1' in GRUModel(hidden_units=4, lstm_layer=2).state_dict()
    assert 'RNN.weight_hh_l0' in RNNModel(hidden_units=4).state_dict()
    bi = BiLSTM(hidden_units=4, bidirectional=True, num_class=7)
    assert 'bi_lstm.weight_ih_l0_reverse' in bi.state_dict() and bi.feature_dim == 8
    assert bi(clips()).shape == (3, 7) and bi.extract_feature(clips()).shape == (3, 8)
    for alias, cls in (('models.Models.Bi_lstm', BiLSTM), ('models.Models.GRU_model', GRUModel),
                       ('models.Models.RNN_model', RNNModel), ('ascal_lstm', BiLSTM)):
        assert ENCODERS.get(alias) is cls
    assert MODELS.get('net.ascal.ASCAL') is ASCAL and 'pretrain_ascal' in TASKS


def test_encoder_input_errors():
    enc = BiLSTM(hidden_units=4)
    with pytest.raises(ValueError, match='input_size=150'):
        enc(clips(v=20))
    with pytest.raises(ValueError, match=r'\(N, C, T, V, M\)'):
        enc(torch.zeros(2, 3, 7, 50))
    with pytest.raises(ValueError, match='tap'):
        BiLSTM(tap='max')
    assert BiLSTM(input_size=60, hidden_units=4)(clips(v=20, m=1)).shape == (3, 4)   # N-UCLA size


# ----------------------------------------------------------------------------- losses
LOGITS = torch.tensor([[2.0, 1.0, 0.0], [0.5, 1.5, -1.0]])


def test_losses_on_hand_made_logits():
    rows = LOGITS.tolist()
    nce = sum(-pos + math.log(sum(math.exp(v) for v in row)) for row in rows for pos in row[:1]) / 2
    assert infonce_loss(LOGITS).item() == pytest.approx(nce, rel=1e-6)
    softplus = lambda z: math.log1p(math.exp(-z))   # -log(sigmoid(z))
    terms = [softplus(row[0]) for row in rows] + [softplus(-v) for row in rows for v in row[1:]]
    assert logistic_loss(LOGITS).item() == pytest.approx(sum(terms) / 6, rel=1e-6)
    # hinges: row 0: 1+1-2=0, 1+0-2<0; row 1: 1+1.5-0.5=2, 1-1-0.5<0 -> mean 0.5
    assert triplet_loss(LOGITS).item() == pytest.approx(0.5)
    assert torch.equal(LOGITS, torch.tensor([[2.0, 1.0, 0.0], [0.5, 1.5, -1.0]]))   # inputs untouched


# ----------------------------------------------------------------------------- method
def tiny(**kw):
    torch.manual_seed(0)
    return ASCAL(**{**TINY, **kw})


def test_step_uses_raw_features_and_the_queue_before_this_step():
    m = tiny().train()
    x1, x2 = clips(seed=1), clips(seed=2)
    bound = 1 / math.sqrt(6 / 3)
    assert m.queue.shape == (6, 5) and m.queue.abs().max() <= bound
    queue = m.queue.clone()
    out = m(x1, x2, epoch=2)
    q, k = m.encoder_q(x1), m.encoder_k(x2)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], 1) / 0.5
    assert torch.allclose(out['loss'], infonce_loss(logits), atol=1e-6) and out['loss'].requires_grad
    assert out['prob'].item() == pytest.approx(logits[:, 0].mean().item(), abs=1e-6)
    assert torch.allclose(m.queue[:, :3], k.T.detach(), atol=1e-6) and int(m.queue_ptr) == 3
    m(x1, x2, epoch=2)                                 # wraps: slots 3, 4, 0
    assert int(m.queue_ptr) == 1 and torch.allclose(m.queue[:, [3, 4, 0]], k.T.detach(), atol=1e-6)
    assert not m.encoder_k.training and m.encoder_q.training


@pytest.mark.parametrize('loss_type', ['logit', 'MTrip'])
def test_other_loss_types(loss_type):
    m = tiny(loss_type=loss_type)
    queue = m.queue.clone()
    out = m(clips(seed=1), clips(seed=2), epoch=2)
    q, k = m.encoder_q(clips(seed=1)), m.encoder_k(clips(seed=2))
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], 1) / 0.5
    fn = {'logit': logistic_loss, 'MTrip': triplet_loss}[loss_type]
    assert torch.allclose(out['loss'], fn(logits), atol=1e-6)
    with pytest.raises(ValueError, match='loss_type'):
        tiny(loss_type='nce')


def test_warm_up_epoch_fills_the_queue_without_gradient():
    m = tiny(queue_warmup_epochs=2)
    out = m(clips(seed=1), clips(seed=2), epoch=2)
    assert not out['loss'].requires_grad and int(m.queue_ptr) == 3
    assert m(clips(seed=1), clips(seed=2), epoch=3)['loss'].requires_grad


def test_after_step_is_the_ema_of_the_parameters():
    m = tiny()
    with torch.no_grad():
        for p in m.encoder_q.parameters():
            p.add_(1.0)
    before = [p.clone() for p in m.encoder_k.parameters()]
    m.after_step()
    for k0, k1, q in zip(before, m.encoder_k.parameters(), m.encoder_q.parameters()):
        assert torch.allclose(k1, 0.9 * k0 + 0.1 * q)
    assert not any(p.requires_grad for p in m.encoder_k.parameters())


def test_evaluation_model_is_the_encoder_with_a_linear_classifier():
    torch.manual_seed(0)
    m = ASCAL(hidden_units=64, pretrain=False, num_class=60).eval()
    assert sorted(m.state_dict()) == sorted(['encoder_q.' + k for k in BiLSTM().state_dict()]
                                            + ['encoder_q.fc.weight', 'encoder_q.fc.bias'])
    assert abs(m.encoder_q.fc.weight.std().item() - 0.01) < 1e-3 and (m.encoder_q.fc.bias == 0).all()
    x = clips()
    assert torch.allclose(m(x), m.encoder_q.fc(m.extract_feature(x)))


# ----------------------------------------------------------------------------- engine
def ascal_argv(data, work, epochs=2, extra=()):
    return ['--work_dir', work, '--model_args.hidden_units', '8', '--model_args.queue_size', '12',
            '--train_feeder_args.data_path', data['train'][0],
            '--train_feeder_args.label_path', data['train'][1],
            '--train_feeder_args.selected_frames', '16',
            '--batch_size', '4', '--num_epoch', str(epochs), '--num_worker', '0',
            '--use_gpu', 'false', '--print_log', 'false', '--save_interval', '1', *extra]


def test_engine_applies_the_ema_after_the_optimizer_step(tiny_data, tmp_path):
    proc = ASCALPretrain.from_argv(ascal_argv(tiny_data, str(tmp_path / 'w')))
    proc.setup()
    assert proc.cfg['nesterov'] is False and proc.cfg['step'] == [30, 70] and proc.cfg['base_lr'] == 0.01
    model = proc.model
    x = torch.stack([proc.dataset[i][0] for i in range(4)])
    q0 = [p.clone() for p in model.encoder_q.parameters()]
    k0 = [p.clone() for p in model.encoder_k.parameters()]
    proc.train_step(x, epoch=1, step=0)                          # warm-up: no update
    assert all(torch.equal(a, b) for a, b in zip(q0, model.encoder_q.parameters()))
    assert int(model.queue_ptr) == 4 and proc.frozen_steps == 1
    proc.train_step(x, epoch=2, step=0)
    for k_old, k_new, q_new, q_old in zip(k0, model.encoder_k.parameters(), model.encoder_q.parameters(), q0):
        assert not torch.equal(q_new, q_old)
        # EMA with the parameters after the step (before it, the result would use q_old)
        assert torch.allclose(k_new, 0.999 * k_old + 0.001 * q_new, atol=1e-7)


def test_pretrain_then_linear_evaluation_from_the_command_line(tiny_data, tmp_path):
    import main
    work = str(tmp_path / 'pre')
    assert main.main(['pretrain_ascal', *ascal_argv(tiny_data, work)]) == 0
    log = open(os.path.join(work, 'log.txt')).read()
    assert 'Epoch 1 done' in log and '6 steps without update (method warm-up)' in log
    assert 'Epoch 2 done' in log and log.count('steps without update') == 1
    e1 = torch.load(os.path.join(work, 'epoch1_model.pt'), weights_only=True)
    e2 = torch.load(os.path.join(work, 'epoch2_model.pt'), weights_only=True)
    key = 'encoder_q.bi_lstm.weight_ih_l0'
    assert torch.equal(e1[key], e1[key.replace('_q', '_k')]) and not torch.equal(e1[key], e2[key])
    assert int(e2['queue_ptr']) == (2 * 6 * 4) % 12
    lin = str(tmp_path / 'lin')
    argv = ['--work_dir', lin, '--model', 'ascal', '--model_args.hidden_units', '8',
            '--model_args.pretrain', 'false', '--weights', os.path.join(work, 'epoch2_model.pt'),
            '--ignore_weights', 'encoder_k', 'queue', '--train_feeder', 'ascal_array',
            '--test_feeder', 'ascal_array',
            '--train_feeder_args.data_path', tiny_data['train'][0],
            '--train_feeder_args.label_path', tiny_data['train'][1],
            '--train_feeder_args.subtract_joint', '1', '--test_feeder_args.subtract_joint', '1',
            '--test_feeder_args.data_path', tiny_data['val'][0], '--test_feeder_args.label_path', tiny_data['val'][1],
            '--base_lr', '1', '--nesterov', 'true', '--step', '[1, 2]', '--lr_decay_rate', '0.5',
            '--num_epoch', '3', '--batch_size', '4', '--eval_interval', '1', '--num_worker', '0',
            '--use_gpu', 'false', '--print_log', 'false']
    proc = LinearEvaluation.from_argv(argv)
    assert [proc.lr_at(e) for e in (1, 2, 3)] == [1.0, 0.5, 0.25]
    result = proc.start()
    assert proc.cached and 0.0 <= result['final_epoch']['accuracy'][1] <= 1.0
    text = open(os.path.join(lin, 'log.txt')).read()
    assert 'Can not find weights [encoder_q.fc.weight]' in text and 'Cached features: train (24, 8)' in text


def test_released_checkpoint_layout_loads_through_weights_options(tmp_path):
    """A synthetic file in the reference layout: pickled Namespace, bare `bi_lstm.*` encoders."""
    import argparse
    from torchlight.io import load_weights
    torch.manual_seed(1)
    query, ema = BiLSTM(hidden_units=6), BiLSTM(hidden_units=6)
    path = str(tmp_path / 'ckpt_epoch_60.pth')
    torch.save({'opt': argparse.Namespace(model='lstm', hidden_units=6), 'model': query.state_dict(),
                'contrast': {'params': torch.tensor([-1]), 'memory': torch.zeros(5, 6)},
                'epoch': 60, 'model_ema': ema.state_dict()}, path)
    for container, source in ((None, query), ('model_ema', ema)):
        model = ASCAL(hidden_units=6, pretrain=False, num_class=4)
        missing = load_weights(model, path, log=lambda s: None, prefix='', container=container)
        assert sorted(missing) == ['encoder_q.fc.bias', 'encoder_q.fc.weight']
        assert torch.equal(model.encoder_q.bi_lstm.weight_hh_l0, source.bi_lstm.weight_hh_l0)


@pytest.mark.parametrize('split', ['xsub', 'xview'])
def test_shipped_configs_hold_the_reference_protocols(split):
    from tests.conftest import ROOT
    from torchlight.config import build_config
    folder = os.path.join(ROOT, 'config', 'ntu60', 'ascal', split)

    def cfg(task, name):
        return build_config(TASKS.get(task).options, ['--config', os.path.join(folder, name)])
    pre = cfg('pretrain_ascal', f'pretext_ascal_{split}.yaml')
    args = pre['model_args']
    assert (args['queue_size'], args['Temperature'], args['momentum']) == (16384, 0.06, 0.999)
    assert args['queue_warmup_epochs'] == 1 and pre['nesterov'] is False
    assert (pre['base_lr'], pre['batch_size'], pre['num_epoch'], pre['step']) == (0.01, 32, 61, [30, 70])
    assert pre['train_feeder_args']['aug1'] == pre['train_feeder_args']['aug2'] == 'subtract_randomFlip_shear'
    lin = cfg('linear_evaluation', f'linear_eval_ascal_{split}.yaml')
    assert (lin['base_lr'], lin['batch_size'], lin['num_epoch'], lin['weight_decay']) == (1.0, 32, 90, 0.0)
    assert lin['nesterov'] is True
    assert lin['step'] == [15, 35, 60, 75] and lin['lr_decay_rate'] == 0.5
    assert lin['train_feeder_args']['subtract_joint'] == lin['test_feeder_args']['subtract_joint'] == 1
    for tag, pct, epochs, step in (('1p', 0.01, 35, [15, 30]), ('10p', 0.1, 15, [8]), ('50p', 0.5, 10, [7])):
        semi = cfg('finetune_evaluation', f'semi_ascal_{split}_{tag}.yaml')
        assert semi['train_feeder_args']['label_percent'] == pct and 'label_percent' not in semi['test_feeder_args']
        assert (semi['num_epoch'], semi['step'], semi['base_lr'], semi['lr_decay_rate']) == (epochs, step, 0.01, 0.5)


def test_benchmark_counts_the_fused_recurrent_flops():
    from tools.benchmark import METHODS, REFERENCE_ROWS, recurrent_flops
    m = ASCAL(hidden_units=8, queue_size=10)
    # query encoder trained (x3), key encoder frozen (x1): 2*T*N*4H*(I+H) each
    assert recurrent_flops(m, batch=2, frames=5) == 2 * 5 * 2 * 32 * (150 + 8) * (3 + 1)
    assert 'ascal' in METHODS and REFERENCE_ROWS['ascal']['batch'] == 32   # a default row
    assert REFERENCE_ROWS['ascal']['frames'] == 150 and REFERENCE_ROWS['ascal']['model_args']['queue_size'] == 16384



def test_lr_decay_rate_must_be_positive(tiny_data, tmp_path):
    from torchlight.config import ConfigError
    with pytest.raises(ConfigError, match="'lr_decay_rate' must be > 0"):
        ASCALPretrain.from_argv(ascal_argv(tiny_data, str(tmp_path / 'w'), extra=['--lr_decay_rate', '0']))
