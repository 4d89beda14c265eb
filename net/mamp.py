"""MAMP: masked motion prediction (Mao et al., ICCV 2023; maoyunyao/MAMP `model_mamp/transformer.py`).

One step on one cropped, resized, rotated view x (N, C, T, V, M), as N*M sequences:
  motion-aware masking: a token's motion is the mean |patch(tp) - patch(tp-1)| of its raw
      coordinates (temporal patch 0 copies patch 1), divided by (max over the sequence * tau
      + 1e-10); p = softmax over the L tokens; the int(L * (1 - mask_ratio)) tokens with the
      smallest log p + Gumbel noise are kept, so moving tokens are masked more often;
  the encoder runs on the kept tokens only (embeddings added before masking);
  the decoder embeds them, puts `mask_token` everywhere else, adds its own pos/temp
      embeddings, runs `decoder_depth` blocks + LayerNorm and predicts t_patch_size *
      patch_size * C values per token (order u*C + c);
  target: the next-frame motion x[t + motion_stride] - x[t] (0 for the last frames),
      patchified the same way and standardised per token with the unbiased variance
      (`norm_skes_loss`); loss = MSE over the values, averaged over the masked tokens.
All of it is batched: the mask noise is one (N*M, L) draw, masking and un-masking are gathers.
With `pretrain=False` only `encoder_q` (with the protocol's head) exists.
Checkpoints of the original (`{'model': ...}`, encoder keys at the top level) load through
`adapt_weights`; parameter names otherwise follow the original with the encoder under `encoder_q.`.
"""
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from net.mamp_transformer import MAMPTransformer, block_stack, init_weights, interpolate_temp_embed
from net.moco import encoder_kwargs
from torchlight.config import ConfigError
from torchlight.registry import ENCODERS, MODELS

DECODER_KEYS = ('decoder_', 'mask_token')
# original downstream head -> ours (linear probe: BN + Linear in a Sequential; finetune: fc1/bn/fc2)
HEAD_RENAMES = (('head.fc.weight', 'fc.1.weight'), ('head.fc.bias', 'fc.1.bias'),
                ('head.fc.', 'fc.'), ('head.', 'fc.'))


