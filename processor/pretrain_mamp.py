"""pretrain_mamp: the shared pretraining engine with MAMP defaults (maoyunyao/MAMP main_pretrain.py
and config/*/pretrain_mamp_*.yaml): AdamW betas (0.9, 0.95), weight decay 0.05 with none on 1-D
tensors, lr 1e-3 (absolute, global batch 128 = 32 x 4 GPUs) with a 20-epoch per-iteration
warm-up and a cosine decay to min_lr 5e-4 over 400 epochs; one 'crop_resize' view (feeder keys
l_ratio [0.5, 1], input_size 120, random_rot true); mask_ratio 0.9, motion_aware_tau 0.8
(NTU-120: 0.75), motion_stride 1 at the top level as in the original's YAML files."""
from processor.pretrain import PRETRAIN_OPTIONS, PretrainProcessor
from torchlight.config import Opt
from torchlight.registry import TASKS


@TASKS.register('pretrain_mamp')
class MAMPPretrain(PretrainProcessor):
    description = 'pretrain MAMP (masked motion prediction with a skeleton Transformer)'
    method_options = {'mask_ratio': 'mask_ratio', 'motion_aware_tau': 'motion_aware_tau',
                      'motion_stride': 'motion_stride'}
    options = {
        **PRETRAIN_OPTIONS,
        'model': Opt('mamp', str, 'method class (mamp or model_mamp.transformer.Transformer)'),
        'mask_ratio': Opt(0.9, float, 'fraction of tokens masked (kept: int(L * (1 - mask_ratio)))'),
        'motion_aware_tau': Opt(0.8, float, 'temperature of the motion-aware masking (0: uniform random masking)'),
        'motion_stride': Opt(1, int, 'frames between the two poses of the motion target'),
        'num_epoch': Opt(400, int, 'number of epochs'),
        'batch_size': Opt(128, int, 'global training batch size'),
        'optimizer': Opt('AdamW', str, 'SGD | Adam | AdamW'),
        'betas': Opt([0.9, 0.95], (list, float), 'AdamW betas'),
        'base_lr': Opt(1e-3, float, 'peak learning rate after warm-up'),
        'weight_decay': Opt(0.05, float, 'weight decay'),
        'no_decay_1d': Opt(True, bool, 'no weight decay on 1-D parameters (biases, norm weights)'),
        'lr_schedule': Opt('cosine', str, "'cosine' (per-iteration warm-up + cosine) or 'step'"),
        'warmup_epochs': Opt(20.0, float, 'epochs of linear warm-up'),
        'min_lr': Opt(5e-4, float, 'lr at the end of the cosine schedule'),
        'save_interval': Opt(20, int, 'epochs between reference-format checkpoints epoch{E}_model.pt'),
    }
