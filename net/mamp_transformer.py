"""The MAMP skeleton Transformer (Mao et al., ICCV 2023; maoyunyao/MAMP `model/transformer.py`).

Clips (N, C, T, V, M) become N*M sequences (sample-major: row n*M + m). A Conv2d with kernel =
stride = (t_patch_size, patch_size) turns every t_patch_size frames x patch_size joints into a
token, `pos_embed` (per joint, shared over time) and `temp_embed` (per temporal patch, shared over
joints) are added, the TP*VP tokens are flattened time-major (index tp*VP + v), and `depth`
pre-norm ViT blocks plus a final LayerNorm follow. No cls token.

Heads (`protocol`, the original's constructor argument):
  linprobe: feature = tokens averaged over persons, time and joints (D values; an empty second
            person counts); fc = BatchNorm1d(D, affine=False, eps 1e-6) + Linear (the original's
            linear-probe head, `head.fc.0/1`);
  finetune: feature = tokens (dropout 0.3 in training) averaged over time, flattened per joint
            (index v*D + c) and averaged over persons (VP*D values); fc = fc1 (2048) + BN + ReLU
            + fc2 (`head.fc1/bn/fc2`).
State-dict names are the original's (`joints_embed.proj`, `temp_embed`, `pos_embed`,
`blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`); the head is `fc`.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from torchlight.config import ConfigError
from torchlight.registry import ENCODERS

PROTOCOLS = ('linprobe', 'finetune')


def drop_path(x, rate, training):
    """Stochastic depth: each sample's residual branch is dropped with probability `rate`."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = (keep + torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)).floor_()
    return x / keep * mask


class Attention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'width {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)   # output rows ordered (q/k/v, head, dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class MLP(nn.Module):
    def __init__(self, dim, hidden, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """x + attn(LN(x)), then x + mlp(LN(x)); LayerNorm eps 1e-5, exact (erf) GELU."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop=0.0, attn_drop=0.0, drop_path=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), drop)
        self.drop_path = drop_path

    def forward(self, x):
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class SkeletonEmbed(nn.Module):
    """The original's SkeleEmbed: one token per t_patch_size frames x patch_size joints."""

    def __init__(self, dim_in, dim_feat, t_patch_size, patch_size):
        super().__init__()
        self.proj = nn.Conv2d(dim_in, dim_feat, kernel_size=(t_patch_size, patch_size),
                              stride=(t_patch_size, patch_size))

    def forward(self, x):   # (NM, C, T, V) -> (NM, TP, VP, D)
        return self.proj(x).permute(0, 2, 3, 1)


def init_weights(module):
    """The original's _init_weights: xavier-uniform Linear weights, zero biases, unit LayerNorm."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class FinetuneHead(nn.Module):
    """The original's ActionHeadFinetune after pooling: fc1 -> BN -> ReLU -> fc2."""

    def __init__(self, in_features, num_class, hidden_dim=2048):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_dim)
        self.bn = nn.BatchNorm1d(hidden_dim, momentum=0.1)
        self.fc2 = nn.Linear(hidden_dim, num_class)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(x))))


def block_stack(dim, drop_path_rates, num_heads=8, mlp_ratio=4.0, qkv_bias=True, drop=0.0, attn_drop=0.0):
    return nn.ModuleList(Block(dim, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, rate)
                         for rate in drop_path_rates)


