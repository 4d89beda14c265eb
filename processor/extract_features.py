"""extract_features: pooled (N, D) float32 features of the query encoder for clips in a .npy file.

Any evaluation config (linear, fine-tuning, k-NN) works as --config. Without `weights` the
features are those of the untrained encoder (initialised from `seed`): the baseline that
self-supervision has to beat."""
import os

import numpy as np
import torch

from processor.base import OVERWRITE_OPTION, Processor
from processor.evaluation import FINETUNE_OPTIONS
from processor.knn_retrieval import KNN_OPTIONS
from torchlight.config import ConfigError, Opt
from torchlight.io import DataFileError, atomic_write, load_npy
from torchlight.registry import TASKS


@TASKS.register('extract_features')
class ExtractFeatures(Processor):
    description = 'write the pooled features of the (query) encoder for clips (N, C, T, V, M) in a .npy file'
    options = {
        **FINETUNE_OPTIONS, **KNN_OPTIONS,   # evaluation and k-NN configs are accepted as they are
        'input': Opt(None, str, 'clips as a .npy array (N, C, T, V, M)'),
        'output': Opt(None, str, 'where to write the (N, D) float32 features (.npy)'),
        'test_batch_size': Opt(256, int, 'batch size'),
        'overwrite': OVERWRITE_OPTION,
    }

    @torch.no_grad()
    def start(self):
        cfg = self.cfg
        for key in ('input', 'output'):
            if not cfg[key]:
                raise ConfigError(f"extract_features needs --{key}")
        if os.path.exists(cfg['output']) and not cfg['overwrite']:
            raise ConfigError(f'output {cfg["output"]} exists; pass --overwrite true to replace it')
        clips = load_npy(cfg['input'], mmap=True, what='input')
        if clips.ndim != 5 or len(clips) == 0:
            raise ConfigError(f'{cfg["input"]}: expected clips (N, C, T, V, M) with N >= 1, got shape {clips.shape}')
        model = self.build_model(pretrain=False,
                                 num_class=cfg['model_args'].get('num_class', 60)).to(self.device)
        if cfg['weights']:
            self.load_weights(model)
        else:
            self.log(f"No weights: features of the untrained encoder (random initialisation, seed {cfg['seed']})")
        self.check_fits(model.encoder_q, self.read_clips(clips, 0, 2), lambda x: [self.to_stream(x)],
                        f'input {cfg["input"]}')
        self.accept()
        model.eval()
        feats = []
        for start in self.progress(range(0, len(clips), cfg['test_batch_size']), desc='features'):
            x = self.read_clips(clips, start, cfg['test_batch_size'])
            feats.append(model.extract_feature(self.to_stream(x.to(self.device))).float().cpu())
        out = torch.cat(feats).numpy().astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        if len(bad):   # finite clips, non-finite features: the weights are at fault
            raise DataFileError(f'{cfg["weights"]}: the features of {len(bad)} clip(s) (first: clip {bad[0]}) '
                                'are NaN or inf; the weights are not finite')
        atomic_write(cfg['output'], lambda f: np.save(f, out))
        self.log(f'Wrote features {out.shape} to {cfg["output"]}')
        return out

    def read_clips(self, clips, start, count):
        """float32 clips [start, start + count) of the input, which must be finite."""
        x = np.array(clips[start:start + count], dtype=np.float32)
        finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
        if not finite.all():
            raise DataFileError(f'input {self.cfg["input"]}: clip {start + int(np.flatnonzero(~finite)[0])} '
                                'contains NaN or inf values')
        return torch.from_numpy(x)
