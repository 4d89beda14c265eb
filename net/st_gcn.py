"""ST-GCN encoder as used by AimCLR / SkeletonCLR / ASAR (reference spec 3.2, 3.3, 3.5.1).

Attribute names (``A``, ``data_bn``, ``st_gcn_networks.{i}.gcn.conv``, ``tcn.0/2/3``,
``residual.0/1``, ``edge_importance.{i}``, ``fc``) follow the reference so that released
checkpoints load with ``strict=True``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from net.graph import Graph
from torchlight.config import ConfigError
from torchlight.registry import ENCODERS

EADM_MODES = ('off', 'fixed')
IMPLS = ('auto', 'fast', 'reference')


# ----------------------------------------------------------------------------- fast path
# The fast path keeps activations frame-major and channels-last, (T, N*M, V, C) contiguous:
# every 1x1 conv is one GEMM over rows (t, n, v); the 9x1 temporal conv is 9 GEMMs whose
# input and output are contiguous row ranges (a shift in time is a shift by whole frames),
# accumulated in place, with no im2col, padding copy or layout reorder; the graph contraction
# is one batched matmul over (v, k); BN runs on the (rows, C) matrix. The parameters are the
# reference ones (same state dict); `impl='reference'` runs the plain NCHW formulation.

def _frames(t_in, t_out, stride, shift):
    """Output frames [lo, hi) whose input frame t * stride + shift lies in [0, t_in)."""
    lo = 0
    while lo < t_out and lo * stride + shift < 0:
        lo += 1
    hi = t_out
    while hi > lo and (hi - 1) * stride + shift >= t_in:
        hi -= 1
    return lo, hi


class TemporalConv(torch.autograd.Function):
    """Conv2d with kernel (kt, 1), stride (s, 1), zero padding (p, 0) on frame-major input
    x (T, R, Cin) -> (T', R, Cout); `weight` (Cout, Cin, kt, 1) is the reference parameter.
    Tap k reads input frames t*s + k - p: for s = 1 a contiguous block of rows, so each tap is
    one GEMM accumulated in place into a contiguous block of output rows."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, pad):
        t_in, rows, cin = x.shape
        cout, _, kt, _ = weight.shape
        t_out = (t_in + 2 * pad - kt) // stride + 1
        w = weight.reshape(cout, cin, kt).permute(2, 1, 0).contiguous()   # (kt, Cin, Cout)
        centre_full = stride == 1 and t_out == t_in and 0 <= pad < kt
        if centre_full:   # the centre tap covers every frame: it initialises the output
            out = (torch.addmm(bias, x.view(-1, cin), w[pad]) if bias is not None
                   else torch.mm(x.view(-1, cin), w[pad])).view(t_out, rows, cout)
        else:
            out = torch.zeros(t_out, rows, cout, dtype=x.dtype, device=x.device)
            if bias is not None:
                out += bias
        for k in range(kt):
            lo, hi = _frames(t_in, t_out, stride, k - pad)
            if hi <= lo or (centre_full and k == pad):
                continue
            src = x[lo * stride + k - pad:(hi - 1) * stride + k - pad + 1:stride]
            out[lo:hi].view(-1, cout).addmm_(src.reshape(-1, cin), w[k])
        ctx.save_for_backward(x, w)
        ctx.conf = (stride, pad, bias is not None, centre_full)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        stride, pad, has_bias, centre_full = ctx.conf
        grad = grad.contiguous()
        t_in, rows, cin = x.shape
        kt, _, cout = w.shape
        t_out = grad.shape[0]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx = gw = gb = None
        if need_x:
            gx = (torch.mm(grad.view(-1, cout), w[pad].t()).view(t_in, rows, cin) if centre_full
                  else torch.zeros_like(x))
        if need_w:
            gw = torch.zeros(kt, cin, cout, dtype=x.dtype, device=x.device)
        for k in range(kt):
            lo, hi = _frames(t_in, t_out, stride, k - pad)
            if hi <= lo:
                continue
            frames = slice(lo * stride + k - pad, (hi - 1) * stride + k - pad + 1, stride)
            g = grad[lo:hi].view(-1, cout)
            if need_w:
                torch.mm(x[frames].reshape(-1, cin).t(), g, out=gw[k])
            if need_x and not (centre_full and k == pad):
                if stride == 1:
                    gx[frames].view(-1, cin).addmm_(g, w[k].t())
                else:
                    gx[frames].add_(torch.mm(g, w[k].t()).view(hi - lo, rows, cin))
        if need_w:
            gw = gw.permute(2, 1, 0).reshape(cout, cin, kt, 1)
        if has_bias and need_b:
            gb = grad.view(-1, cout).sum(0)
        return gx, gw, gb, None, None


class GraphContraction(torch.autograd.Function):
    """out[b, w, c] = sum_j A2[w, j] z[b, j, c] for z (B, J, C): one batched GEMM with the
    (W, J) matrix broadcast (no copies of z), and a hand-written backward."""

    @staticmethod
    def forward(ctx, a2, z):
        ctx.save_for_backward(a2, z)
        return torch.bmm(a2.expand(z.shape[0], -1, -1), z)

    @staticmethod
    def backward(ctx, grad):
        a2, z = ctx.saved_tensors
        grad = grad.contiguous()
        ga = gz = None
        if ctx.needs_input_grad[0]:
            ga = torch.bmm(grad, z.transpose(1, 2)).sum(0)
        if ctx.needs_input_grad[1]:
            gz = torch.bmm(a2.t().expand(z.shape[0], -1, -1), grad)
        return ga, gz


def _autocast_args(*tensors):
    """Inside autocast, cast the custom kernels' inputs to the autocast dtype (as conv would)."""
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors)


