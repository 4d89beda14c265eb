"""Fine-tuning BN modes and the reproducible semi-supervised subset."""
import os

import pytest
import torch

from processor.evaluation import FinetuneEvaluation
from tests.test_evaluation import eval_argv, pretrained  # noqa: F401  (fixture)


@pytest.mark.parametrize('bn_mode', ['train', 'eval'])
def test_bn_running_stats_change_only_in_train_mode(tiny_data, tmp_path, pretrained, bn_mode):  # noqa: F811
    work = tmp_path / bn_mode
    FinetuneEvaluation.from_argv(eval_argv(tiny_data, str(work), pretrained, [
        '--bn_mode', bn_mode, '--num_epoch', '1', '--eval_interval', '1'])).start()
    saved = torch.load(work / 'best_model.pt', weights_only=True)
    pre = torch.load(pretrained, weights_only=True)
    key = 'encoder_q.st_gcn_networks.3.tcn.0.running_mean'
    assert torch.equal(saved[key], pre[key]) == (bn_mode == 'eval')
    weight = 'encoder_q.st_gcn_networks.3.tcn.0.weight'   # BN affine parameters train either way
    assert not torch.equal(saved[weight], pre[weight])


def subset(tiny_data, work, extra):
    proc = FinetuneEvaluation.from_argv(eval_argv(tiny_data, str(work), None, [
        '--train_feeder_args.label_percent', '0.5', '--train_feeder', 'feeder.ntu_feeder.Feeder_semi', *extra]))
    proc.setup()
    proc.accept()   # config.yaml is written once the set-up passed
    return open(os.path.join(str(work), 'labelled_subset.txt')).read().split()


def test_semi_subset_follows_the_seed(tiny_data, tmp_path):
    a = subset(tiny_data, tmp_path / 'a', ['--seed', '3'])
    b = subset(tiny_data, tmp_path / 'b', ['--seed', '3'])
    c = subset(tiny_data, tmp_path / 'c', ['--seed', '4'])
    d = subset(tiny_data, tmp_path / 'd', ['--seed', '4', '--train_feeder_args.subset_seed', '3'])
    assert a == b == d and a != c and len(a) == 12
    assert 'subset_seed: 3' in (tmp_path / 'a' / 'config.yaml').read_text()