@ENCODERS.register('mamp_transformer', aliases=['model.transformer.Transformer'])
class MAMPTransformer(nn.Module):
    """Constructor names are the original's (`dim_in`, `dim_feat`, `depth`, `num_heads`,
    `mlp_ratio`, `num_frames`, `num_joints`, `patch_size`, `t_patch_size`, `qkv_bias`,
    `qk_scale` (ignored by the original too: the scale is always head_dim^-0.5), `drop_rate`,
    `attn_drop_rate`, `drop_path_rate`, `protocol`, `num_classes`); `num_class=None` builds no
    head (pretraining)."""

    def __init__(self, num_class=60, dim_in=3, dim_feat=256, depth=8, num_heads=8, mlp_ratio=4,
                 num_frames=120, num_joints=25, patch_size=1, t_patch_size=4, qkv_bias=True,
                 qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0,
                 protocol='linprobe', num_classes=None, head_dropout=0.3, hidden_dim=2048):
        super().__init__()
        if protocol not in PROTOCOLS:
            raise ConfigError(f'model_args.protocol must be one of {PROTOCOLS}, got {protocol!r}')
        if dim_feat % num_heads:
            raise ConfigError(f'model_args.dim_feat {dim_feat} is not divisible by num_heads {num_heads}')
        if num_frames % t_patch_size or num_joints % patch_size:
            raise ConfigError(f'model_args.num_frames / num_joints ({num_frames} / {num_joints}) must be multiples of '
                              f't_patch_size / patch_size ({t_patch_size} / {patch_size})')
        self.dim_in, self.num_frames, self.num_joints = dim_in, num_frames, num_joints
        self.t_patch_size, self.patch_size = t_patch_size, patch_size
        self.t_grid, self.grid = num_frames // t_patch_size, num_joints // patch_size
        self.protocol = protocol
        self.joints_embed = SkeletonEmbed(dim_in, dim_feat, t_patch_size, patch_size)
        # the decoder of the pretraining model builds its blocks with the same arguments
        self.block_args = dict(num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                               drop=drop_rate, attn_drop=attn_drop_rate)
        self.drop_path_rates = torch.linspace(0, drop_path_rate, depth).tolist()   # grows with depth
        self.blocks = block_stack(dim_feat, self.drop_path_rates, **self.block_args)
        self.norm = nn.LayerNorm(dim_feat)
        self.temp_embed = nn.Parameter(torch.zeros(1, self.t_grid, 1, dim_feat))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1, self.grid, dim_feat))
        nn.init.trunc_normal_(self.temp_embed, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        init_weights(self)
        self.feature_dim = dim_feat if protocol == 'linprobe' else self.grid * dim_feat
        self.head_dropout = nn.Dropout(head_dropout if protocol == 'finetune' else 0.0)
        num_class = num_classes if num_classes is not None else num_class
        self.fc = None
        if num_class:
            if protocol == 'linprobe':
                linear = nn.Linear(dim_feat, num_class)
                nn.init.trunc_normal_(linear.weight, std=0.01)   # the original linear probe (MoCo v3)
                nn.init.zeros_(linear.bias)
                self.fc = nn.Sequential(nn.BatchNorm1d(dim_feat, affine=False, eps=1e-6), linear)
            else:
                self.fc = FinetuneHead(self.feature_dim, num_class, hidden_dim)
                init_weights(self.fc)

    # ------------------------------------------------------------------ tokens
    def check_input(self, x):
        if x.dim() != 5 or x.shape[1] != self.dim_in or x.shape[2] != self.num_frames \
                or x.shape[3] != self.num_joints:
            raise ValueError(f'MAMP encoder expects clips (N, {self.dim_in}, {self.num_frames}, '
                             f'{self.num_joints}, M), got {tuple(x.shape)} (num_frames must match the '
                             f'crop-resize length, e.g. feeder input_size)')

    def embed(self, x):
        """(N, C, T, V, M) -> (N*M, TP, VP, D) token embeddings with pos/temp embeddings added."""
        self.check_input(x)
        n, c, t, v, m = x.shape
        x = self.joints_embed(x.permute(0, 4, 1, 2, 3).reshape(n * m, c, t, v))
        return x + self.pos_embed + self.temp_embed

    def encode(self, tokens):
        """(B, L, D) tokens (any subset, any order) -> blocks -> final LayerNorm."""
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def tokens(self, x):
        """(N, C, T, V, M) -> (N, M, TP, VP, D) encoder output."""
        n, m = x.shape[0], x.shape[-1]
        emb = self.embed(x)
        return self.encode(emb.flatten(1, 2)).view(n, m, *emb.shape[1:])

    # ------------------------------------------------------------------ features and heads
    def pool(self, tokens):
        if self.protocol == 'linprobe':
            return tokens.mean(dim=(1, 2, 3))
        feat = self.head_dropout(tokens).mean(dim=2)   # (N, M, VP, D)
        return feat.flatten(2).mean(dim=1)

    def extract_feature(self, x):
        return self.pool(self.tokens(x))

    def forward(self, x):
        feature = self.extract_feature(x)
        return feature if self.fc is None else self.fc(feature)

    def layer_id(self, name):
        """BEiT layer ids of the original's lr_decay.py: embeddings 0, block i -> i + 1, the rest
        (final norm, head) len(blocks) + 1."""
        if name in ('temp_embed', 'pos_embed') or name.startswith('joints_embed'):
            return 0
        if name.startswith('blocks.'):
            return int(name.split('.')[1]) + 1
        return len(self.blocks) + 1


def interpolate_temp_embed(weight, t_grid):
    """The original's interpolate_temp_embed: (1, TP, 1, D) resized bicubically to t_grid patches."""
    if weight.shape[1] == t_grid:
        return weight
    return F.interpolate(weight.permute(0, 3, 1, 2).float(), size=(t_grid, 1), mode='bicubic',
                         align_corners=False).permute(0, 2, 3, 1).to(weight.dtype)

