"""HiCo hierarchical contrast (reference spec 4.3): the multi-positive InfoNCE against the
reference's softmax-mask formula and hand computation, the five terms against a slow
reference formulation of one step, queue writes and both pointer modes, the evaluation
wrapper, and HiCo's streams against the reference feeder's literal loops."""
import math

import pytest
import torch
import torch.nn.functional as F

from feeder.streams import to_stream
from net.hico import HiCo, info_nce
from net.moco import write_queue_ as enqueue
from torchlight.registry import ENCODERS, MODELS

TINY = dict(t_input_size=30, s_input_size=24, hidden_size=8, num_head=2, granularity=4)  # C3 T8 V5 M2


def tiny_hico(**kw):
    torch.manual_seed(0)
    return HiCo(**{**TINY, 'encoder': 'GRU', 'feature_dim': 4, 'queue_size': 6, 'momentum': 0.9, **kw})


def reference_multi_positive(logits, mask):
    """losses.MultiPositiveInfoNCE of the reference: -log(sum(softmax * mask))."""
    return -torch.log((F.softmax(logits, dim=1) * mask).sum(1)).mean()


# ----------------------------------------------------------------------------- loss
def test_info_nce_on_hand_made_logits():
    pos = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float64)
    neg = torch.tensor([[0.0, 3.0, -2.0], [1.5, 0.0, 0.0]], dtype=torch.float64)
    by_hand = []
    for p, n in zip(pos.tolist(), neg.tolist()):
        everything = sum(math.exp(v) for v in p + n)
        by_hand.append(-math.log(sum(math.exp(v) for v in p) / everything))
    assert info_nce(pos, neg).item() == pytest.approx(sum(by_hand) / 2, abs=1e-12)
    mask = torch.cat([torch.ones(2, 2), torch.zeros(2, 3)], 1).double()
    assert torch.allclose(info_nce(pos, neg), reference_multi_positive(torch.cat([pos, neg], 1), mask))


def test_single_positive_info_nce_is_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(5, 9) / 0.2
    target = torch.zeros(5, dtype=torch.long)
    assert torch.allclose(info_nce(logits[:, :1], logits[:, 1:]), F.cross_entropy(logits, target), atol=1e-6)