def _linear(x2d, conv):
    """1x1 Conv2d as a GEMM on (rows, Cin)."""
    weight = conv.weight.view(conv.weight.shape[0], -1)
    return F.linear(x2d, weight, conv.bias)


def _batch_norm(bn, x2d):
    """The BN module on the (rows, C) matrix: statistics over rows, as BatchNorm2d takes them
    over (N, T, V). Plain BatchNorm1d/2d run F.batch_norm on the matrix directly (the fast
    channels-last kernel) with nn.BatchNorm's bookkeeping; any other BN class (e.g. a
    synchronised one) is called as a module on a (rows, C, 1, 1) view."""
    if type(bn) not in (nn.BatchNorm1d, nn.BatchNorm2d):
        return bn(x2d.view(x2d.shape[0], x2d.shape[1], 1, 1)).view(x2d.shape)
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    return F.batch_norm(x2d, bn.running_mean if track else None, bn.running_var if track else None,
                        bn.weight, bn.bias, batch_stats, momentum, bn.eps)


def fast_dropout_mask(shape, p, device):
    """Boolean keep-mask with P(keep) = 1 - p. When 256 p is an integer (p = 0.5 in every
    reference config) one random byte per element decides, several times cheaper than
    bernoulli_ on floats on the CPU; otherwise uniform floats are compared with p."""
    level = p * 256
    if level == int(level):
        return torch.empty(shape, dtype=torch.uint8, device=device).random_() >= int(level)
    return torch.rand(shape, device=device) >= p


class GraphConv(nn.Module):
    """1x1 conv to K*out channels, then out[..., w] = sum_k sum_v z_k[..., v] * A_k[v, w].

    The 1x1 conv and the graph contraction commute, so when in <= out we contract the (narrower)
    input first and mix (K, in) -> out with one 1x1 conv whose weight is a regrouping of
    ``conv.weight``; the conv bias becomes sum_k b_k * colsum(A_k). Same maths, ~1.2-1.4x faster
    on CPU (less memory traffic, no permute copy). ``conv`` keeps the reference layout.
    """

    def __init__(self, in_channels, out_channels, num_partitions):
        super().__init__()
        self.num_partitions = num_partitions
        self.conv = nn.Conv2d(in_channels, out_channels * num_partitions, kernel_size=1)
        self.contract_first = in_channels <= out_channels

    def forward(self, x, A):
        k = self.num_partitions
        n, cin, t, v = x.shape
        if not self.contract_first:
            z = self.conv(x)
            z = z.view(n, k, -1, t, v).permute(0, 2, 3, 1, 4).reshape(n, -1, t, k * v)
            return torch.matmul(z, A.reshape(k * v, -1))       # (n, out, T, W)
        # one broadcast matmul over the K partitions: (n, 1, in*T, V) @ (K, V, W)
        xa = torch.matmul(x.reshape(n, 1, cin * t, v), A).view(n, k * cin, t, -1)
        cout = self.conv.out_channels // k
        weight = self.conv.weight.view(k, cout, cin).transpose(0, 1).reshape(cout, k * cin, 1, 1)
        bias = (self.conv.bias.view(k, cout, 1) * A.sum(1).unsqueeze(1)).sum(0)  # (out, W)
        return F.conv2d(xa, weight) + bias.unsqueeze(1)


