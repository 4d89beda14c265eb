"""ISC encoders (reference doc ISC 3.1): the BIGRU compat semantics against a frame-by-frame
loop, the input flattening, the AGCN graph unit against a per-subset formulation, HCN against a
per-person formulation, reference sizes and parameter counts, clear input errors."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from net.agcn import Model as AGCN
from net.graph import agcn_adjacency
from net.hcn import HCN
from net.isc_gru import BIGRU, flatten
from torchlight.registry import ENCODERS


# ----------------------------------------------------------------------------- BIGRU
def test_flatten_order_is_joint_coordinate_person():
    n, c, t, v, m = 2, 3, 4, 25, 2
    x = torch.arange(n * c * t * v * m, dtype=torch.float32).view(n, c, t, v, m)
    seq = flatten(x)
    assert seq.shape == (n, t, 150)
    for v_, c_, m_ in ((0, 0, 0), (3, 2, 1), (24, 1, 0), (24, 2, 1)):
        assert torch.equal(seq[:, :, v_ * 6 + c_ * 2 + m_], x[:, c_, :, v_, m_])


def frame_by_frame(gru, seq):
    """The reference loop: the bidirectional nn.GRU is called on one frame at a time and the full
    hidden state (every layer, both directions) is carried to the next call."""
    hidden, out = None, None
    for t in range(seq.shape[1]):
        out, hidden = gru(seq[:, t:t + 1]) if hidden is None else gru(seq[:, t:t + 1], hidden)
    return out[:, 0]


def test_gru_equals_the_reference_frame_loop_and_is_not_a_bigru():
    torch.manual_seed(0)
    model = BIGRU(en_input_size=12, en_hidden_size=8, en_num_layers=3, num_class=5)
    x = torch.randn(3, 2, 9, 3, 2)                     # C*V*M = 12 values per frame
    feature = model.extract_feature(x)
    expected = frame_by_frame(model.encoder.gru, flatten(x))
    assert feature.shape == (3, 16)
    assert (feature - expected).abs().max() < 1e-6
    assert torch.allclose(model(x), model.fc(expected), atol=1e-6)
    # a standard bidirectional pass is a different function of the same weights
    standard = model.encoder.gru(flatten(x))[0][:, -1]
    assert (feature - standard).abs().max() > 1e-2
    model.encoder.reverse_in_time = True
    assert torch.allclose(model.extract_feature(x), standard, atol=1e-6)


def test_gru_mean_readout_is_the_time_average_of_the_reference_frame_loop():
    """readout='mean' (a named option for new training): the top layer's outputs of the reference
    frame loop, averaged over every frame, from the same weights; a bad name is refused."""
    torch.manual_seed(0)
    model = BIGRU(en_input_size=12, en_hidden_size=8, en_num_layers=2, num_class=5, readout='mean')
    x = torch.randn(3, 2, 7, 3, 2)
    seq, hidden, outs = flatten(x), None, []
    for t in range(seq.shape[1]):
        out, hidden = model.encoder.gru(seq[:, t:t + 1], hidden)
        outs.append(out[:, 0])
    expected = torch.stack(outs, dim=1).mean(dim=1)
    assert (model.extract_feature(x) - expected).abs().max() < 1e-6
    assert (expected - outs[-1]).abs().max() > 1e-2   # not the last frame's output
    with pytest.raises(ValueError, match="model_args.readout must be one of \\('last', 'mean'\\), got 'max'"):
        BIGRU(en_input_size=12, en_hidden_size=8, readout='max')


def test_gru_gradients_reach_every_reference_weight():
    torch.manual_seed(0)
    model = BIGRU(en_input_size=12, en_hidden_size=4, en_num_layers=2, num_class=3)
    model(torch.randn(2, 2, 5, 3, 2)).sum().backward()
    names = [n for n, _ in model.named_parameters()]
    assert 'encoder.gru.weight_hh_l1_reverse' in names
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_gru_reference_size_and_errors():
    with torch.device('meta'):
        model = BIGRU(en_input_size=150, en_hidden_size=1024, en_num_layers=3, num_class=128)
        assert model.extract_feature(torch.empty(2, 3, 4, 25, 2)).shape == (2, 2048)   # meta GRU is slow per frame
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 45.26
    assert model.feature_dim == 2048 and ENCODERS.get('moco.GRU.BIGRU') is BIGRU
    tiny = BIGRU(en_input_size=150, en_hidden_size=4, en_num_layers=1)
    with pytest.raises(ValueError, match=r'en_input_size=150 .* has 120 values per frame'):
        tiny(torch.randn(1, 3, 8, 20, 2))
    with pytest.raises(ValueError, match=r'expected a clip \(N, C, T, V, M\)'):
        tiny(torch.randn(1, 8, 150))
    assert tiny.encode(torch.randn(1, 8, 150)).shape == (1, 8)


# ----------------------------------------------------------------------------- AGCN
def test_agcn_adjacency_is_self_inward_outward():
    A = agcn_adjacency()
    assert A.shape == (3, 25, 25) and A.dtype.name == 'float32'
    assert (A[0] == torch.eye(25).numpy()).all()
    # inward: every joint but the centre (20, spine shoulder) sends to its one parent
    assert A[1][1, 0] == 1 and A[1][20, 1] == 1 and A[1][:, 20].sum() == 0
    assert all(abs(A[1][:, j].sum() - 1) < 1e-6 for j in range(25) if j != 20)
    # outward: joint 20 sends to its 4 children (1, 2, 4, 8), a quarter each
    assert all(A[2][child, 20] == 0.25 for child in (1, 2, 4, 8)) and A[2][:, 20].sum() == 1
    with pytest.raises(ValueError, match='labeling_mode'):
        agcn_adjacency(labeling_mode='uniform')


def unit_gcn_by_subset(unit, x, A):
    """The reference unit_gcn forward: one subset at a time, summed."""
    n, c, t, v = x.shape
    y = 0
    for i in range(unit.num_subset):
        a = unit.conv_a[i](x).permute(0, 3, 1, 2).reshape(n, v, unit.inter_c * t)
        b = unit.conv_b[i](x).reshape(n, unit.inter_c * t, v)
        graph = torch.softmax(a @ b / a.shape[-1], dim=-2) + A[i] + unit.PA[i]
        y = y + unit.conv_d[i]((x.reshape(n, c * t, v) @ graph).reshape(n, c, t, v))
    y = unit.bn(y) + (x if unit.down is None else unit.down(x))
    return F.relu(y)


@pytest.mark.parametrize('cin, cout', [(3, 16), (16, 16)])
def test_agcn_graph_unit_equals_the_per_subset_formulation(cin, cout):
    torch.manual_seed(0)
    model = AGCN(num_class=4)
    unit = type(model.l1.gcn1)(cin, cout, 25)
    with torch.no_grad():
        unit.PA.normal_(0, 0.1)
        unit.bn.weight.fill_(0.7)
    unit.eval()
    x = torch.randn(2, cin, 6, 25)
    assert (unit(x, model.A) - unit_gcn_by_subset(unit, x, model.A)).abs().max() < 1e-5


def test_agcn_shapes_parameters_and_device_agnostic_graph():
    with torch.device('meta'):
        model = AGCN(num_class=128, graph_args={'labeling_mode': 'spatial'})
        assert model.extract_feature(torch.empty(2, 3, 64, 25, 2)).shape == (2, 256)
        assert model.backbone(torch.empty(2, 3, 64, 25, 2)).shape == (4, 256, 16, 25)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 3.49
    assert 'A' not in model.state_dict() and 'l5.residual.conv.weight' in model.state_dict()
    assert not hasattr(model.l2, 'residual') and model.l2.residual_mode == 'identity'
    assert model.l1.residual_mode == 'none'
    small = AGCN(num_class=3).double()           # the graph follows .to() like any buffer
    assert small.A.dtype == torch.float64
    assert float(small.l1.gcn1.PA.detach().max()) == pytest.approx(1e-6)
    assert float(small.l1.gcn1.bn.weight.detach().max()) == pytest.approx(1e-6)
    assert small.fc.weight.detach().std().item() == pytest.approx(math.sqrt(2 / 3), rel=0.3)
    with pytest.raises(ValueError, match=r'AGCN expects \(N, C=3, T, V=25, M=2\)'):
        small(torch.randn(1, 3, 8, 25, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match='graph_args'):
        AGCN(graph_args={'layout': 'ntu-rgb+d', 'strategy': 'spatial'})


def test_agcn_data_bn_channel_order_is_person_joint_coordinate():
    model = AGCN(num_class=3).eval()
    with torch.no_grad():
        model.data_bn.running_mean.copy_(torch.arange(150.0))
    x = torch.zeros(1, 3, 4, 25, 2)
    seen = {}
    model.l1.register_forward_pre_hook(lambda mod, args: seen.update(x=args[0]))
    model(x)
    # after data_bn, (person m, joint v, coordinate c) holds -(m*75 + v*3 + c), laid out (N*M, C, T, V)
    folded = seen['x']
    for m, v, c in ((0, 0, 0), (1, 4, 2), (0, 24, 1)):
        assert folded[m, c, 0, v].item() == pytest.approx(-(m * 75 + v * 3 + c), rel=1e-4)


# ----------------------------------------------------------------------------- HCN
def hcn_per_person(model, x):
    """The reference forward: motion resized on (N, C*M, T-1, V), then one person at a time."""
    n, c, t, v, m = x.shape
    motion = (x[:, :, 1:] - x[:, :, :-1]).permute(0, 1, 4, 2, 3).reshape(n, c * m, t - 1, v)
    motion = F.interpolate(motion, size=(t, v), mode='bilinear', align_corners=False)
    motion = motion.view(n, c, m, t, v).permute(0, 1, 3, 4, 2)
    maps = []
    for i in range(m):
        p = model.conv4(model.conv3(model.conv2(model.conv1(x[..., i])).permute(0, 3, 2, 1)))
        q = model.conv4m(model.conv3m(model.conv2m(model.conv1m(motion[..., i])).permute(0, 3, 2, 1)))
        maps.append(model.conv6(model.conv5(torch.cat([p, q], dim=1))))
    return torch.max(maps[0], maps[1]).reshape(n, -1)


def test_hcn_equals_the_per_person_formulation():
    torch.manual_seed(0)
    model = HCN(out_channel=8, window_size=16, num_class=5).eval()
    x = torch.randn(3, 3, 16, 25, 2)
    x[2, ..., 1] = 0                                   # a single-person clip
    feature = model.extract_feature(x)
    assert feature.shape == (3, 4 * 8 * 1 * 1)
    assert (feature - hcn_per_person(model, x)).abs().max() < 1e-6
    assert torch.allclose(model.extract_feature(x.flip(-1)), feature)   # person order does not matter


def test_hcn_reference_size_and_errors():
    with torch.device('meta'):
        model = HCN(num_class=128)
        assert model.extract_feature(torch.empty(2, 3, 64, 25, 2)).shape == (2, 4096)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 1.04
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes['conv2.weight'] == (64, 64, 3, 1) and shapes['conv3.0.weight'] == (32, 25, 3, 3)
    assert shapes['conv6.0.weight'] == (256, 128, 3, 3) and shapes['fc.weight'] == (128, 4096)
    with pytest.raises(ValueError, match='T must equal window_size'):
        HCN(out_channel=8, window_size=16)(torch.randn(1, 3, 20, 25, 2))
    with pytest.raises(ValueError, match='multiple of 16'):
        HCN(window_size=50)


def test_hcn_dropout_only_in_training():
    torch.manual_seed(0)
    model = HCN(out_channel=8, window_size=16, num_class=5)
    x = torch.randn(2, 3, 16, 25, 2)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))
    assert isinstance(model.conv4[1], nn.Dropout2d)
