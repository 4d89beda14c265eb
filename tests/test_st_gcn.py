import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from net.init import weights_init
from net.st_gcn import EADM, Model

H16 = dict(in_channels=3, hidden_channels=16, hidden_dim=256, num_class=60, dropout=0.5,
           graph_args={'layout': 'ntu-rgb+d', 'strategy': 'spatial'},
           edge_importance_weighting=True)


def n_trainable(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def mlp_head():
    return nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 128))


def reference_key_shapes(hidden=16, hidden_dim=256, num_class=60, in_channels=3, V=25, K=3):
    """Reference state-dict keys and shapes, written out from the spec (section 3.3)."""
    shapes = {'A': (K, V, V)}

    def bn(prefix, c):
        for name in ('weight', 'bias', 'running_mean', 'running_var'):
            shapes[f'{prefix}.{name}'] = (c,)
        shapes[f'{prefix}.num_batches_tracked'] = ()

    bn('data_bn', in_channels * V)
    h = hidden
    widths = [(in_channels, h), (h, h), (h, h), (h, h), (h, 2 * h), (2 * h, 2 * h), (2 * h, 2 * h),
              (2 * h, 4 * h), (4 * h, 4 * h), (4 * h, hidden_dim)]
    for i, (cin, cout) in enumerate(widths):
        p = f'st_gcn_networks.{i}'
        shapes[f'{p}.gcn.conv.weight'] = (K * cout, cin, 1, 1)
        shapes[f'{p}.gcn.conv.bias'] = (K * cout,)
        bn(f'{p}.tcn.0', cout)
        shapes[f'{p}.tcn.2.weight'] = (cout, cout, 9, 1)
        shapes[f'{p}.tcn.2.bias'] = (cout,)
        bn(f'{p}.tcn.3', cout)
        if i in (4, 7, 9):
            shapes[f'{p}.residual.0.weight'] = (cout, cin, 1, 1)
            shapes[f'{p}.residual.0.bias'] = (cout,)
            bn(f'{p}.residual.1', cout)
        shapes[f'edge_importance.{i}'] = (K, V, V)
    shapes['fc.weight'] = (num_class, hidden_dim)
    shapes['fc.bias'] = (num_class,)
    return shapes


# ---------------------------------------------------------------- shapes, counts, state dict

def test_output_shapes():
    torch.manual_seed(0)
    m = Model(**H16).eval()
    x = torch.randn(2, 3, 50, 25, 2)
    with torch.no_grad():
        assert m.backbone(x).shape == (4, 256, 13, 25)  # T: 50 -> 25 -> 13
        assert m.extract_feature(x).shape == (2, 256)
        assert m(x).shape == (2, 60)
        a, b = m(x, drop=True)
    assert a.shape == b.shape == (2, 60)
    assert m.feature_dim == 256


def test_parameter_counts():
    m = Model(**H16)
    assert n_trainable(m) - n_trainable(m.fc) == 821_380
    assert n_trainable(m) == 836_800
    m.fc = mlp_head()
    assert n_trainable(m) == 920_068


def test_reference_state_dict_loads_strictly():
    shapes = reference_key_shapes()
    g = torch.Generator().manual_seed(0)
    sd = {k: (torch.randint(0, 9, s, generator=g) if k.endswith('num_batches_tracked')
              else torch.rand(s, generator=g)) for k, s in shapes.items()}
    m = Model(**H16)
    m.load_state_dict(sd, strict=True)
    own = m.state_dict()
    assert set(own) == set(shapes)
    assert all(torch.equal(own[k], sd[k]) for k in sd)


def test_mlp_head_keys():
    m = Model(**H16)
    m.fc = mlp_head()
    keys = {k for k in m.state_dict() if k.startswith('fc.')}
    assert keys == {'fc.0.weight', 'fc.0.bias', 'fc.2.weight', 'fc.2.bias'}


def test_without_edge_importance_and_extra_kwargs():
    m = Model(**{**H16, 'edge_importance_weighting': False}, pretrain=False, feature_dim=128)
    assert not any(k.startswith('edge_importance') for k in m.state_dict())
    assert n_trainable(m) == 836_800 - 18_750
    assert m.extract_feature(torch.randn(1, 3, 8, 25, 1)).shape == (1, 256)


