"""predict: classify new clips with a linear-evaluated or fine-tuned model.

    python main.py predict --config config/demo/linear_eval_skeletonclr_motion.yaml \
        --weights work_dir/demo/skeletonclr/linear/best_model.pt --input clips.npy

The clips go through what evaluation applies to the test split (centre crop for ISC/HiCo data,
then the configured stream) and the classifier; the top-k classes with their softmax
probabilities are written to `<work_dir>/predictions.csv` and `predictions.json` and printed.
The evaluation config of the model is the natural `--config`: its data, model and stream keys
describe the model; its `ignore_weights` entries that would drop the classifier are not used.
"""
import csv
import os

import numpy as np
import torch
import torch.nn.functional as F

from feeder.layouts import get_layout
from feeder.views import eval_view, make_views
from processor.base import Processor
from processor.evaluation import CLASSIFIER_PREFIX, FINETUNE_OPTIONS
from torchlight.config import ConfigError, Opt
from torchlight.io import (WeightsError, pick_container, read_checkpoint, state_dict_of, strip_module,
                           write_json, write_pickle)
from torchlight.registry import TASKS

INPUT_PREPROCESS = ('none', 'aimclr')


@TASKS.register('predict')
class Predict(Processor):
    description = ('top-k classes with probabilities for new clips (.npy or a folder of sequence files), '
                   'from a linear-evaluated or fine-tuned model')
    options = {
        **FINETUNE_OPTIONS,
        'input': Opt(None, str, 'clips: a .npy (N, C, T, V, M) array, or a folder of per-sequence .npy/.csv '
                                'files (the tools/custom_gendata.py format)'),
        'input_label': Opt(None, str, 'optional (names, labels) pickle of a .npy input: sample names '
                                      '(and accuracy when labelled)'),
        'input_preprocess': Opt('none', str, "none | aimclr: the 50-frame AimCLR normalisation "
                                             "(tools/aimclr_preprocess.py), when the input is raw and the model's data was preprocessed"),
        'input_frames': Opt(None, int, 'frames per clip of a folder input (default: T of the test data, else 50)'),
        'predict_k': Opt(5, int, 'classes listed per clip'),
    }

    def validate(self):
        super().validate()
        if self.cfg['input_preprocess'] not in INPUT_PREPROCESS:
            raise ConfigError(f"option 'input_preprocess' must be one of {INPUT_PREPROCESS}, "
                              f"got {self.cfg['input_preprocess']!r}")
        if self.cfg['predict_k'] < 1:
            raise ConfigError(f"option 'predict_k' must be >= 1, got {self.cfg['predict_k']}")

    # ------------------------------------------------------------------ inputs
    def test_shape(self):
        """(C, T, V, M) of the model's test data when the config names a readable file."""
        path = self.cfg['test_feeder_args'].get('data_path')
        if path and os.path.isfile(path):
            return np.load(path, mmap_mode='r').shape[1:]
        return None

    def read_input(self):
        """clips (N, C, T, V, M) float32 and their sample names (and labels, or None)."""
        path = self.cfg['input']
        if not path:
            raise ConfigError('predict needs --input (a .npy of clips or a folder of sequence files)')
        if os.path.isdir(path):
            return self.read_folder(path)
        if not os.path.isfile(path):
            raise ConfigError(f'input not found: {path}')
        try:
            clips = np.load(path, mmap_mode='r')
        except Exception as err:
            raise ConfigError(f'cannot read {path} as a .npy array: {err}') from None
        if clips.ndim != 5:
            raise ConfigError(f'{path}: expected clips of shape (N, C, T, V, M), got {clips.shape}')
        names, labels = [f'{os.path.splitext(os.path.basename(path))[0]}_{i:06d}' for i in range(len(clips))], None
        if self.cfg['input_label']:
            from feeder.array_feeder import read_labels
            names, labels = read_labels(self.cfg['input_label'], expected=len(clips))
        return np.array(clips, dtype=np.float32), names, labels

    def read_folder(self, folder):
        from tools import custom_gendata, data_utils as du
        shape = self.test_shape()
        channels, frames, joints, persons = shape if shape else (3, 50, None, 2)
        joints = joints or (get_layout(self.layout).num_joints if self.layout else None)
        if joints is None:
            raise ConfigError('a folder input needs the joint count: set test_feeder_args.data_path '
                              'or model_args.graph_args.layout')
        frames = self.cfg['input_frames'] or frames
        files = sorted(f for f in os.listdir(folder) if f.endswith(('.npy', '.csv')))
        if not files:
            raise ConfigError(f'{folder}: no .npy or .csv sequence files')
        sequences = []
        for name in files:
            try:
                sequences.append(custom_gendata.read_sequence(os.path.join(folder, name), joints, channels, persons))
            except du.SAMPLE_ERRORS as err:
                raise ConfigError(f'{os.path.join(folder, name)}: {err}') from None
        length = max(len(s) for s in sequences) if self.cfg['input_preprocess'] == 'aimclr' else frames
        fixed, _ = du.fit_sequences(sequences, length, 'pad')          # (N, T, M, V, C)
        clips = np.ascontiguousarray(fixed.transpose(0, 4, 1, 3, 2), dtype=np.float32)
        return clips, [os.path.splitext(f)[0] for f in files], None

    def preprocess(self, clips):
        if self.cfg['input_preprocess'] == 'aimclr':
            from tools.aimclr_preprocess import preprocess_batch
            frames = self.cfg['input_frames'] or (self.test_shape() or (None, 50))[1]
            clips = preprocess_batch(clips, frames)
        return clips

    def check_layout(self, clips):
        """The clips must have the joints, channels and persons the model was built for."""
        v = clips.shape[3]
        try:
            get_layout(self.layout, v)
        except ConfigError as err:
            raise ConfigError(f"{self.cfg['input']}: {err}") from None
        shape = self.test_shape()
        if shape and (shape[0], shape[2], shape[3]) != (clips.shape[1], clips.shape[3], clips.shape[4]):
            raise ConfigError(f"{self.cfg['input']}: clips (N, C, T, V, M) = {clips.shape} do not match the "
                              f"model's test data (C, V, M) = {(shape[0], shape[2], shape[3])}")

    # ------------------------------------------------------------------ model
    def classifier_classes(self):
        """Number of classes of the checkpoint's classifier; a clear error when it has none."""
        path = self.cfg['weights']
        if not path:
            raise ConfigError('predict needs --weights: the best_model.pt of linear_evaluation or '
                              'finetune_evaluation')
        state = state_dict_of(pick_container(read_checkpoint(path), self.cfg['weights_container'], path), path)
        keys = {strip_module(k): v for k, v in state.items()}
        weight = keys.get(CLASSIFIER_PREFIX + 'weight')
        if weight is None or weight.dim() != 2 or any(k.startswith(CLASSIFIER_PREFIX + '0.') for k in keys):
            raise WeightsError(f'{path} has no classifier ({CLASSIFIER_PREFIX}weight of shape (classes, features)): '
                               'pass the best_model.pt of linear_evaluation or finetune_evaluation, '
                               'not a pretraining checkpoint')
        return weight.shape[0]

    def build(self):
        num_class = self.classifier_classes()
        model = self.build_model(pretrain=False, num_class=num_class).to(self.device)
        # the evaluation config drops the pretraining head; here the classifier is the point
        self.cfg['ignore_weights'] = [p for p in self.cfg['ignore_weights']
                                      if not CLASSIFIER_PREFIX.startswith(p) and not p.startswith(CLASSIFIER_PREFIX)]
        missing = [k for k in self.load_weights(model) if k.startswith('encoder_q.')]
        if missing:
            raise WeightsError(f"{self.cfg['weights']} lacks {len(missing)} encoder tensors (e.g. {missing[0]}): "
                               'it was not written for this model config')
        return model.eval(), num_class

    # ------------------------------------------------------------------ run
    @torch.no_grad()
    def start(self):
        cfg = self.cfg
        self.check_outputs('predictions.csv', 'predictions.json', 'predictions_scores.pkl')
        model, num_class = self.build()
        clips, names, labels = self.read_input()
        clips = self.preprocess(clips)
        self.check_layout(clips)
        self.accept()
        kind = self.eval_kind()
        scores = []
        for start in range(0, len(clips), cfg['test_batch_size']):
            x = torch.from_numpy(clips[start:start + cfg['test_batch_size']]).to(self.device)
            if kind != 'raw':
                x = make_views(x, (kind,), None, self.view_args)[0]
            scores.append(model(self.to_stream(x)).float().cpu())
        scores = torch.cat(scores)
        class_names = self.class_names(num_class)
        rows = self.rank_rows(scores, names, class_names)
        self.write(rows, scores, names)
        self.print_table(rows)
        if labels is not None:
            top1 = (scores.argmax(1) == torch.tensor(labels)).float().mean().item()
            self.log(f'top-1 against {cfg["input_label"]}: {100 * top1:.2f}% ({len(labels)} clips)')
        return {'names': names, 'scores': scores, 'rows': rows}

    def eval_kind(self):
        """The test split's evaluation view (centre crop for ISC/HiCo data, else the raw clip)."""
        args = self.cfg['test_feeder_args']
        self.view_args = {k: args[k] for k in ('l_ratio', 'input_size') if k in args}
        if self.layout is not None:
            self.view_args['layout'] = self.layout
        try:
            return eval_view(self.view_args, train=False)
        except ValueError as err:
            raise ConfigError(f'test_feeder_args: {err}') from None

    def rank_rows(self, scores, names, class_names):
        k = min(self.cfg['predict_k'], scores.shape[1])
        probs = F.softmax(scores, dim=1)
        top_p, top_c = probs.topk(k, dim=1)
        return [{'sample': name,
                 'predictions': [{'rank': r + 1, 'class': int(c), 'name': class_names[int(c)], 'probability': float(p)}
                                 for r, (p, c) in enumerate(zip(top_p[i], top_c[i]))]}
                for i, name in enumerate(names)]

    def write(self, rows, scores, names):
        if not self.is_main:
            return
        base = os.path.join(self.work_dir, 'predictions')
        write_json(base + '.json', {'weights': self.cfg['weights'], 'input': self.cfg['input'], 'clips': rows})
        with open(base + '.csv.tmp', 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(['sample', 'rank', 'class', 'name', 'probability'])
            for row in rows:
                for p in row['predictions']:
                    writer.writerow([row['sample'], p['rank'], p['class'], p['name'], f"{p['probability']:.6f}"])
        os.replace(base + '.csv.tmp', base + '.csv')
        # the test_result.pkl format: {name: logits}
        write_pickle(base + '_scores.pkl', {n: s for n, s in zip(names, scores.numpy().astype(np.float32))})
        self.log(f'Wrote {base}.csv, {base}.json and {base}_scores.pkl ({len(rows)} clips)')

    def print_table(self, rows, shown=20):
        k = min(3, len(rows[0]['predictions'])) if rows else 0
        width = min(32, max([len(r['sample']) for r in rows[:shown]] + [6]))
        self.log(f"{'sample':<{width}}  top-{k} classes with probability")
        for row in rows[:shown]:
            top = '  '.join(f"{p['name'][:24]} {100 * p['probability']:5.1f}%" for p in row['predictions'][:k])
            self.log(f"{row['sample'][:width]:<{width}}  {top}")
        if len(rows) > shown:
            self.log(f'... {len(rows) - shown} more clips in predictions.csv')
