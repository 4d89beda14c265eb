"""HiCo hierarchical encoder (reference spec 4.1, 4.2; HuiGuanLab/HiCo `hico/hi_encoder.py`).

The canonical clip (N, C, T, V, M) is tokenised twice, with the orders the released first-layer
weights expect (spec 0):
  time-majored  xc (N, T, M*V*C):  one token per frame,  feature f = m*V*C + v*C + c
  space-majored xp (N, M*V, T*C):  token m*V + v (a joint's whole trajectory),  f = t*C + c
Each domain: embedding (Linear-LayerNorm-ReLU-Linear) -> level 0: S2S encoder over all tokens,
max over tokens; levels 1..G-1: the *embedded* sequence is downsampled again by the domain's
UDM (depthwise conv - LayerNorm - ReLU - max-pool), encoded by the *same* S2S encoder and
max-pooled. No positional encoding. vc, vp: (N, G, d); the feature is [vc.flat | vp.flat]
(2*G*d = 4096 at the released d = 512).

State-dict names follow the reference (`hi_encoder.{t,s}_embedding.{0,1,3}`,
`hi_encoder.{t,s}_downsample.{conv.dw_conv,norm}`, `hi_encoder.{t,s}_encoder.*`, projectors
`{clip,part,td,sd,instance}_proj.{0,2}`, classifier `fc`), so released checkpoints load.
"""
import torch
import torch.nn as nn

from torchlight.io import WeightsError
from torchlight.config import ConfigError
from torchlight.registry import ENCODERS

ENCODER_TYPES = ('Transformer', 'GRU', 'LSTM')
PROJECTORS = ('clip_proj', 'part_proj', 'td_proj', 'sd_proj', 'instance_proj')


# ----------------------------------------------------------------------------- tokenisation
def _check_clip(x):
    if x.dim() != 5:
        raise ValueError(f'HiCo expects clips (N, C, T, V, M); got shape {tuple(x.shape)}')


def time_majored(x):
    """(N, C, T, V, M) -> xc (N, T, M*V*C), feature index m*V*C + v*C + c."""
    _check_clip(x)
    n, c, t, v, m = x.shape
    return x.permute(0, 2, 4, 3, 1).reshape(n, t, m * v * c)


def space_majored(x):
    """(N, C, T, V, M) -> xp (N, M*V, T*C), token m*V + v, feature index t*C + c."""
    _check_clip(x)
    n, c, t, v, m = x.shape
    return x.permute(0, 4, 3, 2, 1).reshape(n, m * v, t * c)


# ----------------------------------------------------------------------------- modules
class DepthWiseConv(nn.Module):
    """Depthwise Conv1d over the token axis of (N, L, d) sequences."""

    def __init__(self, channels, kernel_size, stride, padding):
        super().__init__()
        self.dw_conv = nn.Conv1d(channels, channels, kernel_size, stride=stride, padding=padding,
                                 groups=channels)

    def forward(self, x):
        return self.dw_conv(x.transpose(1, 2)).transpose(1, 2)


class UDM(nn.Module):
    """Unified downsampling module: depthwise conv -> LayerNorm -> ReLU -> MaxPool1d(factor)."""

    def __init__(self, channels, kernel_size, stride, padding, factor):
        super().__init__()
        self.conv = DepthWiseConv(channels, kernel_size, stride, padding)
        self.norm = nn.LayerNorm(channels)
        self.factor = factor

    def forward(self, x):
        x = torch.relu(self.norm(self.conv(x)))
        return nn.functional.max_pool1d(x.transpose(1, 2), self.factor).transpose(1, 2)


def _embedding(in_size, d):
    return nn.Sequential(nn.Linear(in_size, d), nn.LayerNorm(d), nn.ReLU(), nn.Linear(d, d))


