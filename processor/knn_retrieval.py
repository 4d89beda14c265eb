"""k-NN retrieval: cosine similarity of L2-normalised pooled features, test -> train."""
import os

import torch
import torch.nn.functional as F

from processor.base import BASE_OPTIONS, OVERWRITE_OPTION, Processor
from processor.confusion import write_report
from processor.evaluation import RECALIBRATE_BN_OPTION, check_inputs_fit, extract_features, recalibrate_bn
from torchlight.config import ConfigError, Opt
from torchlight.io import write_json
from torchlight.registry import TASKS


def knn_predict(train_feats, train_labels, test_feats, k, chunk=1024):
    """Labels predicted by the k most cosine-similar training features. Votes are counted per
    class; ties go to the class whose voters are more similar in total."""
    train = F.normalize(train_feats.float(), dim=1)
    test = F.normalize(test_feats.float(), dim=1)
    num_class = int(train_labels.max()) + 1
    predictions = []
    for start in range(0, len(test), chunk):
        sims, idx = (test[start:start + chunk] @ train.T).topk(min(k, len(train)), dim=1)
        voters = F.one_hot(train_labels[idx], num_class).float()        # (n, k, classes)
        votes = voters.sum(1) + 1e-6 * (voters * sims[..., None]).sum(1)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def mean_pairwise_cosine(feats):
    """Mean cosine similarity over all pairs of distinct rows, in O(N d): with unit rows u_i,
    sum_{i != j} u_i . u_j = |sum_i u_i|^2 - sum_i |u_i|^2 (an all-zero row counts as cosine 0).
    Near 1: one component common to all clips dominates the features (a collapsed encoder, or
    one whose differences between clips are small against a shared offset)."""
    units = F.normalize(feats.double(), dim=1)
    n = len(units)
    if n < 2:
        return float('nan')
    return ((units.sum(0).square().sum() - units.square().sum()) / (n * (n - 1))).item()


KNN_OPTIONS = {
    'knn_k': Opt([1], (list, int), 'numbers of neighbours to evaluate (one accuracy each)'),
}


@TASKS.register('knn_retrieval')
class KNNRetrieval(Processor):
    description = 'k-NN retrieval accuracy of the frozen encoder (cosine, L2-normalised features)'
    options = {
        **BASE_OPTIONS, **KNN_OPTIONS,
        'test_batch_size': Opt(256, int, 'feature extraction batch size'),
        'recalibrate_bn': RECALIBRATE_BN_OPTION,
        'overwrite': OVERWRITE_OPTION,
    }

    def start(self):
        cfg = self.cfg
        if any(k < 1 for k in cfg['knn_k']):
            raise ConfigError(f"option 'knn_k' must hold positive integers, got {cfg['knn_k']}")
        self.check_outputs('knn_results.json')
        train_set, test_set = self.build_dataset('train'), self.build_dataset('test')
        model = self.build_model(pretrain=False, num_class=cfg['model_args'].get('num_class', 1)).to(self.device)
        self.load_weights(model)
        check_inputs_fit(self, model, train_set, 'train')
        check_inputs_fit(self, model, test_set, 'test')
        self.accept()
        if cfg['recalibrate_bn']:
            recalibrate_bn(self, model, train_set)
        train_feats, train_labels = extract_features(self, model, train_set)
        test_feats, test_labels = extract_features(self, model, test_set)
        result, details = {}, {'per_class': {}, 'confusion_matrix': {}}
        spread = mean_pairwise_cosine(train_feats)
        self.log(f'Mean pairwise cosine of the {len(train_set)} training features: {spread:.4f} '
                 f'(1 = every clip embeds alike)')
        details['train_mean_pairwise_cosine'] = spread
        num_class = max(int(train_labels.max()), int(test_labels.max())) + 1
        names = self.class_names(num_class)
        for k in cfg['knn_k']:
            pred = knn_predict(train_feats, train_labels, test_feats, k)
            result[k] = (pred == test_labels).float().mean().item()
            self.log(f'k-NN (k={k}) top-1: {100 * result[k]:.2f}% '
                     f'({len(test_set)} queries, {len(train_set)} references)')
            rows, counts = write_report(self, test_labels.numpy(), pred.numpy(), num_class, names,
                                        f'confusion_k{k}', f'k-NN (k={k})')
            details['per_class'][f'k={k}'] = rows
            details['confusion_matrix'][f'k={k}'] = counts.tolist()
        if self.is_main:
            write_json(os.path.join(self.work_dir, 'knn_results.json'),
                       {**{f'k={k}': v for k, v in result.items()}, **details})
        return result
