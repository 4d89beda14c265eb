"""ISC intra / inter-skeleton MoCo (reference doc ISC 3.3): losses against a per-sample
formulation, hand-made logits, queue pointers, EMA of both encoder pairs, heads and options."""
import math

import pytest
import torch
import torch.nn.functional as F

from net.isc import ISC, ISCInter, contrastive_loss
from torchlight.config import ConfigError
from torchlight.registry import MODELS

GRU = {'base_encoder': 'isc_gru', 'en_input_size': 150, 'en_hidden_size': 6, 'en_num_layers': 2}
HCN = {'out_channel': 4, 'window_size': 16}


def per_sample_infonce(q, k, queue, T):
    """-log(exp(q_i.k_i/T) / (exp(q_i.k_i/T) + sum_j exp(q_i.queue_j/T))), averaged, one sample at a time."""
    losses = []
    for i in range(len(q)):
        pos = math.exp(float(q[i] @ k[i]) / T)
        neg = sum(math.exp(float(q[i] @ queue[:, j]) / T) for j in range(queue.shape[1]))
        losses.append(-math.log(pos / (pos + neg)))
    return sum(losses) / len(losses)


def test_contrastive_loss_on_hand_made_embeddings():
    m = ISC(**GRU, feature_dim=2, queue_size=2, Temperature=0.5)
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    queue = torch.tensor([[0.0, -1.0], [1.0, 0.0]])       # columns (0, 1) and (-1, 0)
    logits = m.logits(q, k, queue)
    assert torch.equal(logits, torch.tensor([[2.0, 0.0, -2.0], [0.0, 2.0, 0.0]]))
    expected = (-math.log(math.e ** 2 / (math.e ** 2 + 1 + math.e ** -2))
                - math.log(1 / (1 + math.e ** 2 + 1))) / 2
    assert float(contrastive_loss(logits)) == pytest.approx(expected, rel=1e-6)


def test_intra_loss_queue_and_ema():
    torch.manual_seed(0)
    m = ISC(**GRU, feature_dim=4, queue_size=10, momentum=0.9, Temperature=0.2)
    assert m.views == ('crop_pose', 'crop_pose') and MODELS.get('moco.builder_intra.MoCo') is ISC
    x_q, x_k = torch.randn(3, 3, 8, 25, 2), torch.randn(3, 3, 8, 25, 2)
    queue = m.queue.clone()
    k_before = [p.clone() for p in m.encoder_k.parameters()]
    with torch.no_grad():
        for p in m.encoder_q.parameters():
            p.add_(0.01)
    out = m(x_q, x_k, epoch=1)
    for old, new, q in zip(k_before, m.encoder_k.parameters(), m.encoder_q.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * q)
    with torch.no_grad():
        q = F.normalize(m.encoder_q(x_q), dim=1)
        k = F.normalize(m.encoder_k(x_k), dim=1)
    assert float(out['loss'].detach()) == pytest.approx(per_sample_infonce(q, k, queue, 0.2), rel=1e-5)
    assert torch.allclose(m.queue[:, :3], k.T, atol=1e-6) and torch.equal(m.queue[:, 3:], queue[:, 3:])
    assert int(m.queue_ptr) == 3
    out['loss'].backward()
    assert all(p.grad is None for p in m.encoder_k.parameters())
    assert m.encoder_q.encoder.gru.weight_ih_l0.grad is not None


def test_inter_loss_pairs_queues_and_ema():
    torch.manual_seed(0)
    m = ISCInter(**GRU, second_encoder='hcn', second_encoder_args=HCN, feature_dim=4, queue_size=10,
                 momentum=0.9, Temperature=0.2)
    assert MODELS.get('moco.builder_inter.MoCo') is ISCInter
    x_1, x_2 = torch.randn(3, 3, 16, 25, 2), torch.randn(3, 3, 16, 25, 2)
    queue_1, queue_2 = m.Queue_S1.clone(), m.Queue_S2.clone()
    l_before = [p.clone() for p in m.encoder_l.parameters()]
    with torch.no_grad():
        for p in m.encoder_r.parameters():
            p.add_(0.01)
    m.eval()   # HCN dropout off, so the recomputation below sees the same network
    out = m(x_1, x_2, epoch=1)
    for old, new, r in zip(l_before, m.encoder_l.parameters(), m.encoder_r.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * r)
    with torch.no_grad():
        q, r = (F.normalize(e(x_1), dim=1) for e in (m.encoder_q, m.encoder_r))
        k, l = (F.normalize(e(x_2), dim=1) for e in (m.encoder_k, m.encoder_l))
    # s1 query against the s2 key and queue, s2 query against the s1 key and queue
    loss_1 = per_sample_infonce(q, l, queue_2, 0.2)
    loss_2 = per_sample_infonce(r, k, queue_1, 0.2)
    assert float(out['loss_s1']) == pytest.approx(loss_1, rel=1e-5)
    assert float(out['loss_s2']) == pytest.approx(loss_2, rel=1e-5)
    assert float(out['loss'].detach()) == pytest.approx(loss_1 + loss_2, rel=1e-5)
    assert torch.allclose(m.Queue_S1[:, :3], k.T, atol=1e-6) and torch.allclose(m.Queue_S2[:, :3], l.T, atol=1e-6)
    assert int(m.queue_ptr_S1) == int(m.queue_ptr_S2) == 3
    m.train()
    m(x_1, x_2, epoch=1)['loss'].backward()
    assert all(p.grad is None for e in (m.encoder_k, m.encoder_l) for p in e.parameters())
    assert m.encoder_q.fc[0].weight.grad is not None and m.encoder_r.conv1[0].weight.grad is not None


