"""The raw-coordinate baseline as an encoder: the feature is the flattened input clip.

Run through `linear_evaluation` / `knn_retrieval` it gives the 'raw coordinates' rows of a
results table with the same probe and the same k-NN as the learned encoders.
"""
import torch.nn as nn

from torchlight.registry import ENCODERS


@ENCODERS.register('raw_coords')
class RawCoordinates(nn.Module):
    """Input (N, C, T, V, M); `extract_feature` gives (N, C * T * V * M), the clip itself."""

    def __init__(self, in_channels=3, num_frames=50, num_joints=25, num_person=2, num_class=60,
                 **kwargs):   # encoder keys of the configs it shares (graph_args, ...) are ignored
        super().__init__()
        self.input_shape = (in_channels, num_frames, num_joints, num_person)
        self.feature_dim = in_channels * num_frames * num_joints * num_person
        self.fc = nn.Linear(self.feature_dim, num_class)

    def extract_feature(self, x):
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f'raw_coords expects clips of shape (N, {", ".join(map(str, self.input_shape))}) '
                             f'(model_args in_channels, num_frames, num_joints, num_person), got {tuple(x.shape)}')
        return x.flatten(1)

    def forward(self, x):
        return self.fc(self.extract_feature(x))
