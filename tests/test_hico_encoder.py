"""HiCo hierarchical encoder (reference spec 4.1, 4.2, 6): tokenisation orders, the doc's sizes,
equivalence with a literal per-sample / per-token formulation for all three S2S encoders, and
the encoder type read from checkpoint keys."""
import math

import pytest
import torch

from net.hico_encoder import (HiCoEncoder, HiEncoder, infer_encoder_type, space_majored,
                              time_majored)
from torchlight.io import WeightsError

TINY = dict(t_input_size=30, s_input_size=24, hidden_size=8, num_head=2, granularity=4)  # C3 T8 V5 M2


# ----------------------------------------------------------------------------- tokenisation
def test_tokenisation_orders_match_the_reference_index_formulas():
    n, c, t, v, m = 2, 3, 4, 5, 2
    x = torch.randn(n, c, t, v, m)
    xc, xp = time_majored(x), space_majored(x)
    assert xc.shape == (n, t, m * v * c) and xp.shape == (n, m * v, t * c)
    for i in range(n):
        for ci in range(c):
            for ti in range(t):
                for vi in range(v):
                    for mi in range(m):
                        value = x[i, ci, ti, vi, mi]
                        assert xc[i, ti, mi * v * c + vi * c + ci] == value
                        assert xp[i, mi * v + vi, ti * c + ci] == value


def test_ntu_sizes_give_the_reference_token_shapes():
    x = torch.zeros(1, 3, 64, 25, 2)
    assert time_majored(x).shape == (1, 64, 150) and space_majored(x).shape == (1, 50, 192)


def test_bad_clip_shapes_name_the_expected_sizes():
    enc = HiCoEncoder(**TINY, encoder='GRU')
    with pytest.raises(ValueError, match=r'T=8 frames.*\(2, 3, 9, 5, 2\)'):
        enc(torch.zeros(2, 3, 9, 5, 2))
    with pytest.raises(ValueError, match=r'\(N, C, T, V, M\)'):
        enc(torch.zeros(2, 3, 8, 5))
    with pytest.raises(ValueError, match='too few'):
        HiEncoder(**TINY, encoder='GRU')(torch.zeros(1, 4, 30), torch.zeros(1, 10, 24))
    with pytest.raises(ValueError, match='encoder must be one of'):
        HiEncoder(encoder='RNN')


# ----------------------------------------------------------------------------- reference sizes
@pytest.mark.parametrize('kind, params', [('Transformer', 3_867_648), ('GRU', 3_077_120), ('LSTM', 3_865_600)])
def test_released_configuration_sizes(kind, params):
    torch.manual_seed(0)
    enc = HiCoEncoder(encoder=kind, projectors=True, num_class=128).eval()
    assert sum(p.numel() for p in enc.hi_encoder.parameters()) == params   # spec 4.2: 3.87 / 3.08 / 3.87 M
    seen = {'t': [], 's': []}
    for branch in 'ts':
        getattr(enc.hi_encoder, f'{branch}_encoder').register_forward_hook(
            lambda mod, inp, out, b=branch: seen[b].append(inp[0].shape[1]))
    x = torch.randn(2, 3, 64, 25, 2)
    with torch.no_grad():
        zc, zp, zt, zs, zi = enc(x)
        assert seen == {'t': [64, 32, 16, 8], 's': [50, 25, 12, 6]}   # tokens per level
        vc, vp = enc.levels(x)
        feature = enc.extract_feature(x)
    assert vc.shape == vp.shape == (2, 4, 512) and feature.shape == (2, 4096) and enc.feature_dim == 4096
    assert zc.shape == zp.shape == (2, 4, 128) and zt.shape == zs.shape == zi.shape == (2, 128)


# ----------------------------------------------------------------------------- literal formulation
def layer_norm(x, ln):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def embed(x, seq):
    h = layer_norm(x @ seq[0].weight.T + seq[0].bias, seq[1]).clamp_min(0)
    return h @ seq[3].weight.T + seq[3].bias