def _s2s(kind, d, num_head, num_layer, dropout):
    if kind in ('GRU', 'LSTM'):
        rnn = nn.GRU if kind == 'GRU' else nn.LSTM
        return rnn(d, d // 2, num_layers=num_layer, batch_first=True, bidirectional=True)
    layer = nn.TransformerEncoderLayer(d, num_head, dim_feedforward=d, dropout=dropout, batch_first=True)
    return nn.TransformerEncoder(layer, num_layer, enable_nested_tensor=False)


class HiEncoder(nn.Module):
    """Two-branch multi-granularity encoder on token sequences: (xc, xp) -> (vc, vp), (N, G, d) each."""

    def __init__(self, t_input_size=150, s_input_size=192, kernel_size=5, stride=1, padding=2, factor=2,
                 hidden_size=512, num_head=4, num_layer=1, granularity=4, encoder='Transformer',
                 dropout=0.1):
        super().__init__()
        if encoder not in ENCODER_TYPES:
            raise ConfigError(f'model_args.encoder: HiCo encoder must be one of {ENCODER_TYPES}, got {encoder!r}')
        if encoder != 'Transformer' and hidden_size % 2:
            raise ConfigError(f'model_args.hidden_size must be even for a bidirectional {encoder}, got {hidden_size}')
        if encoder == 'Transformer' and hidden_size % num_head:
            raise ConfigError(f'model_args.hidden_size {hidden_size} is not divisible by num_head {num_head}')
        if granularity < 1:
            raise ConfigError(f'model_args.granularity must be >= 1, got {granularity}')
        self.encoder, self.granularity, self.factor = encoder, granularity, factor
        self.t_input_size, self.s_input_size, self.d_model = t_input_size, s_input_size, hidden_size
        self.t_embedding = _embedding(t_input_size, hidden_size)
        self.s_embedding = _embedding(s_input_size, hidden_size)
        self.t_downsample = UDM(hidden_size, kernel_size, stride, padding, factor)
        self.s_downsample = UDM(hidden_size, kernel_size, stride, padding, factor)
        # one S2S encoder per domain, shared by every granularity (independent weights per domain)
        self.t_encoder = _s2s(encoder, hidden_size, num_head, num_layer, dropout)
        self.s_encoder = _s2s(encoder, hidden_size, num_head, num_layer, dropout)

    def _encode_max(self, s2s, x):
        out = s2s(x)
        return (out[0] if isinstance(out, tuple) else out).amax(dim=1)

    def _branch(self, x, embedding, downsample, s2s):
        x = embedding(x)
        levels = [self._encode_max(s2s, x)]
        for _ in range(1, self.granularity):
            x = downsample(x)                      # coarser groups of frames / joints
            levels.append(self._encode_max(s2s, x))
        return torch.stack(levels, dim=1)

    def forward(self, xc, xp):
        for name, x, size in (('xc', xc, self.t_input_size), ('xp', xp, self.s_input_size)):
            if x.dim() != 3 or x.shape[2] != size:
                raise ValueError(f'HiEncoder: {name} must be (N, tokens, {size}); got {tuple(x.shape)}')
            if x.shape[1] < self.factor ** (self.granularity - 1):
                raise ValueError(f'HiEncoder: {name} has {x.shape[1]} tokens, too few for '
                                 f'{self.granularity} levels of {self.factor}x downsampling')
        vc = self._branch(xc, self.t_embedding, self.t_downsample, self.t_encoder)
        vp = self._branch(xp, self.s_embedding, self.s_downsample, self.s_encoder)
        return vc, vp


# ----------------------------------------------------------------------------- type from weights
def infer_encoder_type(weights, prefix=''):
    """The S2S encoder type of a HiCo state dict (spec 6): `t_encoder.layers.0.self_attn` ->
    Transformer; `t_encoder.weight_ih_l0` with 4*(d/2) rows -> LSTM, 3*(d/2) rows -> GRU
    (1024 / 768 at d = 512). None when `weights` holds no HiCo encoder under `prefix`."""
    base = prefix + 'hi_encoder.'
    if any(k.startswith(base + 't_encoder.layers.0.self_attn.') for k in weights):
        return 'Transformer'
    rnn = weights.get(base + 't_encoder.weight_ih_l0')
    embed = weights.get(base + 't_embedding.0.weight')
    if rnn is None:
        return None
    half = embed.shape[0] // 2 if embed is not None else rnn.shape[1] // 2
    return {4 * half: 'LSTM', 3 * half: 'GRU'}.get(rnn.shape[0])


@ENCODERS.register('hico_encoder', aliases=['hico.hi_encoder.DownstreamEncoder'])
class HiCoEncoder(nn.Module):
    """Canonical-input wrapper of HiEncoder, the framework's encoder contract.

    `forward(x)` on clips (N, C, T, V, M) returns `fc` of the 2*G*d feature; `extract_feature`
    the feature itself (the reference DownstreamEncoder's knn_eval output). With
    `projectors=True` (pretraining) the five reference projectors replace `fc` and `forward`
    returns (zc (N, G, D), zp (N, G, D), zt, zs, zi (N, D)), D = num_class.
    """

    def __init__(self, t_input_size=150, s_input_size=192, kernel_size=5, stride=1, padding=2, factor=2,
                 hidden_size=512, num_head=4, num_layer=1, granularity=4, encoder='Transformer',
                 num_class=60, dropout=0.1, projectors=False):
        super().__init__()
        self.hi_encoder = HiEncoder(t_input_size, s_input_size, kernel_size, stride, padding, factor,
                                    hidden_size, num_head, num_layer, granularity, encoder, dropout)
        d, g = hidden_size, granularity
        self.feature_dim = 2 * g * d
        self.projectors = projectors
        if projectors:
            widths = dict(clip_proj=d, part_proj=d, td_proj=g * d, sd_proj=g * d, instance_proj=2 * g * d)
            for name, width in widths.items():
                setattr(self, name, nn.Sequential(nn.Linear(width, d), nn.ReLU(), nn.Linear(d, num_class)))
        else:
            self.fc = nn.Linear(self.feature_dim, num_class)

    def tokens(self, x):
        """Validated two-domain tokenisation of canonical clips: (xc, xp)."""
        _check_clip(x)
        n, c, t, v, m = x.shape
        enc = self.hi_encoder
        if m * v * c != enc.t_input_size or t * c != enc.s_input_size:
            raise ValueError(f'HiCo encoder built for t_input_size={enc.t_input_size} (M*V*C) and '
                             f's_input_size={enc.s_input_size} (T*C, i.e. T={enc.s_input_size / c:g} '
                             f'frames); got clips (N, C, T, V, M) = {tuple(x.shape)}')
        return time_majored(x), space_majored(x)

    def levels(self, x):
        """(vc, vp): (N, G, d) clip-level and part-level features of every granularity."""
        return self.hi_encoder(*self.tokens(x))

    def extract_feature(self, x):
        vc, vp = self.levels(x)
        return torch.cat([vc.flatten(1), vp.flatten(1)], dim=1)

    def forward(self, x):
        if not self.projectors:
            return self.fc(self.extract_feature(x))
        vc, vp = self.levels(x)
        vt, vs = vc.flatten(1), vp.flatten(1)
        return (self.clip_proj(vc), self.part_proj(vp), self.td_proj(vt), self.sd_proj(vs),
                self.instance_proj(torch.cat([vt, vs], dim=1)))

    def check_weights(self, weights, prefix='', path='<checkpoint>'):
        """Raise WeightsError when `weights` hold a HiCo encoder of another S2S type than this one."""
        found = infer_encoder_type(weights, prefix)
        if found is not None and found != self.hi_encoder.encoder:
            raise WeightsError(f'{path} holds a HiCo {found} encoder (from its {prefix}hi_encoder.t_encoder '
                               f'keys), but the model is configured with encoder: '
                               f'{self.hi_encoder.encoder!r}; set model_args.encoder: {found}')


def xavier_init(module):
    """Reference init: Xavier-uniform on every 2-D parameter (LayerNorm, biases and the
    depthwise conv keep PyTorch's defaults)."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 2:
                nn.init.xavier_uniform_(p)
