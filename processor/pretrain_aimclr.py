"""pretrain_aimclr: the shared pretraining engine with AimCLR defaults (reference doc 3.5, 4.2).

The reference keeps `mining_epoch` and `topk` as top-level options; this task forwards them into
the method constructor (`method_options`). A value under `model_args` wins over the top level.
"""
from processor.pretrain import PRETRAIN_OPTIONS, PretrainProcessor
from torchlight.config import Opt
from torchlight.registry import TASKS


@TASKS.register('pretrain_aimclr', aliases=['processor.pretrain_aimclr.AimCLR_Processor'])
class AimCLRPretrain(PretrainProcessor):
    description = ('pretrain AimCLR (extreme + two normal views, EADM drop, D3M, '
                   'nearest-neighbour mining after mining_epoch)')
    options = {
        **PRETRAIN_OPTIONS,
        'model': Opt('aimclr', str, 'method class (aimclr or net.aimclr.AimCLR)'),
        'mining_epoch': Opt(150, int, 'mine nearest neighbours for epochs > mining_epoch (1-based; 1e6: never)'),
        'topk': Opt(1, int, 'queue neighbours mined per view'),
    }
    method_options = {'mining_epoch': 'mining_epoch', 'topk': 'topk'}
