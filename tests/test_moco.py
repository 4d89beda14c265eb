import torch
import torch.nn.functional as F

from net.skeletonclr import SkeletonCLR
from tests.conftest import TINY_ENCODER


def tiny(**kw):
    torch.manual_seed(0)
    return SkeletonCLR(**{**TINY_ENCODER, 'feature_dim': 4, 'queue_size': 10, 'momentum': 0.9, **kw})


def test_key_encoder_starts_as_copy_and_is_frozen():
    m = tiny()
    for (nq, q), (nk, k) in zip(m.encoder_q.state_dict().items(), m.encoder_k.state_dict().items()):
        assert nq == nk and torch.equal(q, k)
    assert not any(p.requires_grad for p in m.encoder_k.parameters())
    ref = tiny(key_init='reference')
    assert not torch.equal(ref.encoder_q.fc[0].weight, ref.encoder_k.fc[0].weight)


def test_momentum_update_formula():
    m = tiny()
    with torch.no_grad():
        for p in m.encoder_q.parameters():
            p.add_(1.0)
    before = [p.clone() for p in m.encoder_k.parameters()]
    m.momentum_update()
    for k0, k1, q in zip(before, m.encoder_k.parameters(), m.encoder_q.parameters()):
        assert torch.allclose(k1, 0.9 * k0 + 0.1 * q)


def test_enqueue_wraps_for_any_batch_size():
    m = tiny()
    keys = torch.arange(7 * 4, dtype=torch.float32).view(7, 4)
    m.enqueue(keys)
    assert int(m.queue_ptr) == 7 and torch.equal(m.queue[:, :7], keys.T)
    m.enqueue(keys[:5] + 100)                          # crosses the end: slots 7, 8, 9, 0, 1
    assert int(m.queue_ptr) == 2
    assert torch.equal(m.queue[:, [7, 8, 9, 0, 1]], (keys[:5] + 100).T)
    assert torch.equal(m.queue[:, 2:7], keys[2:7].T)


def test_infonce_loss_matches_hand_computation():
    m = tiny()
    x = torch.randn(3, 3, 12, 25, 2)
    queue = m.queue.clone()
    m.train()
    torch.manual_seed(1)
    out = m(x, x.flip(2), epoch=1)
    # Recompute with the same parameters/dropout stream: q from encoder_q, k from the updated key encoder
    torch.manual_seed(1)
    q = F.normalize(m.encoder_q(x), dim=1)
    k = F.normalize(m.encoder_k(x.flip(2)), dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], 1) / m.T
    expected = -torch.log_softmax(logits, 1)[:, 0].mean()
    assert torch.allclose(out['loss'], expected, atol=1e-5)
    assert torch.allclose(m.queue[:, :3], k.T, atol=1e-6) and int(m.queue_ptr) == 3


def test_eval_wrapper_returns_logits():
    m = SkeletonCLR(**TINY_ENCODER, pretrain=False, num_class=6)
    assert not hasattr(m, 'encoder_k') and not hasattr(m, 'queue')
    m.eval()
    x = torch.randn(2, 3, 12, 25, 2)
    assert m(x).shape == (2, 6)
    assert torch.allclose(m(x), m.encoder_q.fc(m.extract_feature(x)), atol=1e-6)