def test_info_nce_stays_finite_where_the_reference_formula_underflows():
    pos = torch.tensor([[-60.0, -61.0]])          # T = 0.2 logits of far positives
    neg = torch.tensor([[60.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert torch.isinf(reference_multi_positive(torch.cat([pos, neg], 1), mask))
    exact = 120.0 - math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-60) + math.exp(-120) + math.exp(-121))
    assert info_nce(pos, neg).item() == pytest.approx(exact, rel=1e-6)


def slow_step_loss(q, k, queues, T):
    """One step written as the reference builder + train loop: logits, masks, labels, softmax."""
    qc, qp, qt, qs, qi = q
    kc, kp, kt, ks, ki = k
    n, g = kc.shape[:2]
    total = 0.0
    for anchor, keys, queue in ((qc[:, 0], kc, queues['c']), (qp[:, 0], kp, queues['p'])):
        pos = torch.stack([torch.stack([anchor[i] @ keys[i, j] for j in range(g)]) for i in range(n)])
        logits = torch.cat([pos, anchor @ queue], 1) / T
        mask = torch.cat([torch.ones(n, g), torch.zeros(n, queue.shape[1])], 1).to(logits)
        total = total + reference_multi_positive(logits, mask)
    for a, b, queue in ((qt, ks, queues['s']), (qs, kt, queues['t']), (qi, ki, queues['i'])):
        logits = torch.cat([(a * b).sum(1, keepdim=True), a @ queue], 1) / T
        total = total + F.cross_entropy(logits, torch.zeros(n, dtype=torch.long))
    return total


@pytest.mark.parametrize('kind', ['GRU', 'Transformer'])
def test_step_matches_the_reference_formulation_and_fills_the_queues(kind):
    m = tiny_hico(encoder=kind).double().eval()   # eval: no dropout, so q and k can be recomputed
    x_q, x_k = torch.randn(2, 3, 3, 8, 5, 2, dtype=torch.float64)
    queues = {c: getattr(m, f'{c}_queue').clone() for c in 'cptsi'}
    out = m(x_q, x_k, epoch=1)
    q = [F.normalize(z, dim=-1) for z in m.encoder_q(x_q)]
    with torch.no_grad():
        k = [F.normalize(z, dim=-1) for z in m.encoder_k(x_k)]   # the EMA already happened
    assert out['loss'].item() == pytest.approx(slow_step_loss(q, k, queues, m.T).item(), abs=1e-10)
    assert out['loss'].item() == pytest.approx(sum(out[n].item() for n in out if n.startswith('loss_')), abs=1e-12)
    # all G key levels, sample-major, then the N keys of each domain / the instance
    assert torch.allclose(m.c_queue[:, :12], k[0].reshape(12, 4).T) and int(m.c_queue_ptr) == 12
    assert torch.allclose(m.p_queue[:, :12], k[1].reshape(12, 4).T) and int(m.p_queue_ptr) == 12
    for name, z in (('t', k[2]), ('s', k[3]), ('i', k[4])):
        assert torch.allclose(getattr(m, f'{name}_queue')[:, :3], z.T) and int(getattr(m, f'{name}_queue_ptr')) == 3
    assert torch.equal(m.c_queue[:, 12:], queues['c'][:, 12:])


def test_gradients_reach_the_query_encoder_only_and_ema_is_in_place():
    m = tiny_hico(encoder='Transformer')
    m.train()
    key_params = [p for p in m.encoder_k.parameters()]
    before = [p.detach().clone() for p in key_params]
    q_before = [p.detach().clone() for p in m.encoder_q.parameters()]
    with torch.no_grad():
        for p in m.encoder_q.parameters():
            p.add_(0.5)
    out = m(torch.randn(3, 3, 8, 5, 2), torch.randn(3, 3, 8, 5, 2))
    out['loss'].backward()
    assert all(p.grad is None for p in m.encoder_k.parameters())
    assert all(p.grad is not None for p in m.encoder_q.parameters())
    for p, b, q in zip(key_params, before, q_before):   # same tensors, updated: 0.9 k + 0.1 (q + 0.5)
        assert torch.allclose(p, 0.9 * b + 0.1 * (q + 0.5), atol=1e-6)
    assert 0.0 <= out['pos_top1'].item() <= 1.0


# ----------------------------------------------------------------------------- queue pointer
def test_pointer_wraps_at_the_true_queue_length_by_default():
    m = tiny_hico(queue_size=4, granularity=2, t_input_size=30, s_input_size=24)
    assert m.c_queue.shape == (4, 8) and m.t_queue.shape == (4, 4)
    written = []
    for step in range(5):                                  # 1 sample x G=2 levels per step
        kc = torch.full((1, 2, 4), float(step))
        m.enqueue_keys(kc, kc, kc[:, 0], kc[:, 0], kc[:, 0])
        written.append(int(m.c_queue_ptr))
    assert written == [2, 4, 6, 0, 2]
    assert m.c_queue[0].tolist() == [4, 4, 1, 1, 2, 2, 3, 3]        # all 8 columns used
    assert [int(getattr(m, f'{c}_queue_ptr')) for c in 'tsi'] == [1, 1, 1]


def test_reference_pointer_mode_only_ever_writes_the_first_k_columns():
    m = tiny_hico(queue_size=4, granularity=2, queue_ptr_mod='K')
    initial = m.c_queue.clone()
    written = []
    for step in range(5):
        kc = torch.full((1, 2, 4), float(step))
        m.enqueue_keys(kc, kc, kc[:, 0], kc[:, 0], kc[:, 0])
        written.append(int(m.c_queue_ptr))
    assert written == [2, 0, 2, 0, 2]
    assert m.c_queue[0, :4].tolist() == [4, 4, 3, 3]
    assert torch.equal(m.c_queue[:, 4:], initial[:, 4:])             # never written (the bug)


def test_keys_of_all_ranks_are_gathered_before_the_levels_are_flattened(monkeypatch):
    """Under DDP the clip queue must hold, rank after rank, every sample's G levels: the order
    one process with the global batch writes."""
    import net.hico as hico_module
    other_rank = 100.0
    monkeypatch.setattr(hico_module.dist, 'all_gather_cat', lambda t: torch.cat([t, t + other_rank]))
    m = tiny_hico(queue_size=8, granularity=2)
    kc = torch.tensor([[[0.0] * 4, [1.0] * 4], [[2.0] * 4, [3.0] * 4]])   # 2 samples x 2 levels
    m.enqueue_keys(kc, kc, kc[:, 0], kc[:, 0], kc[:, 0])
    assert m.c_queue[0, :8].tolist() == [0, 1, 2, 3, 100, 101, 102, 103] and int(m.c_queue_ptr) == 8
    assert m.i_queue[0, :4].tolist() == [0, 2, 100, 102] and int(m.i_queue_ptr) == 4


def test_enqueue_wraps_any_batch_and_keeps_the_newest_when_larger_than_the_queue():
    queue, ptr = torch.zeros(2, 5), torch.tensor([3])
    enqueue(queue, ptr, torch.arange(6, dtype=torch.float32).view(3, 2), 5)
    assert int(ptr) == 1 and queue[0].tolist() == [4, 0, 0, 0, 2]
    enqueue(queue, ptr, torch.arange(14, dtype=torch.float32).view(7, 2), 5)
    assert int(ptr) == 1 and queue[0].tolist() == [12, 4, 6, 8, 10]


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match='queue_ptr_mod'):
        tiny_hico(queue_ptr_mod='G')
    with pytest.raises(ValueError, match='hierarchical encoder'):
        HiCo(base_encoder='net.st_gcn.Model')


