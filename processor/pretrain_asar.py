"""pretrain_asar: the pretraining engine with ASAR as the default method (reference doc 5).

The reference ASAR configs (`processor.pretrain_asar.ASAR_Processor`, `net.asar.ASAR`,
`feeder.ntu_feeder.Feeder_triple`) run unchanged. Their `mining_epoch` and `topk` keys are
accepted and ignored, `model_args.Temperature` is accepted and unused (ASAR has its own
`tau_q`/`tau_k`); `stream` is applied by the engine (every reference config says joint).
"""
import inspect

from processor.pretrain import PRETRAIN_OPTIONS, PretrainProcessor
from torchlight.config import Opt
from torchlight.registry import MODELS, TASKS


@TASKS.register('pretrain_asar', aliases=['processor.pretrain_asar.ASAR_Processor'])
class ASARPretrain(PretrainProcessor):
    description = 'pretrain ASAR (MoCo with adaptive relabeling and active sampling)'
    options = {
        **PRETRAIN_OPTIONS,
        'model': Opt('asar', str, 'method class (asar or net.asar.ASAR)'),
    }

    def build_model(self, **overrides):
        # Seed the k-means initialisation from the run's seed unless model_args sets it.
        try:
            params = inspect.signature(MODELS.get(self.cfg['model'] or '')).parameters
        except KeyError:
            params = {}
        if 'kmeans_seed' in params and 'kmeans_seed' not in self.cfg['model_args']:
            overrides.setdefault('kmeans_seed', self.cfg['seed'])
        return super().build_model(**overrides)
