"""pretrain_asar: the pretraining engine with ASAR as the default method (reference doc 5).

The reference ASAR configs (`processor.pretrain_asar.ASAR_Processor`, `net.asar.ASAR`,
`feeder.ntu_feeder.Feeder_triple`) run unchanged. Their `mining_epoch` and `topk` keys are
accepted and ignored, `model_args.Temperature` is accepted and unused (ASAR has its own
`tau_q`/`tau_k`); `stream` is applied by the engine (every reference config says joint).
"""
from processor.pretrain import PRETRAIN_OPTIONS, PretrainProcessor
from torchlight.config import ConfigError, Opt
from torchlight.registry import TASKS


@TASKS.register('pretrain_asar', aliases=['processor.pretrain_asar.ASAR_Processor'])
class ASARPretrain(PretrainProcessor):
    description = 'pretrain ASAR (MoCo with adaptive relabeling and active sampling)'
    options = {
        **PRETRAIN_OPTIONS,
        'model': Opt('asar', str, 'method class (asar or net.asar.ASAR)'),
    }
    # the k-means initialisation follows the run's seed unless model_args sets kmeans_seed
    method_options = {'kmeans_seed': 'seed'}

    def setup(self):
        super().setup()
        # the reference's untransposed dequeue block only has the right shape when the global
        # batch equals feature_dim: refuse now rather than fail at the first active epoch
        model, batch = self.model, self.cfg['batch_size']
        dim = model.queue.shape[0]
        if model.asar_compat and self.cfg['num_epoch'] > model.active_epoch and batch != dim:
            raise ConfigError(f'model_args.asar_compat: the reference dequeue block needs batch_size ({batch}) '
                              f'to equal model_args.feature_dim ({dim}) once active sampling starts (after '
                              f'epoch {model.active_epoch}); use asar_compat: false (behaviour: fixed)')