@pytest.mark.parametrize('batch', [4, 3])
def test_queue_pointers_cover_every_slot(batch):
    torch.manual_seed(0)
    m = ISCInter(**GRU, second_encoder='hcn', second_encoder_args=HCN, feature_dim=4, queue_size=10)
    m.Queue_S1.zero_()
    m.Queue_S2.zero_()
    pointers, written = [], []
    for step in range(5):
        x = torch.randn(batch, 3, 16, 25, 2)
        m(x, x, epoch=1)
        pointers.append((int(m.queue_ptr_S1), int(m.queue_ptr_S2)))
        written.append([int((queue.norm(dim=0) > 0.5).sum()) for queue in (m.Queue_S1, m.Queue_S2)])
    assert pointers == [(((s + 1) * batch) % 10,) * 2 for s in range(5)]
    # slots fill in pointer order, wrapping at the end, until every one holds a unit key
    assert written == [[min((s + 1) * batch, 10)] * 2 for s in range(5)]
    for queue in (m.Queue_S1, m.Queue_S2):
        assert torch.allclose(queue.norm(dim=0), torch.ones(10), atol=1e-5)


def test_mlp_heads_key_copies_and_reference_names():
    torch.manual_seed(0)
    m = ISCInter(**GRU, second_encoder='hcn', second_encoder_args=HCN, feature_dim=4, queue_size=8)
    keys = set(m.state_dict())
    assert {'Queue_S1', 'queue_ptr_S1', 'Queue_S2', 'queue_ptr_S2'} <= keys and 'queue' not in keys
    assert {'encoder_q.fc.0.weight', 'encoder_q.fc.2.weight', 'encoder_r.fc.0.weight', 'encoder_l.fc.2.bias'} <= keys
    assert m.encoder_r.fc[0].weight.shape == (16 * 1, 16) and m.encoder_q.fc[2].weight.shape == (4, 12)
    for query, key in ((m.encoder_q, m.encoder_k), (m.encoder_r, m.encoder_l)):
        for (name, a), (_, b) in zip(query.state_dict().items(), key.state_dict().items()):
            assert torch.equal(a, b), name
        assert not any(p.requires_grad for p in key.parameters())
    plain = ISC(**GRU, feature_dim=4, queue_size=8, mlp=False)
    assert plain.encoder_q.fc.weight.shape == (4, 12) and not hasattr(plain, 'encoder_r')


def test_evaluation_wrappers():
    torch.manual_seed(0)
    m = ISC(base_encoder='agcn', pretrain=False, num_class=60)
    assert not hasattr(m, 'encoder_k') and not hasattr(m, 'queue')
    assert m.encoder_q.fc.weight.detach().std().item() == pytest.approx(0.01, rel=0.1)
    assert not m.encoder_q.fc.bias.detach().any()
    inter = ISCInter(**GRU, pretrain=False, num_class=5)
    assert {k.split('.')[0] for k in inter.state_dict()} == {'encoder_q'}
    x = torch.randn(2, 3, 8, 25, 2)
    assert inter(x).shape == (2, 5) and inter.extract_feature(x).shape == (2, 12)


def test_bad_second_encoder_arguments_are_named():
    with pytest.raises(ConfigError, match=r"unknown key 'hidden' in model_args.second_encoder_args"):
        ISCInter(**GRU, second_encoder='hcn', second_encoder_args={'hidden': 3}, queue_size=8)
    with pytest.raises(ConfigError, match="model_args.second_encoder: unknown encoder 'gcn'"):
        ISCInter(**GRU, second_encoder='gcn', queue_size=8)
    # a value the second encoder refuses names its key under second_encoder_args, not model_args
    with pytest.raises(ConfigError, match=r"^model_args\.second_encoder_args\.window_size: HCN window_size"):
        ISCInter(**GRU, second_encoder='hcn', second_encoder_args={**HCN, 'window_size': 20}, queue_size=8)
    agcn = {'num_point': 20, 'num_person': 1, 'graph_args': {'layout': 'nw-ucla', 'labeling_mode': 'star'}}
    with pytest.raises(ConfigError, match=r"^model_args\.second_encoder_args\.graph_args\.labeling_mode: "):
        ISCInter(**GRU, second_encoder='agcn', second_encoder_args=agcn, queue_size=8)
    agcn['graph_args'] = {'layout': 'no-such-layout'}
    with pytest.raises(ConfigError, match=r"^model_args\.second_encoder_args: "):
        ISCInter(**GRU, second_encoder='agcn', second_encoder_args=agcn, queue_size=8)
