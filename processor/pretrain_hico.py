"""pretrain_hico: the shared pretraining engine with HiCo defaults (reference spec 4.4).

Two independent 'crop_pose' views per clip (random crop-resize to `input_size` frames with
`l_ratio` [0.1, 1], then shear or joint corruption), the stream on each view, the hierarchical
contrast of net/hico.py. Defaults are the reference `run_pretraining.sh`: SGD lr 0.01 (no
Nesterov), momentum 0.9, wd 1e-4, batch 64, 451 epochs, lr x0.1 after epoch 351, checkpoints
every 50 epochs.
"""
from processor.pretrain import PRETRAIN_OPTIONS, PretrainProcessor
from torchlight.config import Opt
from torchlight.registry import TASKS


@TASKS.register('pretrain_hico')
class HiCoPretrain(PretrainProcessor):
    description = 'pretrain HiCo (hierarchical contrast: clip, part, domain and instance levels)'
    options = {
        **PRETRAIN_OPTIONS,
        'model': Opt('hico', str, 'method class (hico or hico.builder.HiCo)'),
        'num_epoch': Opt(451, int, 'number of epochs'),
        'base_lr': Opt(0.01, float, 'initial learning rate'),
        'step': Opt([351], (list, int), 'epochs after which lr is multiplied by 0.1'),
        'nesterov': Opt(False, bool, 'Nesterov momentum for SGD'),
        'batch_size': Opt(64, int, 'global training batch size'),
        'save_interval': Opt(50, int, 'epochs between reference-format checkpoints epoch{E}_model.pt'),
    }
