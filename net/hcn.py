"""ISC image encoder: the HCN variant of skeleton-contrast (reference doc ISC 3.1).

State-dict names follow the reference (`conv1.0`, `conv2`, `conv3.0`, `conv4.0`, the motion
twins `conv1m.0` ... `conv4m.0`, `conv5.0`, `conv6.0`, `fc`). Kept as in the reference, since
released weights depend on them: conv2 has `window_size` (64) output channels (the original HCN
has 32), the motion stream is resized back to T frames bilinearly, and the two persons are fused
by an element-wise maximum of the last conv map. The persons run as one batch (the reference
loops over them); the NaN / all-zero asserts of the reference forward are dropped.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from torchlight.config import ConfigError
from torchlight.registry import ENCODERS


@ENCODERS.register('hcn', aliases=['moco.HCN.HCN', 'net.hcn.HCN'])
class HCN(nn.Module):
    """Input (N, C, T=window_size, V, M); `extract_feature` gives (N, 4 * out_channel *
    (window_size / 16)^2) = (N, 4096) for the reference sizes."""

    def __init__(self, in_channel=3, num_joint=25, num_person=2, out_channel=64, window_size=64,
                 num_class=60):
        super().__init__()
        if window_size % 16:
            raise ConfigError(f'model_args.window_size: HCN window_size must be a multiple of 16 (four 2x poolings), got {window_size}')
        self.in_channel, self.num_joint, self.num_person = in_channel, num_joint, num_person
        self.window_size = window_size
        for tag in ('', 'm'):   # position stream, then motion stream
            setattr(self, f'conv1{tag}', nn.Sequential(nn.Conv2d(in_channel, out_channel, 1), nn.ReLU()))
            setattr(self, f'conv2{tag}', nn.Conv2d(out_channel, window_size, (3, 1), padding=(1, 0)))
            # after conv2 the joints are the channels: (N, V, T, window_size)
            setattr(self, f'conv3{tag}', nn.Sequential(
                nn.Conv2d(num_joint, out_channel // 2, 3, padding=1), nn.MaxPool2d(2)))
            setattr(self, f'conv4{tag}', nn.Sequential(
                nn.Conv2d(out_channel // 2, out_channel, 3, padding=1), nn.Dropout2d(0.5), nn.MaxPool2d(2)))
        self.conv5 = nn.Sequential(nn.Conv2d(2 * out_channel, 2 * out_channel, 3, padding=1), nn.ReLU(),
                                   nn.Dropout2d(0.5), nn.MaxPool2d(2))
        self.conv6 = nn.Sequential(nn.Conv2d(2 * out_channel, 4 * out_channel, 3, padding=1), nn.ReLU(),
                                   nn.Dropout2d(0.5), nn.MaxPool2d(2))
        self.feature_dim = 4 * out_channel * (window_size // 16) ** 2
        self.fc = nn.Linear(self.feature_dim, num_class)
        # reference weights_init: Glorot-uniform bounds (= xavier_uniform_) on conv and linear, zero bias
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def _stream(self, x, tag):
        """(N*M, C, T, V) -> (N*M, out_channel, T/4, window_size/4)."""
        out = getattr(self, f'conv2{tag}')(getattr(self, f'conv1{tag}')(x))
        out = out.permute(0, 3, 2, 1)   # joints become channels
        return getattr(self, f'conv4{tag}')(getattr(self, f'conv3{tag}')(out))

    def extract_feature(self, x):
        expected = (self.in_channel, self.window_size, self.num_joint, self.num_person)
        if x.dim() != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(f'HCN expects (N, C, T, V, M) = (N, {", ".join(map(str, expected))}) '
                             f'(T must equal window_size), got shape {tuple(x.shape)}')
        n, c, t, v, m = x.shape
        x = x.permute(0, 4, 1, 2, 3).reshape(n * m, c, t, v)   # persons folded into the batch
        motion = F.interpolate(x[:, :, 1:] - x[:, :, :-1], size=(t, v), mode='bilinear', align_corners=False)
        out = torch.cat([self._stream(x, ''), self._stream(motion, 'm')], dim=1)
        out = self.conv6(self.conv5(out))
        return out.view(n, m, *out.shape[1:]).amax(dim=1).flatten(1)   # max over persons, channel-major

    def forward(self, x):
        return self.fc(self.extract_feature(x))