# ----------------------------------------------------------------------------- wrapper / registry
def test_evaluation_wrapper_and_registry_names():
    m = HiCo(**TINY, encoder='LSTM', pretrain=False, num_class=7)
    assert not hasattr(m, 'encoder_k') and not hasattr(m, 'c_queue')
    assert sorted(k for k in m.state_dict() if not k.startswith('encoder_q.hi_encoder.')) == [
        'encoder_q.fc.bias', 'encoder_q.fc.weight']
    m.eval()
    x = torch.randn(2, 3, 8, 5, 2)
    assert m.extract_feature(x).shape == (2, 64) and m(x).shape == (2, 7)
    assert abs(m.encoder_q.fc.weight.std().item() - 0.01) < 0.003 and not m.encoder_q.fc.bias.any()
    assert MODELS.get('hico.builder.HiCo') is HiCo and MODELS.get('hico') is HiCo
    assert ENCODERS.get('hico.hi_encoder.DownstreamEncoder') is ENCODERS.get('hico_encoder')
    assert HiCo.views == ('crop_pose', 'crop_pose')


def test_pretraining_state_dict_has_the_reference_names_and_sizes():
    m = HiCo(encoder='GRU', hidden_size=64, queue_size=256)
    state = m.state_dict()
    assert state['c_queue'].shape == state['p_queue'].shape == (128, 1024)
    assert state['i_queue'].shape == (128, 256)
    assert torch.allclose(state['c_queue'].norm(dim=0), torch.ones(1024))
    heads = {k.split('.')[0] + ('.' + k.split('.')[1] if k.startswith('encoder') else '') for k in state}
    assert heads == {f'{e}.{p}' for e in ('encoder_q', 'encoder_k') for p in
                     ('hi_encoder', 'clip_proj', 'part_proj', 'td_proj', 'sd_proj', 'instance_proj')} | {
        f'{c}_queue{s}' for c in 'cptsi' for s in ('', '_ptr')}
    for a, b in zip(m.encoder_q.state_dict().values(), m.encoder_k.state_dict().values()):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- streams
HICO_BONES = [(1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10),
              (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19),
              (21, 21), (22, 23), (23, 8), (24, 25), (25, 12)]   # AGCN inward list + (21, 21)


def test_hico_streams_equal_the_shared_stream_transforms():
    """The reference feeder's motion (zero last frame) and bone loops give feeder/streams' numbers."""
    x = torch.randn(2, 3, 6, 25, 2)
    motion = torch.zeros_like(x)
    bone = torch.zeros_like(x)
    for i in range(2):
        motion[i, :, :-1] = x[i, :, 1:] - x[i, :, :-1]
        for a, b in HICO_BONES:
            bone[i, :, :, a - 1] = x[i, :, :, a - 1] - x[i, :, :, b - 1]
    assert torch.equal(to_stream(x, 'motion'), motion)
    assert torch.equal(to_stream(x, 'bone'), bone)
