"""Reference weight initialisation (reference spec 4.1), applied with ``model.apply(weights_init)``."""
import torch.nn as nn

_CONV_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Linear)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def weights_init(module):
    """Conv/Linear: weight ~ N(0, 0.02), bias 0. BatchNorm: weight ~ N(1, 0.02), bias 0.

    Other parameters (e.g. ST-GCN edge importance) are left untouched.
    """
    if isinstance(module, _CONV_LINEAR):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, _BATCHNORM):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
