"""pretrain_isc / pretrain_isc_inter: the shared pretraining engine with skeleton-contrast
defaults (reference doc ISC 3.4): SGD lr 0.01, momentum 0.9 (no Nesterov), weight decay 1e-4,
batch 64, 451 epochs with lr x0.1 after epoch 351, two `crop_pose` views (feeder keys
`l_ratio` [0.1, 1], `input_size` 64, `num_frame_path`)."""
from processor.pretrain import PRETRAIN_OPTIONS, PretrainProcessor
from torchlight.config import Opt
from torchlight.registry import TASKS

ISC_OPTIONS = {
    **PRETRAIN_OPTIONS,
    'base_lr': Opt(0.01, float, 'initial learning rate'),
    'batch_size': Opt(64, int, 'global training batch size'),
    'num_epoch': Opt(451, int, 'number of epochs (NTU-60; NTU-120: 351)'),
    'step': Opt([351], (list, int), 'epochs after which lr is multiplied by 0.1 (NTU-120: 251 351)'),
    'nesterov': Opt(False, bool, 'Nesterov momentum for SGD'),
    'save_interval': Opt(10, int, 'epochs between reference-format checkpoints epoch{E}_model.pt (-1: only the last)'),
}


@TASKS.register('pretrain_isc')
class ISCPretrain(PretrainProcessor):
    description = 'pretrain ISC intra-skeleton contrast (MoCo on two crop_pose views of one representation)'
    options = {**ISC_OPTIONS,
               'model': Opt('isc', str, 'method class (isc or moco.builder_intra.MoCo)')}


@TASKS.register('pretrain_isc_inter')
class ISCInterPretrain(PretrainProcessor):
    description = ('pretrain ISC inter-skeleton contrast (two representations, cross pairs, '
                   'one queue each)')
    options = {**ISC_OPTIONS,
               'model': Opt('isc_inter', str, 'method class (isc_inter or moco.builder_inter.MoCo)')}