def test_nw_ucla_layout():
    m = Model(hidden_channels=4, hidden_dim=8, num_class=10,
              graph_args={'layout': 'nw-ucla', 'strategy': 'spatial'})
    assert m.A.shape == (3, 20, 20)
    assert m(torch.randn(2, 3, 12, 20, 1)).shape == (2, 10)


@pytest.mark.parametrize('shape', [(2, 3, 50, 25), (3, 50, 25, 2, 1, 1)])
def test_bad_input_rank(shape):
    m = Model(hidden_channels=4, hidden_dim=8)
    with pytest.raises(ValueError, match=str(shape).replace('(', r'\(').replace(')', r'\)')):
        m(torch.zeros(shape))


def test_bad_input_joints():
    with pytest.raises(ValueError, match='V=25'):
        Model(hidden_channels=4, hidden_dim=8)(torch.zeros(1, 3, 8, 20, 1))


def test_weights_init():
    torch.manual_seed(0)
    m = Model(**H16)
    m.apply(weights_init)
    w = m.st_gcn_networks[9].tcn[2].weight
    assert abs(w.std().item() - 0.02) < 1e-3 and abs(w.mean().item()) < 1e-3
    assert torch.all(m.st_gcn_networks[9].tcn[2].bias == 0)
    bn = m.st_gcn_networks[9].tcn[0]
    assert abs(bn.weight.mean().item() - 1) < 1e-2 and torch.all(bn.bias == 0)
    assert torch.all(m.fc.bias == 0) and abs(m.fc.weight.std().item() - 0.02) < 2e-3
    assert all(torch.all(p == 1) for p in m.edge_importance)


# ---------------------------------------------------------------- slow formulation parity