class STGCNBlock(nn.Module):
    """Graph conv -> BN/ReLU/9x1 temporal conv/BN/Dropout, plus residual, then ReLU."""

    def __init__(self, in_channels, out_channels, num_partitions, stride=1, dropout=0.0,
                 residual=True, temporal_kernel=9):
        super().__init__()
        self.gcn = GraphConv(in_channels, out_channels, num_partitions)
        self.tcn = nn.Sequential(
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, (temporal_kernel, 1), (stride, 1),
                      ((temporal_kernel - 1) // 2, 0)),
            nn.BatchNorm2d(out_channels),
            nn.Dropout(dropout, inplace=True),
        )
        if not residual:
            self.residual = None
        elif in_channels == out_channels and stride == 1:
            self.residual = nn.Identity()
        else:
            self.residual = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=(stride, 1)),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x, A):
        y = self.tcn(self.gcn(x, A))
        if self.residual is not None:
            y = y + self.residual(x)
        return F.relu(y, inplace=True)

    def forward_fast(self, x, A2):
        """Same block on frame-major x (T, N*M, V, Cin) contiguous; A2 (W, V*K) with
        A2[w, v*K + k] = A[k, v, w]. Returns (T', N*M, V, Cout) contiguous."""
        t, nm, v, cin = x.shape
        conv = self.gcn.conv
        cout = conv.out_channels // self.gcn.num_partitions
        x2d = x.view(-1, cin)
        # gcn: channels k*Cout + c of the 1x1 conv, contracted over (v, k) in one batched matmul
        z = _linear(x2d, conv).view(t * nm, v * self.gcn.num_partitions, cout)
        y = GraphContraction.apply(*_autocast_args(A2, z)).view(-1, cout)
        bn0, _, tconv, bn1, drop = self.tcn
        y = F.relu(_batch_norm(bn0, y), inplace=True)
        weight, bias = tconv.weight, tconv.bias
        y, weight, bias = _autocast_args(y, weight, bias)
        y = TemporalConv.apply(y.view(t, nm * v, cout), weight, bias, tconv.stride[0], tconv.padding[0])
        t_out = y.shape[0]
        y = _batch_norm(bn1, y.view(-1, cout))
        scale = 1.0
        if drop.p > 0 and self.training:
            if drop.p >= 1:
                y = y * 0
            else:
                y = y * fast_dropout_mask(y.shape, drop.p, y.device)
                scale = 1.0 / (1.0 - drop.p)
        if self.residual is None:
            out = y * scale if scale != 1.0 else y
        else:
            if isinstance(self.residual, nn.Identity):
                res = x2d
            else:
                stride = self.residual[0].stride[0]
                src = x[::stride] if stride > 1 else x
                res = _batch_norm(self.residual[1], _linear(src.reshape(-1, cin), self.residual[0]))
            out = torch.add(res.to(y.dtype), y, alpha=scale)
        return F.relu(out, inplace=True).view(t_out, nm, v, cout)


class EADM(nn.Module):
    """Energy-based attention-guided drop (AimCLR ``Simam_Drop``), on (NM, C, T, V) maps.

    ``mode='off'`` is the identity (what the paper-era bytecode effectively ran);
    ``mode='fixed'`` drops high-attention joints, then high-attention elements, each followed by
    one batch-global rescale. Masks are computed without gradient.
    """

    def __init__(self, keep_prob=0.7, e_lambda=1e-4, mode='off'):
        super().__init__()
        if mode is False:   # an unquoted `eadm: off` (YAML reads it as false)
            mode = 'off'
        if mode not in EADM_MODES:
            raise ConfigError(f'model_args.eadm: unknown eadm mode {mode!r}; valid: {list(EADM_MODES)}')
        self.keep_prob, self.e_lambda, self.mode = keep_prob, e_lambda, mode

    def extra_repr(self):
        return f'mode={self.mode}, keep_prob={self.keep_prob}'

    @torch.no_grad()
    def masks(self, x):
        """Boolean keep-masks: joints (NM, 1, 1, V) and elements (NM, C, T, V)."""
        _, _, t, v = x.shape
        d = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
        var = d.sum(dim=(2, 3), keepdim=True) / (t * v - 1)
        att = torch.sigmoid(d / (4 * (var + self.e_lambda)) + 0.5)
        joint_keep = att.mean(dim=(1, 2), keepdim=True) < self.keep_prob
        elem_keep = att < self.keep_prob
        return joint_keep, elem_keep

    @staticmethod
    def _rescaled(x, keep):
        scale = keep.numel() / keep.sum().clamp(min=1)  # guard: everything dropped
        return x * keep * scale.to(x.dtype)

    def forward(self, x):
        if self.mode == 'off':
            return x
        joint_keep, elem_keep = self.masks(x)
        return self._rescaled(self._rescaled(x, joint_keep), elem_keep)