def udm(x, mod):
    """x (L, d): depthwise conv written tap by tap, LayerNorm, ReLU, max over pairs."""
    conv = mod.conv.dw_conv
    k, pad, stride = conv.kernel_size[0], conv.padding[0], conv.stride[0]
    length = (x.shape[0] + 2 * pad - k) // stride + 1
    rows = []
    for i in range(length):
        acc = conv.bias.clone()
        for j in range(k):
            src = i * stride + j - pad
            if 0 <= src < x.shape[0]:
                acc = acc + conv.weight[:, 0, j] * x[src]
        rows.append(acc)
    y = layer_norm(torch.stack(rows), mod.norm).clamp_min(0)
    return torch.stack([torch.maximum(y[2 * i], y[2 * i + 1]) for i in range(y.shape[0] // 2)])


def rnn_direction(x, rnn, suffix, lstm, reverse):
    w_ih, w_hh = getattr(rnn, 'weight_ih_l0' + suffix), getattr(rnn, 'weight_hh_l0' + suffix)
    b_ih, b_hh = getattr(rnn, 'bias_ih_l0' + suffix), getattr(rnn, 'bias_hh_l0' + suffix)
    h = x.new_zeros(rnn.hidden_size)
    cell = x.new_zeros(rnn.hidden_size)
    out = [None] * x.shape[0]
    for t in (reversed(range(x.shape[0])) if reverse else range(x.shape[0])):
        gi, gh = w_ih @ x[t] + b_ih, w_hh @ h + b_hh
        if lstm:
            i, f, g, o = (gi + gh).chunk(4)
            cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(cell)
        else:
            r = torch.sigmoid(gi[:len(h)] + gh[:len(h)])
            z = torch.sigmoid(gi[len(h):2 * len(h)] + gh[len(h):2 * len(h)])
            n = torch.tanh(gi[2 * len(h):] + r * gh[2 * len(h):])
            h = (1 - z) * n + z * h
        out[t] = h
    return torch.stack(out)


def transformer(x, encoder):
    layer = encoder.layers[0]
    att = layer.self_attn
    d, heads = x.shape[1], att.num_heads
    q, k, v = (x @ att.in_proj_weight.T + att.in_proj_bias).split(d, dim=1)
    dh = d // heads
    outs = []
    for h in range(heads):
        s = slice(h * dh, (h + 1) * dh)
        weights = torch.softmax(q[:, s] @ k[:, s].T / math.sqrt(dh), dim=1)
        outs.append(weights @ v[:, s])
    x = layer_norm(x + torch.cat(outs, 1) @ att.out_proj.weight.T + att.out_proj.bias, layer.norm1)
    ff = (x @ layer.linear1.weight.T + layer.linear1.bias).clamp_min(0) @ layer.linear2.weight.T + layer.linear2.bias
    return layer_norm(x + ff, layer.norm2)


def s2s(x, module, kind):
    if kind == 'Transformer':
        return transformer(x, module)
    lstm = kind == 'LSTM'
    return torch.cat([rnn_direction(x, module, '', lstm, False),
                      rnn_direction(x, module, '_reverse', lstm, True)], dim=1)


def slow_feature(enc, clip):
    """One sample at a time, tokens built with the index formulas, every op written out."""
    h = enc.hi_encoder
    c, t, v, m = clip.shape[1:]
    feats = []
    for x in clip:
        xc = torch.stack([torch.stack([x[ci, ti, vi, mi] for mi in range(m) for vi in range(v) for ci in range(c)])
                          for ti in range(t)])
        xp = torch.stack([torch.stack([x[ci, ti, vi, mi] for ti in range(t) for ci in range(c)])
                          for mi in range(m) for vi in range(v)])
        parts = []
        for tokens, emb, down, mod in ((xc, h.t_embedding, h.t_downsample, h.t_encoder),
                                       (xp, h.s_embedding, h.s_downsample, h.s_encoder)):
            seq = embed(tokens, emb)
            for level in range(h.granularity):
                if level:
                    seq = udm(seq, down)
                parts.append(s2s(seq, mod, h.encoder).amax(0))
        feats.append(torch.cat(parts))
    return torch.stack(feats)


@pytest.mark.parametrize('kind', ['Transformer', 'GRU', 'LSTM'])
def test_batched_encoder_equals_literal_formulation(kind):
    torch.manual_seed(1)
    enc = HiCoEncoder(**TINY, encoder=kind).double().eval()
    with torch.no_grad():
        for p in enc.parameters():   # non-default LayerNorm / bias values too
            p.add_(0.1 * torch.randn_like(p))
        clip = torch.randn(2, 3, 8, 5, 2, dtype=torch.float64)
        fast = enc.extract_feature(clip)
        slow = slow_feature(enc, clip)
        assert fast.shape == (2, 2 * 4 * 8)
        assert torch.allclose(fast, slow, atol=1e-10)
        assert torch.allclose(enc(clip), fast @ enc.fc.weight.T + enc.fc.bias, atol=1e-12)


def test_encoder_and_udm_are_shared_across_levels():
    enc = HiCoEncoder(**TINY, encoder='GRU')
    names = [n for n, _ in enc.named_parameters()]
    assert not any('pos' in n for n in names)   # no positional encoding
    assert sorted({n.split('.')[1] for n in names if n.startswith('hi_encoder.')}) == [
        's_downsample', 's_embedding', 's_encoder', 't_downsample', 't_embedding', 't_encoder']
    assert {n for n in names if 'dw_conv' in n} == {
        f'hi_encoder.{b}_downsample.conv.dw_conv.{w}' for b in 'ts' for w in ('weight', 'bias')}


# ----------------------------------------------------------------------------- type from keys
@pytest.mark.parametrize('kind, rows', [('Transformer', None), ('GRU', 768), ('LSTM', 1024)])
def test_encoder_type_is_read_from_released_key_shapes(kind, rows):
    state = {'encoder_q.' + k: v for k, v in HiCoEncoder(encoder=kind, projectors=True).state_dict().items()}
    if rows:
        assert state['encoder_q.hi_encoder.t_encoder.weight_ih_l0'].shape[0] == rows
    else:
        assert 'encoder_q.hi_encoder.t_encoder.layers.0.self_attn.in_proj_weight' in state
    assert infer_encoder_type(state, 'encoder_q.') == kind
    assert infer_encoder_type(state, 'encoder_k.') is None


@pytest.mark.parametrize('kind', ['Transformer', 'GRU', 'LSTM'])
def test_checkpoint_of_another_encoder_type_is_a_clear_error(kind):
    weights = HiCoEncoder(**TINY, encoder=kind).state_dict()
    for other in {'Transformer', 'GRU', 'LSTM'} - {kind}:
        with pytest.raises(WeightsError, match=f"holds a HiCo {kind} encoder.*encoder: '{other}'"):
            HiCoEncoder(**TINY, encoder=other).check_weights(weights, path='x.pt')
    HiCoEncoder(**TINY, encoder=kind).check_weights(weights)   # matching type: no error
