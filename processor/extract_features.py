"""extract_features: pooled (N, D) float32 features of the query encoder for clips in a .npy file.

Any evaluation config (linear, fine-tuning, k-NN) works as --config. Without `weights` the
features are those of the untrained encoder (initialised from `seed`): the baseline that
self-supervision has to beat."""
import os

import numpy as np
import torch

from processor.base import Processor
from processor.evaluation import FINETUNE_OPTIONS
from processor.knn_retrieval import KNN_OPTIONS
from torchlight.config import ConfigError, Opt
from torchlight.registry import TASKS


@TASKS.register('extract_features')
class ExtractFeatures(Processor):
    description = 'write the pooled features of the (query) encoder for clips (N, C, T, V, M) in a .npy file'
    options = {
        **FINETUNE_OPTIONS, **KNN_OPTIONS,   # evaluation and k-NN configs are accepted as they are
        'input': Opt(None, str, 'clips as a .npy array (N, C, T, V, M)'),
        'output': Opt(None, str, 'where to write the (N, D) float32 features (.npy)'),
        'test_batch_size': Opt(256, int, 'batch size'),
    }

    @torch.no_grad()
    def start(self):
        cfg = self.cfg
        for key in ('input', 'output'):
            if not cfg[key]:
                raise ConfigError(f"extract_features needs --{key}")
        if not os.path.isfile(cfg['input']):
            raise ConfigError(f'input file not found: {cfg["input"]}')
        clips = np.load(cfg['input'], mmap_mode='r')
        if clips.ndim != 5:
            raise ConfigError(f'{cfg["input"]}: expected (N, C, T, V, M), got shape {clips.shape}')
        model = self.build_model(pretrain=False,
                                 num_class=cfg['model_args'].get('num_class', 60)).to(self.device)
        if cfg['weights']:
            self.load_weights(model)
        else:
            self.log(f"No weights: features of the untrained encoder (random initialisation, seed {cfg['seed']})")
        model.eval()
        feats = []
        for start in self.progress(range(0, len(clips), cfg['test_batch_size']), desc='features'):
            x = torch.from_numpy(np.array(clips[start:start + cfg['test_batch_size']], dtype=np.float32))
            feats.append(model.extract_feature(self.to_stream(x.to(self.device))).float().cpu())
        out = torch.cat(feats).numpy().astype(np.float32)
        folder = os.path.dirname(os.path.abspath(cfg['output']))
        os.makedirs(folder, exist_ok=True)
        tmp = cfg['output'] + '.tmp.npy'
        np.save(tmp, out)
        os.replace(tmp, cfg['output'])
        self.log(f'Wrote features {out.shape} to {cfg["output"]}')
        return out
