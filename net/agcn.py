"""ISC graph encoder: the 2s-AGCN joint stream of skeleton-contrast (reference doc ISC 3.1).

State-dict names follow the reference (`data_bn`, `l{1..10}.gcn1.{PA, conv_a.k, conv_b.k,
conv_d.k, down.0/1, bn}`, `l{i}.tcn1.{conv, bn}`, `l{5,8}.residual.{conv, bn}`, `fc`). The
fixed adjacency `A` is rebuilt from the graph (`net.graph.agcn_adjacency`) and kept as a
non-persistent buffer, as the reference does not store it. The three subsets of a graph unit
are computed together: one 1x1 convolution for all attention embeddings (conv_a, conv_b) and
one for all output projections (conv_d, concatenated along the input channels), which is the
reference's per-subset sum up to float rounding.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from net.graph import agcn_adjacency
from torchlight.config import ConfigError
from torchlight.registry import ENCODERS


def conv_init(conv):
    nn.init.kaiming_normal_(conv.weight, mode='fan_out')
    nn.init.zeros_(conv.bias)


def bn_init(bn, scale):
    nn.init.constant_(bn.weight, scale)
    nn.init.zeros_(bn.bias)


class UnitTCN(nn.Module):
    """Temporal convolution (kernel x 1, stride) + BN (reference `unit_tcn`)."""

    def __init__(self, in_channels, out_channels, kernel_size=9, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, (kernel_size, 1),
                              padding=((kernel_size - 1) // 2, 0), stride=(stride, 1))
        self.bn = nn.BatchNorm2d(out_channels)
        conv_init(self.conv)
        bn_init(self.bn, 1)

    def forward(self, x):
        return self.bn(self.conv(x))


class UnitGCN(nn.Module):
    """Adaptive graph convolution (reference `unit_gcn`): for each subset k,
    softmax over the source joint of (conv_a(x)^T conv_b(x)) / (C_inter * T), plus A_k + PA_k,
    aggregates the joints of x, then conv_d; subsets summed, BN, plus the (down-projected)
    input, ReLU."""

    def __init__(self, in_channels, out_channels, num_node, num_subset=3, coff_embedding=4):
        super().__init__()
        inter = out_channels // coff_embedding
        self.inter_c, self.num_subset = inter, num_subset
        self.PA = nn.Parameter(torch.full((num_subset, num_node, num_node), 1e-6))
        self.conv_a = nn.ModuleList(nn.Conv2d(in_channels, inter, 1) for _ in range(num_subset))
        self.conv_b = nn.ModuleList(nn.Conv2d(in_channels, inter, 1) for _ in range(num_subset))
        self.conv_d = nn.ModuleList(nn.Conv2d(in_channels, out_channels, 1) for _ in range(num_subset))
        self.down = (nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels))
                     if in_channels != out_channels else None)
        self.bn = nn.BatchNorm2d(out_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                conv_init(m)
            elif isinstance(m, nn.BatchNorm2d):
                bn_init(m, 1)
        bn_init(self.bn, 1e-6)
        for conv in self.conv_d:   # reference conv_branch_init
            n, k1, k2 = conv.weight.shape[:3]
            nn.init.normal_(conv.weight, 0, math.sqrt(2.0 / (n * k1 * k2 * num_subset)))
            nn.init.zeros_(conv.bias)

    def forward(self, x, A):
        n, c, t, v = x.shape
        s, inter = self.num_subset, self.inter_c
        embed = [*self.conv_a, *self.conv_b]
        ab = F.conv2d(x, torch.cat([m.weight for m in embed]), torch.cat([m.bias for m in embed]))
        ab = ab.view(n, 2, s, inter, t, v)
        a = ab[:, 0].permute(0, 1, 4, 2, 3).reshape(n, s, v, inter * t)     # (N, S, V, C'T)
        b = ab[:, 1].reshape(n, s, inter * t, v)                            # (N, S, C'T, V)
        graph = torch.softmax(a @ b / (inter * t), dim=-2) + (A + self.PA)  # (N, S, V, V)
        z = (x.reshape(n, 1, c * t, v) @ graph).reshape(n, s * c, t, v)     # subsets stacked
        y = F.conv2d(z, torch.cat([m.weight for m in self.conv_d], dim=1),
                     sum(m.bias for m in self.conv_d))
        y = self.bn(y) + (x if self.down is None else self.down(x))
        return F.relu(y)


class TCNGCNUnit(nn.Module):
    """Graph unit, temporal unit and residual (none | identity | 1x1 temporal conv + BN)."""

    def __init__(self, in_channels, out_channels, num_node, stride=1, residual=True):
        super().__init__()
        self.gcn1 = UnitGCN(in_channels, out_channels, num_node)
        self.tcn1 = UnitTCN(out_channels, out_channels, stride=stride)
        self.residual_mode = ('none' if not residual else
                              'identity' if in_channels == out_channels and stride == 1 else 'conv')
        if self.residual_mode == 'conv':
            self.residual = UnitTCN(in_channels, out_channels, kernel_size=1, stride=stride)

    def forward(self, x, A):
        y = self.tcn1(self.gcn1(x, A))
        if self.residual_mode == 'identity':
            y = y + x
        elif self.residual_mode == 'conv':
            y = y + self.residual(x)
        return F.relu(y)


@ENCODERS.register('agcn', aliases=['moco.AGCN.Model', 'net.agcn.Model'])
class Model(nn.Module):
    """2s-AGCN joint stream. Input (N, C, T, V, M); `extract_feature` gives (N, 256): the last
    unit's output averaged over (T', V), then over the persons."""

    PLAN = ((64, 1, False), (64, 1, True), (64, 1, True), (64, 1, True), (128, 2, True),
            (128, 1, True), (128, 1, True), (256, 2, True), (256, 1, True), (256, 1, True))

    def __init__(self, num_class=60, num_point=25, num_person=2, graph_args=None, in_channels=3):
        super().__init__()
        try:
            A = torch.tensor(agcn_adjacency(**(graph_args or {})))
        except TypeError as err:
            raise ConfigError(f'model_args.graph_args: AGCN accepts layout and labeling_mode; got {graph_args}: {err}') from None
        if A.shape[-1] != num_point:
            raise ConfigError(f'model_args.num_point: AGCN num_point={num_point} but the graph has {A.shape[-1]} joints')
        self.register_buffer('A', A, persistent=False)
        self.in_channels, self.num_point, self.num_person = in_channels, num_point, num_person
        self.data_bn = nn.BatchNorm1d(num_person * in_channels * num_point)
        width = in_channels
        for i, (out, stride, residual) in enumerate(self.PLAN, 1):
            setattr(self, f'l{i}', TCNGCNUnit(width, out, num_point, stride, residual))
            width = out
        self.feature_dim = width
        self.fc = nn.Linear(width, num_class)
        nn.init.normal_(self.fc.weight, 0, math.sqrt(2.0 / num_class))
        bn_init(self.data_bn, 1)

    def _check_input(self, x):
        expected = (self.in_channels, self.num_point, self.num_person)
        if x.dim() != 5 or (x.shape[1], x.shape[3], x.shape[4]) != expected:
            raise ValueError(f'AGCN expects (N, C={expected[0]}, T, V={expected[1]}, M={expected[2]}), '
                             f'got shape {tuple(x.shape)}')

    def backbone(self, x):
        """(N, C, T, V, M) -> last unit's map (N*M, 256, T', V)."""
        self._check_input(x)
        n, c, t, v, m = x.shape
        # data_bn channel m*V*C + v*C + c
        x = self.data_bn(x.permute(0, 4, 3, 1, 2).reshape(n, m * v * c, t))
        x = x.view(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)
        for i in range(1, len(self.PLAN) + 1):
            x = getattr(self, f'l{i}')(x, self.A)
        return x

    def extract_feature(self, x):
        feat = self.backbone(x)
        return feat.reshape(x.shape[0], x.shape[4], feat.shape[1], -1).mean(3).mean(1)

    def forward(self, x):
        return self.fc(self.extract_feature(x))
