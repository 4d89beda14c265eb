"""AS-CAL recurrent encoders (reference doc 5.3): one RNN over the flattened frames.

`Bi_lstm` / `GRU_model` / `RNN_model` of the reference (`models/Models.py`), with its state-dict
names (`bi_lstm.*`, `GRU.*`, `RNN.*`) so released checkpoints load as they are. Despite the
name, `Bi_lstm` is unidirectional in every reference run (`'bi' in args.model` is never true);
`bidirectional=True` gives the variant it would have built.

Input (N, C, T, V, M) is flattened per frame with feature index f = c*V*M + v*M + m
(NTU: c*50 + v*2 + m), sequence-first, exactly as the reference `permute(2, 0, 1, 3, 4)`.
The pooled feature ("CAE" for tap='mean') is the reduction over *all* T steps, zero-padded
frames included.
"""
import torch.nn as nn

from torchlight.config import ConfigError
from torchlight.registry import ENCODERS

TAPS = ('mean', 'last', 'sum')


def flatten_frames(x):
    """(N, C, T, V, M) -> (T, N, C*V*M) with f = c*V*M + v*M + m (the reference order)."""
    if x.dim() != 5:
        raise ValueError(f'the AS-CAL encoder expects clips (N, C, T, V, M); got shape {tuple(x.shape)}')
    n, c, t, v, m = x.shape
    return x.permute(2, 0, 1, 3, 4).reshape(t, n, c * v * m)


class RecurrentEncoder(nn.Module):
    """Base of the three AS-CAL encoders; subclasses set the cell class and its attribute name.

    `num_class`: width of `fc`, the classifier of the evaluation model (reference
    `LinearClassifier` / `*_linear`: N(0, 0.01) weights, zero bias); None or 0 = no fc
    (pretraining: the contrastive head takes the raw pooled feature).
    """

    cell = nn.LSTM
    attribute = 'bi_lstm'

    def __init__(self, input_size=150, hidden_units=256, lstm_layer=1, tap='mean',
                 bidirectional=False, num_class=None, **kwargs):
        super().__init__()
        # method-level keys of the config (queue_size, ...) reach the encoder too; they are ignored
        if tap not in TAPS:
            raise ConfigError(f"model_args.tap must be one of {TAPS}, got {tap!r}")
        self.input_size, self.tap = int(input_size), tap
        setattr(self, self.attribute, self.cell(self.input_size, int(hidden_units),
                                                num_layers=int(lstm_layer), bidirectional=bool(bidirectional)))
        self.feature_dim = int(hidden_units) * (2 if bidirectional else 1)
        if num_class:
            self.fc = nn.Linear(self.feature_dim, int(num_class))
            nn.init.normal_(self.fc.weight, 0.0, 0.01)
            nn.init.zeros_(self.fc.bias)
        else:
            self.fc = nn.Identity()

    @property
    def rnn(self):
        return getattr(self, self.attribute)

    def sequence(self, x):
        """(N, C, T, V, M) -> RNN outputs (T, N, feature_dim)."""
        seq = flatten_frames(x)
        if seq.shape[2] != self.input_size:
            raise ValueError(f'clips {tuple(x.shape)} flatten to {seq.shape[2]} values per frame, '
                             f'but the encoder was built with input_size={self.input_size} (= C*V*M)')
        return self.rnn(seq)[0]

    def extract_feature(self, x):
        out = self.sequence(x)
        if self.tap == 'mean':
            return out.mean(dim=0)
        if self.tap == 'sum':
            return out.sum(dim=0)
        return out[-1]

    def forward(self, x):
        return self.fc(self.extract_feature(x))


@ENCODERS.register('ascal_lstm', aliases=['models.Models.Bi_lstm'])
class BiLSTM(RecurrentEncoder):
    cell, attribute = nn.LSTM, 'bi_lstm'


@ENCODERS.register('ascal_gru', aliases=['models.Models.GRU_model'])
class GRUModel(RecurrentEncoder):
    cell, attribute = nn.GRU, 'GRU'


@ENCODERS.register('ascal_rnn', aliases=['models.Models.RNN_model'])
class RNNModel(RecurrentEncoder):
    cell, attribute = nn.RNN, 'RNN'