def randomise(model, seed=0):
    """Random weights, BN statistics and edge importance (so nothing is trivially 1 or 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name == 'A' or name.endswith('num_batches_tracked'):
                continue
            if name.endswith('running_var'):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)
    return model


def slow_feature(model, x):
    """Straightforward per-element/per-partition formulation of the encoder (eval mode)."""
    n, c, t, v, m = x.shape
    bn = model.data_bn
    x = x.clone()
    for vi in range(v):          # data_bn channel index is v * C + c
        for ci in range(c):
            j = vi * c + ci
            x[:, ci, :, vi, :] = ((x[:, ci, :, vi, :] - bn.running_mean[j])
                                  / torch.sqrt(bn.running_var[j] + bn.eps)
                                  * bn.weight[j] + bn.bias[j])
    x = x.permute(0, 4, 1, 2, 3).reshape(n * m, c, t, v)
    for i, block in enumerate(model.st_gcn_networks):
        A = model.A * model.edge_importance[i]
        z = block.gcn.conv(x)
        cout = z.shape[1] // A.shape[0]
        y = 0
        for k in range(A.shape[0]):
            zk = z[:, k * cout:(k + 1) * cout]
            y = y + torch.einsum('nctv,vw->nctw', zk, A[k])
        y = block.tcn(y)
        if block.residual is not None:
            y = y + block.residual(x)
        x = F.relu(y)
    pooled = x.mean(dim=(2, 3)).view(n, m, -1)
    return pooled.mean(dim=1)


def test_feature_matches_slow_formulation():
    torch.manual_seed(1)
    m = randomise(Model(hidden_channels=4, hidden_dim=8, num_class=5)).double().eval()
    # block 9 (16 -> 8) takes the conv-then-contract path, the others contract first
    assert [b.gcn.contract_first for b in m.st_gcn_networks] == [True] * 9 + [False]
    x = torch.randn(3, 3, 20, 25, 2, dtype=torch.float64)
    with torch.no_grad():
        fast = m.extract_feature(x)
        slow = slow_feature(m, x)
        torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(m(x), m.fc(slow), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- EADM

def slow_eadm(x, keep_prob=0.7, lam=1e-4):
    """Scalar-loop EADM (spec 3.5.1 steps 1-5) in float64."""
    x = x.double()
    nm, c, t, v = x.shape
    att = torch.empty_like(x)
    for n in range(nm):
        for ch in range(c):
            f = x[n, ch]
            mu = f.sum() / (t * v)
            d = (f - mu) ** 2
            var = d.sum() / (t * v - 1)
            att[n, ch] = 1 / (1 + torch.exp(-(d / (4 * (var + lam)) + 0.5)))
    joint_keep = torch.zeros(nm, v)
    for n in range(nm):
        for j in range(v):
            joint_keep[n, j] = float(att[n, :, :, j].mean() < keep_prob)
    elem_keep = (att < keep_prob).double()
    x1 = x * joint_keep[:, None, None, :].double() * (nm * v / joint_keep.sum())
    return x1 * elem_keep * (elem_keep.numel() / elem_keep.sum()), joint_keep, elem_keep


def test_eadm_hand_made_map():
    # one sample, one channel, 4 frames, 3 joints: joint 2 carries a large spike,
    # so its attention is highest and it is dropped; everything else is near the mean.
    x = torch.tensor([[[[0.0, 0.1, 0.0],
                        [0.1, 0.0, 5.0],
                        [0.0, 0.1, 0.0],
                        [0.1, 0.0, 0.0]]]])
    eadm = EADM(keep_prob=0.7, mode='fixed')
    joint_keep, elem_keep = eadm.masks(x)
    assert joint_keep.dtype == elem_keep.dtype == torch.bool
    assert joint_keep.flatten().tolist() == [True, True, False]
    assert not elem_keep[0, 0, 1, 2] and elem_keep.sum() == 11
    out = eadm(x)
    expected = x * joint_keep * 1.5   # 3 joints / 2 kept
    expected = expected * elem_keep * (12 / 11)
    torch.testing.assert_close(out, expected)
    assert torch.all(out[..., 2] == 0)
    ref, _, _ = slow_eadm(x)
    torch.testing.assert_close(out.double(), ref)


def test_eadm_matches_slow_formulation():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, 5, 25, generator=g) * torch.rand(4, 6, 1, 25, generator=g) * 3
    eadm = EADM(keep_prob=0.7, mode='fixed')
    joint_keep, elem_keep = eadm.masks(x)
    ref, ref_joint, ref_elem = slow_eadm(x)
    assert torch.equal(joint_keep.flatten(1).double(), ref_joint.double())
    assert torch.equal(elem_keep.double(), ref_elem)
    assert 0 < joint_keep.sum() < joint_keep.numel()  # non-trivial masks
    torch.testing.assert_close(eadm(x).double(), ref, rtol=1e-5, atol=1e-6)


def test_eadm_gradient_and_all_dropped_guard():
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    out = EADM(keep_prob=0.7, mode='fixed')(x)
    out.sum().backward()
    joint_keep, elem_keep = EADM(keep_prob=0.7, mode='fixed').masks(x.detach())
    assert torch.all(x.grad[~(joint_keep & elem_keep)] == 0)
    dropped_all = EADM(keep_prob=0.0, mode='fixed')(x.detach())  # attention >= 0.62 > 0
    assert torch.all(dropped_all == 0) and torch.isfinite(dropped_all).all()


def test_eadm_off_is_identity():
    x = torch.randn(2, 3, 4, 5)
    assert EADM(mode='off')(x) is x
    torch.manual_seed(0)
    m = Model(hidden_channels=4, hidden_dim=8, num_class=5).eval()
    with torch.no_grad():
        a, b = m(torch.randn(2, 3, 12, 25, 2), drop=True)
    assert torch.equal(a, b)
    assert len(list(m.dropout.parameters())) == 0


def test_drop_forward_shares_backbone_pass():
    torch.manual_seed(0)
    m = Model(hidden_channels=4, hidden_dim=8, num_class=5, eadm='fixed').eval()
    x = torch.randn(2, 3, 12, 25, 2)
    with torch.no_grad():
        a, b = m(x, drop=True)
        feat = m.backbone(x)
        torch.testing.assert_close(a, m(x))
        torch.testing.assert_close(b, m.fc(m.pool(m.dropout(feat), 2)))
    assert not torch.equal(a, b)


def test_unknown_eadm_mode():
    with pytest.raises(ValueError, match='fixed'):
        Model(hidden_channels=4, hidden_dim=8, eadm='paper')
