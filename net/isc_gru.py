"""ISC sequence encoder: the BIGRU of skeleton-contrast (reference doc ISC 3.1).

State-dict names follow the reference (`encoder.gru.{weight,bias}_{ih,hh}_l{i}[_reverse]`,
`fc`), so released checkpoints load. The reference steps its bidirectional nn.GRU one frame at
a time and carries the full hidden state, so the `_reverse` weights also run *forward in
time*: each layer is two independent forward GRUs whose outputs are concatenated as the next
layer's input, and the feature is the top layer's output at the last frame. That is what
`reverse_in_time=False` (the default, needed for released weights) computes, with one
whole-sequence GRU call per layer and direction instead of one call per frame.
`reverse_in_time=True` is a standard bidirectional GRU (for new training only).
`readout='mean'` takes the temporal mean of the top layer's outputs instead of the last frame's
(for new training only): with the reference readout the feature is one frame's output, which on
NW-UCLA leaves the untrained and the pretrained GRU at the same accuracy (docs/RESULTS.md).
"""
import torch
import torch.nn as nn
from torch.func import functional_call

from torchlight.config import ConfigError
from torchlight.registry import ENCODERS

GRU_WEIGHTS = ('weight_ih', 'weight_hh', 'bias_ih', 'bias_hh')


def flatten(x):
    """(N, C, T, V, M) -> (N, T, V*C*M), feature index v*C*M + c*M + m (v*6 + c*2 + m for NTU)."""
    if x.dim() != 5:
        raise ValueError(f'expected a clip (N, C, T, V, M), got shape {tuple(x.shape)}')
    n, c, t, v, m = x.shape
    return x.permute(0, 2, 3, 1, 4).reshape(n, t, v * c * m)


class EncoderRNN(nn.Module):
    """Holds the reference `gru` (bidirectional, batch_first) and runs it over a sequence."""

    def __init__(self, input_size, hidden_size, num_layers, reverse_in_time=False):
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, num_layers=num_layers, bidirectional=True,
                          batch_first=True)
        self.num_layers, self.reverse_in_time = num_layers, reverse_in_time
        # Parameter-free single-layer GRUs on the meta device: functional_call runs them with
        # one direction's weights of self.gru (no copies, gradients reach self.gru).
        with torch.device('meta'):
            self._cells = {size: nn.GRU(size, hidden_size, batch_first=True)
                           for size in {input_size, 2 * hidden_size}}

    def forward(self, seq):
        """(N, T, input_size) -> top-layer outputs (N, T, 2 * hidden)."""
        if self.reverse_in_time:
            return self.gru(seq)[0]
        for layer in range(self.num_layers):
            cell = self._cells[seq.shape[-1]]
            outs = []
            for suffix in ('', '_reverse'):
                weights = {f'{w}_l0': getattr(self.gru, f'{w}_l{layer}{suffix}') for w in GRU_WEIGHTS}
                outs.append(functional_call(cell, weights, (seq,))[0])
            seq = torch.cat(outs, dim=-1)
        return seq


@ENCODERS.register('isc_gru', aliases=['moco.GRU.BIGRU', 'net.isc_gru.BIGRU'])
class BIGRU(nn.Module):
    """Input (N, C, T, V, M), flattened per frame by `flatten`; `extract_feature` gives
    (N, 2 * en_hidden_size), the last frame's top-layer output (`readout='last'`, the reference)
    or the mean of the top layer's outputs over time (`readout='mean'`)."""

    READOUTS = ('last', 'mean')

    def __init__(self, en_input_size=150, en_hidden_size=1024, en_num_layers=3, num_class=60,
                 reverse_in_time=False, readout='last'):
        super().__init__()
        if readout not in self.READOUTS:
            raise ConfigError(f'model_args.readout must be one of {self.READOUTS}, got {readout!r}')
        self.en_input_size, self.readout = en_input_size, readout
        self.encoder = EncoderRNN(en_input_size, en_hidden_size, en_num_layers, reverse_in_time)
        self.fc = nn.Linear(2 * en_hidden_size, num_class)
        self.feature_dim = 2 * en_hidden_size
        # reference `weights_init_gru`: every 2-D parameter (GRU matrices, fc) Xavier-uniform
        with torch.no_grad():
            for p in self.parameters():
                if p.dim() == 2:
                    nn.init.xavier_uniform_(p)

    def encode(self, seq):
        """Feature of an already flattened sequence (N, T, en_input_size)."""
        if seq.dim() != 3 or seq.shape[-1] != self.en_input_size:
            raise ValueError(f'BIGRU expects (N, T, {self.en_input_size}) sequences, '
                             f'got shape {tuple(seq.shape)}')
        outputs = self.encoder(seq)
        return outputs.mean(dim=1) if self.readout == 'mean' else outputs[:, -1]

    def extract_feature(self, x):
        seq = flatten(x)
        if seq.shape[-1] != self.en_input_size:
            raise ValueError(f'BIGRU built for en_input_size={self.en_input_size} (= C*V*M) '
                             f'but the clip {tuple(x.shape)} has {seq.shape[-1]} values per frame')
        return self.encode(seq)

    def forward(self, x):
        return self.fc(self.extract_feature(x))