def patchify(seq, t_patch_size, patch_size):
    """(B, T, V, C) -> (B, TP*VP, u*p*C): token tp*VP + v holds its values in order (u, p, c)."""
    b, t, v, c = seq.shape
    x = seq.reshape(b, t // t_patch_size, t_patch_size, v // patch_size, patch_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, (t // t_patch_size) * (v // patch_size), -1)


def token_motion(patches, t_grid):
    """(B, L, P) patchified coordinates -> (B, L) mean |patch(tp) - patch(tp-1)|; tp = 0 copies tp = 1."""
    b, length, p = patches.shape
    x = patches.view(b, t_grid, length // t_grid, p)
    diff = (x[:, 1:] - x[:, :-1]).abs()
    return torch.cat([diff[:, :1], diff], dim=1).mean(dim=3).reshape(b, length)


def motion_keep_scores(motion, tau, uniform):
    """log softmax(motion / (max * tau + 1e-10)) + Gumbel noise from `uniform` (B, L) in [0, 1);
    the smallest scores are kept."""
    scaled = motion / (motion.amax(dim=1, keepdim=True) * tau + 1e-10)
    return torch.log(F.softmax(scaled, dim=1)) - torch.log(-torch.log(uniform + 1e-10) + 1e-10)


def next_frame_motion(seq, stride=1):
    """(B, T, V, C): x[t + stride] - x[t], zero for the last `stride` frames."""
    motion = torch.zeros_like(seq)
    motion[:, :-stride] = seq[:, stride:] - seq[:, :-stride]
    return motion


def standardise(target, eps=1e-6):
    """Per token: (t - mean) / sqrt(unbiased var + eps), over the last dimension."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def masked_mse(pred, target, mask):
    """Mean over values, then over the tokens where mask == 1."""
    loss = ((pred - target) ** 2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


@MODELS.register('mamp', aliases=['model_mamp.transformer.Transformer', 'net.mamp.MAMP'])
class MAMP(nn.Module):
    """`decoder_dim_feat`, `decoder_depth`, `norm_skes_loss` (original constructor names; the
    original's default for norm_skes_loss is False, every released config sets True), and the
    original's top-level training keys `mask_ratio`, `motion_aware_tau` (0 = uniform random
    masking, the original's MAE baseline), `motion_stride`. Encoder arguments (`dim_feat`,
    `depth`, `num_frames`, `protocol`, ...) go to `base_encoder`."""

    views = ('crop_resize',)

    def __init__(self, base_encoder='mamp_transformer', pretrain=True, num_class=60,
                 decoder_dim_feat=256, decoder_depth=3, norm_skes_loss=True, mask_ratio=0.9,
                 motion_aware_tau=0.8, motion_stride=1, **encoder_args):
        super().__init__()
        encoder_cls = ENCODERS.get(base_encoder)
        if not issubclass(encoder_cls, MAMPTransformer):
            raise ConfigError(f'model_args.base_encoder: MAMP needs the MAMP transformer (mamp_transformer), got base_encoder {base_encoder!r}')
        args = encoder_kwargs(encoder_cls, encoder_args)
        self.pretrain = pretrain
        if not pretrain:
            self.encoder_q = encoder_cls(num_class=num_class, **args)
            return
        args.pop('num_classes', None)
        self.encoder_q = encoder_cls(num_class=None, **args)
        enc = self.encoder_q
        self.mask_ratio, self.tau, self.motion_stride = float(mask_ratio), float(motion_aware_tau), int(motion_stride)
        if not 0 < mask_ratio < 1 or self.num_keep(enc.t_grid * enc.grid) < 1:
            raise ConfigError(f'model_args.mask_ratio must lie in (0, 1) and keep at least one of the '
                              f'{enc.t_grid * enc.grid} tokens, got {mask_ratio}')
        if not 1 <= self.motion_stride < enc.num_frames:
            raise ConfigError(f'model_args.motion_stride must lie in [1, num_frames), got {motion_stride}')
        if decoder_dim_feat % enc.block_args['num_heads']:
            raise ConfigError(f'model_args.decoder_dim_feat {decoder_dim_feat} is not divisible by num_heads '
                              f'{enc.block_args["num_heads"]}')
        self.norm_skes_loss = bool(norm_skes_loss)
        self.decoder_embed = nn.Linear(enc.norm.normalized_shape[0], decoder_dim_feat)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim_feat))
        # decoder block i gets the encoder's drop-path rate i, as in the original
        rates = [enc.drop_path_rates[min(i, len(enc.drop_path_rates) - 1)] for i in range(decoder_depth)]
        self.decoder_blocks = block_stack(decoder_dim_feat, rates, **enc.block_args)
        self.decoder_norm = nn.LayerNorm(decoder_dim_feat)
        self.decoder_temp_embed = nn.Parameter(torch.zeros(1, enc.t_grid, 1, decoder_dim_feat))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 1, enc.grid, decoder_dim_feat))
        self.decoder_pred = nn.Linear(decoder_dim_feat, enc.t_patch_size * enc.patch_size * enc.dim_in)
        for p in (self.mask_token, self.decoder_temp_embed, self.decoder_pos_embed):
            nn.init.trunc_normal_(p, std=0.02)
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            init_weights(module)

    # ------------------------------------------------------------------ pieces
    def sequences(self, x):
        """(N, C, T, V, M) -> (N*M, T, V, C), row n*M + m."""
        n, c, t, v, m = x.shape
        return x.permute(0, 4, 2, 3, 1).reshape(n * m, t, v, c)

    def num_keep(self, length):
        return int(length * (1 - self.mask_ratio))   # int(750 * 0.1) = 74 (float rounding), as the original

    def draw_mask(self, seq, uniform=None):
        """Token indices to keep (B, K) and the mask (B, L), 1 = masked. `uniform` (B, L): the
        noise (default: drawn from torch's CPU generator, which the engine seeds every step, so
        the mask does not depend on the device)."""
        enc = self.encoder_q
        patches = patchify(seq, enc.t_patch_size, enc.patch_size)
        b, length = patches.shape[:2]
        if uniform is None:
            uniform = torch.rand(b, length).to(seq.device)
        if self.tau > 0:
            scores = motion_keep_scores(token_motion(patches, enc.t_grid), self.tau, uniform)
        else:
            scores = uniform
        keep = scores.argsort(dim=1)[:, :self.num_keep(length)]
        mask = torch.ones(b, length, device=seq.device).scatter_(1, keep, 0.0)
        return keep, mask

    def decode(self, latent, keep, length):
        """Encoder output of the kept tokens (B, K, D) -> predictions for all L tokens (B, L, P)."""
        enc = self.encoder_q
        x = self.decoder_embed(latent)
        full = self.mask_token.to(x.dtype).expand(x.shape[0], length, x.shape[2]).clone()
        full.scatter_(1, keep[..., None].expand_as(x), x)
        full = full.view(x.shape[0], enc.t_grid, enc.grid, -1) + self.decoder_pos_embed + self.decoder_temp_embed
        full = full.flatten(1, 2)
        for block in self.decoder_blocks:
            full = block(full)
        return self.decoder_pred(self.decoder_norm(full))

    def target(self, seq):
        enc = self.encoder_q
        target = patchify(next_frame_motion(seq, self.motion_stride), enc.t_patch_size, enc.patch_size)
        return standardise(target) if self.norm_skes_loss else target

    def predict(self, x, keep=None, mask=None):
        """(loss, pred (N*M, L, P), mask (N*M, L)); `keep`/`mask` given: use that mask."""
        seq = self.sequences(x)
        tokens = self.encoder_q.embed(x).flatten(1, 2)
        if keep is None:
            keep, mask = self.draw_mask(seq)
        kept = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, tokens.shape[2]))
        pred = self.decode(self.encoder_q.encode(kept), keep, tokens.shape[1])
        return masked_mse(pred, self.target(seq), mask), pred, mask

    @staticmethod
    def keep_from_mask(mask):
        """A stored mask (B, L), 1 = masked -> the kept token indices (B, K) in index order."""
        keep = (mask == 0).sum(dim=1)
        if not bool((keep == keep[0]).all()):
            raise ValueError('every sequence must keep the same number of tokens')
        return mask.argsort(dim=1, stable=True)[:, :int(keep[0])]

    # ------------------------------------------------------------------ public API
    def extract_feature(self, x):
        return self.encoder_q.extract_feature(x)

    def forward(self, *views, epoch=1):
        if not self.pretrain:
            return self.encoder_q(views[0])
        loss, _, mask = self.predict(views[0])
        return {'loss': loss, 'masked_fraction': mask.mean().detach()}

    def layer_id(self, name):
        """Layer-wise lr decay ids (fine-tuning): those of the encoder, by parameter name."""
        return self.encoder_q.layer_id(name[len('encoder_q.'):]) if name.startswith('encoder_q.') else \
            len(self.encoder_q.blocks) + 1

    @property
    def num_layers(self):
        return len(self.encoder_q.blocks) + 1

    def reference_checkpoint(self, state):
        """Our state dict in the original's checkpoint layout ({'model': ...}, encoder keys at the
        top level, the head as `head.*`), so the original's main_linprobe / main_finetune read
        our files with --finetune, and adapt_weights reads them back."""
        original = OrderedDict()
        for key, value in state.items():
            if key.startswith('encoder_q.'):
                key = key[len('encoder_q.'):]
                if key.startswith('fc.'):   # linprobe fc.0/fc.1 -> head.fc.0/1; finetune fc.fc1 -> head.fc1
                    key = 'head.' + (key if self.encoder_q.protocol == 'linprobe' else key[len('fc.'):])
            original[key] = value
        return {'model': original}

    def adapt_weights(self, weights, path='<checkpoint>', log=print):
        """Called by torchlight.io.load_weights. A checkpoint of the original code (encoder keys at
        the top level, `head.*`) gets our names; the decoder and mask token (ours or the
        original's) are dropped when this model has none (evaluation); `temp_embed` is resized
        bicubically when the number of temporal patches differs (the original's
        interpolate_temp_embed)."""
        original = not any(k.startswith('encoder_q.') for k in weights)
        adapted, dropped = OrderedDict(), []
        for key, value in weights.items():
            if key.startswith(DECODER_KEYS):
                if self.pretrain:
                    adapted[key] = value
                else:
                    dropped.append(key)
                continue
            if original:
                for old, new in HEAD_RENAMES:
                    if key.startswith(old):
                        key = new + key[len(old):]
                        break
                key = 'encoder_q.' + key
            adapted[key] = value
        if dropped:
            log(f'MAMP: {len(dropped)} decoder / mask-token tensors of {path} are not used by the encoder')
        own = self.state_dict()
        for key in ('encoder_q.temp_embed', 'decoder_temp_embed'):
            if key in adapted and key in own and adapted[key].shape[1] != own[key].shape[1] \
                    and adapted[key].shape[2:] == own[key].shape[2:]:
                log(f'MAMP: {key} interpolated from {adapted[key].shape[1]} to {own[key].shape[1]} temporal patches')
                adapted[key] = interpolate_temp_embed(adapted[key], own[key].shape[1])
        return adapted
