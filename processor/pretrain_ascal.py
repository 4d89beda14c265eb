"""pretrain_ascal: the shared pretraining engine with AS-CAL defaults (reference doc 5.5).

Reference schedule: SGD lr 0.01, momentum 0.9, no Nesterov, wd 1e-4, batch 32, epochs 1..61
where epoch 1 only fills the queue (`model_args.queue_warmup_epochs`), lr x0.1 after epoch 30.
The EMA of the key encoder runs after every optimiser step (`ASCAL.after_step`).
"""
from processor.pretrain import PRETRAIN_OPTIONS, PretrainProcessor
from torchlight.config import Opt
from torchlight.registry import TASKS


@TASKS.register('pretrain_ascal')
class ASCALPretrain(PretrainProcessor):
    description = 'pretrain AS-CAL (momentum RNN encoder, queue of raw features, InfoNCE at T 0.06)'
    options = {
        **PRETRAIN_OPTIONS,
        'model': Opt('ascal', str, 'method class (ascal or net.ascal.ASCAL)'),
        'train_feeder': Opt('ascal_array', str, 'training dataset class (first selected_frames frames)'),
        'base_lr': Opt(0.01, float, 'initial learning rate'),
        'step': Opt([30, 70], (list, int), 'epochs after which lr is multiplied by lr_decay_rate'),
        'nesterov': Opt(False, bool, 'Nesterov momentum for SGD'),
        'batch_size': Opt(32, int, 'global training batch size'),
        'num_epoch': Opt(61, int, 'number of epochs (epoch 1 = queue warm-up)'),
    }