@ENCODERS.register('st_gcn', aliases=['net.st_gcn.Model'])
class Model(nn.Module):
    """ST-GCN encoder. Input (N, C, T, V, M); ``extract_feature`` gives (N, hidden_dim)."""

    def __init__(self, in_channels=3, hidden_channels=64, hidden_dim=256, num_class=60,
                 dropout=0.5, graph_args=None, edge_importance_weighting=True, eadm='off',
                 keep_prob=0.7, impl='auto', **kwargs):
        super().__init__()
        if impl not in IMPLS:
            raise ConfigError(f'model_args.impl: unknown impl {impl!r}; valid: {list(IMPLS)}')
        self.impl = impl
        # Unused kwargs are accepted: reference configs pass method-level keys through.
        try:
            self.graph = Graph(**(graph_args or {'layout': 'ntu-rgb+d', 'strategy': 'spatial'}))
        except TypeError as err:
            raise ConfigError(f'model_args.graph_args: ST-GCN accepts layout, strategy, max_hop and dilation; '
                              f'got {graph_args}: {err}') from None
        self.register_buffer('A', torch.tensor(self.graph.A, dtype=torch.float32))
        k, v = self.A.shape[:2]
        self.in_channels, self.num_joints = in_channels, v
        self.feature_dim = hidden_dim

        self.data_bn = nn.BatchNorm1d(in_channels * v)
        h = hidden_channels
        # (in, out, temporal stride); block 0 has no residual and no dropout
        plan = [(in_channels, h, 1), (h, h, 1), (h, h, 1), (h, h, 1), (h, 2 * h, 2),
                (2 * h, 2 * h, 1), (2 * h, 2 * h, 1), (2 * h, 4 * h, 2), (4 * h, 4 * h, 1),
                (4 * h, hidden_dim, 1)]
        self.st_gcn_networks = nn.ModuleList(
            STGCNBlock(cin, cout, k, stride, dropout=0.0 if i == 0 else dropout, residual=i > 0)
            for i, (cin, cout, stride) in enumerate(plan))
        self.fc = nn.Linear(hidden_dim, num_class)
        if edge_importance_weighting:
            self.edge_importance = nn.ParameterList(
                nn.Parameter(torch.ones_like(self.A)) for _ in self.st_gcn_networks)
        else:
            self.edge_importance = None
        self.dropout = EADM(keep_prob=keep_prob, mode=eadm)

    def _check_input(self, x):
        if x.dim() != 5:
            raise ValueError(f'ST-GCN expects input (N, C, T, V, M); got shape {tuple(x.shape)}')
        if x.shape[1] != self.in_channels or x.shape[3] != self.num_joints:
            raise ValueError(f'ST-GCN built for C={self.in_channels}, V={self.num_joints}; '
                             f'got input shape {tuple(x.shape)}')

    def uses_fast_path(self, x):
        """'auto': the frame-major GEMM path on the CPU (where it is ~1.8x faster), the plain
        NCHW path (cuDNN convolutions) on CUDA, where it measured faster on an H100."""
        return self.impl == 'fast' or (self.impl == 'auto' and x.device.type == 'cpu')

    def backbone(self, x):
        """(N, C, T, V, M) -> block-9 feature map (N*M, hidden_dim, T', V).

        With impl='fast' the map is a permuted view of a frame-major (T', N*M, V, C) tensor
        (not contiguous; use reshape rather than view on it)."""
        self._check_input(x)
        n, c, t, v, m = x.shape
        # data_bn normalises channel v*C + c of each body
        x = x.permute(0, 4, 3, 1, 2).reshape(n * m, v * c, t)
        x = self.data_bn(x)
        if self.uses_fast_path(x):
            x = x.view(n * m, v, c, t).permute(3, 0, 1, 2).contiguous()     # (T, N*M, V, C)
            k = self.A.shape[0]
            for i, block in enumerate(self.st_gcn_networks):
                A = self.A if self.edge_importance is None else self.A * self.edge_importance[i]
                x = block.forward_fast(x, A.permute(2, 1, 0).reshape(v, v * k))
            return x.permute(1, 3, 0, 2)
        x = x.view(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)
        for i, block in enumerate(self.st_gcn_networks):
            A = self.A if self.edge_importance is None else self.A * self.edge_importance[i]
            x = block(x, A)
        return x

    @staticmethod
    def pool(x, n):
        """Mean over (T', V), then over bodies: (N*M, C, T', V) -> (N, C)."""
        return x.mean(dim=(2, 3)).view(n, -1, x.shape[1]).mean(dim=1)

    def extract_feature(self, x):
        return self.pool(self.backbone(x), x.shape[0])

    def forward(self, x, drop=False):
        feat = self.backbone(x)
        n = x.shape[0]
        if drop:
            return self.fc(self.pool(feat, n)), self.fc(self.pool(self.dropout(feat), n))
        return self.fc(self.pool(feat, n))
