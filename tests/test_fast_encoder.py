"""The fast ST-GCN path (frame-major GEMMs) equals the plain NCHW formulation."""
import pytest
import torch
import torch.nn.functional as F

from net.skeletonclr import SkeletonCLR
from net.st_gcn import GraphContraction, Model, TemporalConv, fast_dropout_mask
from tests.conftest import TINY_ENCODER
from tests.test_st_gcn import randomise, slow_feature


def to_frames(x):
    """(N, C, T, V) -> frame-major (T, N*V, C)."""
    n, c, t, v = x.shape
    return x.permute(2, 0, 3, 1).reshape(t, n * v, c)


@pytest.mark.parametrize('stride,frames,pad,kt', [(1, 7, 4, 9), (2, 8, 4, 9), (2, 7, 4, 9),
                                                  (1, 3, 4, 9), (1, 6, 1, 3), (2, 5, 0, 3)])
def test_temporal_conv_matches_conv2d(stride, frames, pad, kt):
    g = torch.Generator().manual_seed(stride * 100 + frames)
    x = torch.randn(3, 5, frames, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 5, kt, 1, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(x, w, b, (stride, 1), (pad, 0))
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref, (x, w, b), grad)
    xf = to_frames(x.detach()).requires_grad_()
    out = TemporalConv.apply(xf, w, b, stride, pad)
    torch.testing.assert_close(out, to_frames(ref), rtol=1e-12, atol=1e-12)
    gx, gw, gb = torch.autograd.grad(out, (xf, w, b), to_frames(grad))
    torch.testing.assert_close(gx, to_frames(ref_grads[0]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw, ref_grads[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gb, ref_grads[2], rtol=1e-12, atol=1e-12)


def test_graph_contraction_gradients():
    a = torch.randn(5, 12, dtype=torch.float64, requires_grad=True)
    z = torch.randn(7, 12, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(GraphContraction.apply, (a, z))
    torch.testing.assert_close(GraphContraction.apply(a, z), torch.einsum('wj,bjc->bwc', a, z))


def twins(dropout=0.0, **kw):
    torch.manual_seed(0)
    ref = randomise(Model(hidden_channels=4, hidden_dim=8, num_class=5, dropout=dropout,
                          impl='reference', **kw)).double()
    fast = Model(hidden_channels=4, hidden_dim=8, num_class=5, dropout=dropout, impl='fast', **kw).double()
    fast.load_state_dict(ref.state_dict())
    return ref, fast


@pytest.mark.parametrize('train', [False, True])
def test_encoder_outputs_gradients_and_bn_statistics_match(train):
    ref, fast = twins()
    ref.train(train)
    fast.train(train)
    x = torch.randn(3, 3, 20, 25, 2, dtype=torch.float64)
    torch.testing.assert_close(fast.backbone(x), ref.backbone(x), rtol=1e-10, atol=1e-10)
    out_ref, out_fast = ref(x), fast(x)
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-10, atol=1e-10)
    out_ref.pow(2).sum().backward()
    out_fast.pow(2).sum().backward()
    for (name, p), q in zip(ref.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-10, msg=name)
    for (name, a), b in zip(ref.state_dict().items(), fast.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10, msg=name)   # running stats


def test_fast_path_matches_straightforward_formulation():
    _, fast = twins()
    fast.eval()
    x = torch.randn(2, 3, 12, 25, 2, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fast.extract_feature(x), slow_feature(fast, x), rtol=1e-10, atol=1e-10)


def test_eadm_drop_branch_matches():
    ref, fast = twins(eadm='fixed')
    x = torch.randn(2, 3, 12, 25, 2, dtype=torch.float64)
    for a, b in zip(ref(x, drop=True), fast(x, drop=True)):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


def test_skeletonclr_loss_matches_plain_formulation_at_reference_width():
    """Reference widths (hidden 16, hidden_dim 256), float32, train mode: loss within 1e-4."""
    args = dict(TINY_ENCODER, hidden_channels=16, hidden_dim=256, dropout=0.0, feature_dim=128,
                queue_size=256, momentum=0.999, Temperature=0.07)
    torch.manual_seed(0)
    ref = SkeletonCLR(**args, impl='reference')
    fast = SkeletonCLR(**args, impl='fast')
    fast.load_state_dict(ref.state_dict())
    x_q, x_k = torch.randn(2, 4, 3, 30, 25, 2)
    loss_ref = ref(x_q, x_k)['loss']
    loss_fast = fast(x_q, x_k)['loss']
    assert abs(loss_ref.item() - loss_fast.item()) < 1e-4
    loss_ref.backward()
    loss_fast.backward()
    for (name, p), q in zip(ref.named_parameters(), fast.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)
    torch.testing.assert_close(fast.queue, ref.queue, rtol=0, atol=1e-5)


def test_dropout_mask_rate_and_reproducibility():
    torch.manual_seed(3)
    keep = fast_dropout_mask((1000, 1000), 0.5, torch.device('cpu'))
    assert keep.dtype == torch.bool and abs(keep.float().mean().item() - 0.5) < 0.002
    other = fast_dropout_mask((1000, 100), 0.3, torch.device('cpu'))   # 0.3 * 256 is not whole
    assert abs(other.float().mean().item() - 0.7) < 0.005
    torch.manual_seed(3)
    assert torch.equal(keep, fast_dropout_mask((1000, 1000), 0.5, torch.device('cpu')))
    # train-mode dropout keeps the expectation (inverted dropout)
    _, fast = twins(dropout=0.5)
    fast.train()
    assert fast.st_gcn_networks[1].tcn[4].p == 0.5


def test_bf16_autocast_runs_on_cpu():
    torch.manual_seed(0)
    m = SkeletonCLR(**dict(TINY_ENCODER, feature_dim=8, queue_size=16))
    x = torch.randn(4, 3, 16, 25, 2)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = m(x, x)
    out['loss'].backward()
    assert torch.isfinite(out['loss'])
    assert all(torch.isfinite(p.grad).all() for p in m.encoder_q.parameters() if p.grad is not None)
