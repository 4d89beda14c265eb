import json
import os
import pickle

import numpy as np
import pytest
import torch

from feeder.array_feeder import DataError, SkeletonArrayDataset, balanced_subset
from processor.evaluation import FinetuneEvaluation, LinearEvaluation, topk_accuracy
from processor.knn_retrieval import KNNRetrieval, knn_predict, mean_pairwise_cosine
from processor.pretrain import PretrainProcessor
from tests.conftest import TINY_ENCODER, pretrain_argv, write_dataset


def test_topk_accuracy_hand_made():
    scores = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    labels = torch.tensor([0, 2, 2, 1])
    acc = topk_accuracy(scores, labels, [1, 2, 5])
    assert acc[1] == pytest.approx(0.5) and acc[2] == pytest.approx(1.0) and acc[5] == 1.0


def test_knn_predict_hand_made():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.1]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    test = torch.tensor([[10.0, 0.5], [0.2, 3.0], [-2.0, 0.0]])     # scale must not matter (cosine)
    assert knn_predict(train, labels, test, k=1).tolist() == [0, 1, 2]
    # k=3 for the last query: neighbours 2 (label 2), then two of {0, 1}: cosine order decides
    assert knn_predict(train, labels, test, k=2).tolist()[:2] == [0, 1]
    assert knn_predict(train, labels, test[:1], k=5).tolist() == [0]   # 2 zeros beat 2 ones on similarity


def test_mean_pairwise_cosine_equals_the_pairwise_definition():
    feats = torch.randn(7, 5) + torch.tensor([3.0, 0, 0, 0, 0])
    units = torch.nn.functional.normalize(feats.double(), dim=1)
    pairs = [(units[i] @ units[j]).item() for i in range(7) for j in range(7) if i != j]
    assert mean_pairwise_cosine(feats) == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)
    assert mean_pairwise_cosine(torch.tensor([[1.0, 2.0]] * 4) * torch.tensor([[1.0], [2.0], [3.0], [9.0]])) == \
        pytest.approx(1.0)                              # collapsed: one direction, any length
    assert mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-1.0)
    # an all-zero feature has cosine 0 with everything (it must not pull the mean below that)
    assert mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 0.0]])) == pytest.approx(1 / 3)


def eval_argv(data, work, weights=None, extra=()):
    args = ['--work_dir', work, '--model', 'net.skeletonclr.SkeletonCLR',
            '--model_args', json.dumps({**TINY_ENCODER, 'num_class': 4}),
            '--train_feeder_args.data_path', data['train'][0], '--train_feeder_args.label_path', data['train'][1],
            '--test_feeder_args.data_path', data['val'][0], '--test_feeder_args.label_path', data['val'][1],
            '--batch_size', '8', '--test_batch_size', '5', '--num_epoch', '6', '--eval_interval', '3',
            '--num_worker', '0', '--use_gpu', 'false', '--print_log', 'false', '--base_lr', '0.5']
    if weights:
        args += ['--weights', weights, '--ignore_weights', 'encoder_q.fc', 'encoder_k', 'queue']
    return args + list(extra)


@pytest.fixture
def pretrained(tiny_data, tmp_path):
    work = str(tmp_path / 'pre')
    PretrainProcessor.from_argv(pretrain_argv(tiny_data, work, epochs=1)).start()
    return os.path.join(work, 'epoch1_model.pt')


def test_linear_cached_equals_running_encoder(tiny_data, tmp_path, pretrained):
    cached = LinearEvaluation.from_argv(eval_argv(tiny_data, str(tmp_path / 'a'), pretrained)).start()
    direct = LinearEvaluation.from_argv(eval_argv(tiny_data, str(tmp_path / 'b'), pretrained,
                                                  ['--cache_features', 'false'])).start()
    assert cached['final_epoch']['accuracy'] == pytest.approx(direct['final_epoch']['accuracy'])
    a = pickle.load(open(tmp_path / 'a' / 'test_result_final.pkl', 'rb'))
    b = pickle.load(open(tmp_path / 'b' / 'test_result_final.pkl', 'rb'))
    assert a.keys() == b.keys() and len(a) == 12
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-4)
    summary = json.load(open(tmp_path / 'a' / 'results.json'))
    assert summary['best_epoch']['top1'] >= summary['final_epoch']['accuracy']['1']
    # the encoder really was frozen: its weights equal the checkpoint's
    saved = torch.load(tmp_path / 'a' / 'best_model.pt', weights_only=True)
    pre = torch.load(pretrained, weights_only=True)
    assert torch.equal(saved['encoder_q.st_gcn_networks.9.tcn.2.weight'], pre['encoder_q.st_gcn_networks.9.tcn.2.weight'])


def test_knn_and_test_phase(tiny_data, tmp_path, pretrained):
    acc = KNNRetrieval.from_argv(eval_argv(tiny_data, str(tmp_path / 'k'), pretrained, ['--knn_k', '1', '3'])).start()
    assert set(acc) == {1, 3} and all(0 <= v <= 1 for v in acc.values())
    saved = json.load(open(tmp_path / 'k' / 'knn_results.json'))
    assert -1.0 <= saved['train_mean_pairwise_cosine'] <= 1.0
    assert 'Mean pairwise cosine of the' in open(tmp_path / 'k' / 'log.txt').read()


def test_finetune_trains_encoder_and_semi_subset(tiny_data, tmp_path, pretrained):
    work = tmp_path / 'ft'
    extra = ['--train_feeder_args.label_percent', '0.5', '--num_epoch', '2', '--eval_interval', '1']
    out = FinetuneEvaluation.from_argv(eval_argv(tiny_data, str(work), pretrained, extra)).start()
    names = open(work / 'labelled_subset.txt').read().split()
    assert len(names) == 12                      # 3 of the 6 clips of each of 4 classes
    saved = torch.load(work / 'best_model.pt', weights_only=True)
    pre = torch.load(pretrained, weights_only=True)
    key = 'encoder_q.st_gcn_networks.9.tcn.2.weight'
    assert not torch.equal(saved[key], pre[key])
    assert 'accuracy' in out['final_epoch']


def test_balanced_subset_is_reproducible():
    labels = [0] * 10 + [1] * 20 + [2] * 3
    a, b = balanced_subset(labels, 0.1, seed=3), balanced_subset(labels, 0.1, seed=3)
    assert np.array_equal(a, b) and list(a) == sorted(a)
    counts = np.bincount(np.asarray(labels)[a])
    assert counts.tolist() == [1, 2, 1]


def test_dataset_errors(tmp_path):
    data, label = write_dataset(str(tmp_path), 'x', 6)
    with pytest.raises(DataError, match='not found'):
        SkeletonArrayDataset(str(tmp_path / 'none.npy'))
    np.save(tmp_path / 'four.npy', np.zeros((2, 3, 4, 5), np.float32))
    with pytest.raises(DataError, match=r'5-D.*\(2, 3, 4, 5\)'):
        SkeletonArrayDataset(str(tmp_path / 'four.npy'))
    with open(tmp_path / 'short.pkl', 'wb') as f:
        pickle.dump((['a'], [0]), f)
    with pytest.raises(DataError, match='1 labels but the data array holds 6'):
        SkeletonArrayDataset(data, str(tmp_path / 'short.pkl'))
    bad = np.load(data)
    bad[4, 1, 2, 3, 0] = np.nan
    np.save(tmp_path / 'nan.npy', bad)
    with pytest.raises(DataError, match='clip 4 contains NaN'):
        SkeletonArrayDataset(str(tmp_path / 'nan.npy'), label)
    with pytest.raises(DataError, match=r'x_data.npy: feeder_args.corrupt_joints is 26, the clips have only 25 joints'):
        SkeletonArrayDataset(data, label, corrupt_joints=26)
    with pytest.raises(DataError, match='corrupt_joints must be a non-negative integer'):
        SkeletonArrayDataset(data, label, corrupt_joints=-1)
    ds = SkeletonArrayDataset(data, label)
    clip, y, i = ds[3]
    assert clip.shape == (3, 20, 25, 2) and clip.dtype == torch.float32 and y == 3 and i == 3


def test_test_phase_writes_scores(tiny_data, tmp_path, pretrained):
    work = tmp_path / 'lin'
    LinearEvaluation.from_argv(eval_argv(tiny_data, str(work), pretrained, ['--num_epoch', '1'])).start()
    out = LinearEvaluation.from_argv(eval_argv(tiny_data, str(tmp_path / 'test'), None, [
        '--phase', 'test', '--weights', str(work / 'best_model.pt')])).start()
    scores = pickle.load(open(tmp_path / 'test' / 'test_result.pkl', 'rb'))
    best = pickle.load(open(work / 'test_result.pkl', 'rb'))
    for name in best:
        np.testing.assert_allclose(scores[name], best[name], atol=1e-5)
    assert 1 in out['test']


def add_num_frames(data, seed=0):
    """num_frame files for the tiny splits: true lengths 5..20 of the 20-frame arrays."""
    rng = np.random.default_rng(seed)
    paths = {}
    for split in ('train', 'val'):
        n = len(np.load(data[split][0], mmap_mode='r'))
        paths[split] = os.path.join(data['dir'], f'{split}_num_frame.npy')
        np.save(paths[split], rng.integers(5, 21, n))
    return paths


def test_crop_keys_centre_crop_the_true_length_in_evaluation(tiny_data, tmp_path, pretrained):
    from feeder import crop_resize as cr
    from processor.evaluation import extract_features
    frames = add_num_frames(tiny_data)
    crop = ['--train_feeder_args.l_ratio', '[0.95]', '--test_feeder_args.l_ratio', '[0.95]',
            '--train_feeder_args.input_size', '12', '--test_feeder_args.input_size', '12',
            '--train_feeder_args.num_frame_path', frames['train'],
            '--test_feeder_args.num_frame_path', frames['val']]
    proc = LinearEvaluation.from_argv(eval_argv(tiny_data, str(tmp_path / 'c'), pretrained, crop))
    proc.setup()
    assert proc.cached   # a centre crop is deterministic: features are cached
    feats, _ = extract_features(proc, proc.model, proc.test_set)
    x = torch.from_numpy(np.load(tiny_data['val'][0]))
    lengths = torch.from_numpy(np.load(frames['val']))
    proc.model.eval()
    with torch.no_grad():
        by_hand = proc.model.extract_feature(cr.apply_crop_resize(x, cr.centre_crop(lengths, 0.95), 12))
    torch.testing.assert_close(feats, by_hand, atol=1e-5, rtol=1e-5)
    cached = LinearEvaluation.from_argv(eval_argv(tiny_data, str(tmp_path / 'd'), pretrained, crop)).start()
    direct = LinearEvaluation.from_argv(eval_argv(tiny_data, str(tmp_path / 'e'), pretrained,
                                                  crop + ['--cache_features', 'false'])).start()
    assert cached['final_epoch']['accuracy'] == pytest.approx(direct['final_epoch']['accuracy'])
    # a random crop for training switches caching off; a random crop at test time is refused
    random_train = crop + ['--train_feeder_args.l_ratio', '[0.5, 1.0]']
    proc = LinearEvaluation.from_argv(eval_argv(tiny_data, str(tmp_path / 'f'), pretrained, random_train))
    assert 0 <= proc.start()['final_epoch']['accuracy'][1] <= 1 and not proc.cached
    from torchlight.config import ConfigError
    bad = crop + ['--test_feeder_args.l_ratio', '[0.5, 1.0]']
    with pytest.raises(ConfigError, match='test_feeder_args: l_ratio'):
        LinearEvaluation.from_argv(eval_argv(tiny_data, str(tmp_path / 'g'), pretrained, bad)).setup()


def test_num_frame_file_errors_and_subset_lookup(tiny_data):
    frames = add_num_frames(tiny_data)
    data, label = tiny_data['train']
    ds = SkeletonArrayDataset(data, label, num_frame_path=frames['train'], label_percent=0.5)
    counts = np.load(frames['train'])
    assert ds.frame_counts(torch.tensor([0, 2])).tolist() == counts[ds.index[[0, 2]]].tolist()
    assert SkeletonArrayDataset(data, label).frame_counts(torch.tensor([0])) is None
    bad = os.path.join(tiny_data['dir'], 'bad.npy')
    np.save(bad, np.full(24, 21))
    with pytest.raises(DataError, match=r'bad.npy: frame counts must lie in \[1, T=20\]'):
        SkeletonArrayDataset(data, label, num_frame_path=bad)
    np.save(bad, np.ones(3, dtype=np.int64))
    with pytest.raises(DataError, match=r'expected \(24,\) integer frame counts'):
        SkeletonArrayDataset(data, label, num_frame_path=bad)
    with pytest.raises(DataError, match='num_frame file not found'):
        SkeletonArrayDataset(data, label, num_frame_path=bad + '.missing')
    with pytest.raises(DataError, match=r'feeder_args.l_ratio must be'):
        SkeletonArrayDataset(data, label, l_ratio=[0.5, 1.0, 2.0])


def test_recalibrate_bn_estimates_the_training_statistics(tiny_data, tmp_path):
    """Untrained-encoder baseline: the batch-norm statistics come from the training clips (3 equal
    batches, so the cumulative average is the mean over all clips); without it they stay 0 / 1."""
    work = str(tmp_path / 'recal')
    argv = eval_argv(tiny_data, work, extra=['--recalibrate_bn', 'true', '--test_batch_size', '8',
                                             '--num_epoch', '1', '--eval_interval', '1'])
    LinearEvaluation.from_argv(argv).start()
    state = torch.load(os.path.join(work, 'best_model.pt'), weights_only=True)
    x = torch.from_numpy(np.load(tiny_data['train'][0]))            # (N, C, T, V, M)
    n, c, t, v, m = x.shape
    per_channel = x.permute(0, 4, 3, 1, 2).reshape(n * m, v * c, t)  # ST-GCN data_bn layout
    expected = per_channel.mean(dim=(0, 2))
    torch.testing.assert_close(state['encoder_q.data_bn.running_mean'], expected, atol=1e-5, rtol=1e-5)
    assert int(state['encoder_q.data_bn.num_batches_tracked']) == 3
    assert state['encoder_q.st_gcn_networks.9.tcn.0.running_var'].sub(1).abs().max() > 1e-3

    plain = str(tmp_path / 'plain')
    LinearEvaluation.from_argv(eval_argv(tiny_data, plain, extra=['--num_epoch', '1', '--eval_interval', '1'])).start()
    state = torch.load(os.path.join(plain, 'best_model.pt'), weights_only=True)
    assert torch.equal(state['encoder_q.data_bn.running_mean'], torch.zeros(v * c))


def test_standardized_linear_folds_into_an_equal_plain_classifier():
    from processor.evaluation import StandardizedLinear
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(50, 5, generator=gen) * torch.tensor([0.01, 1.0, 30.0, 2.0, 0.0]) + 4.0
    fc = torch.nn.Linear(5, 3)
    probe = StandardizedLinear(fc, feats.mean(0), feats.std(0))
    z = (feats - probe.mean) * probe.scale
    assert z[:, :4].std(0).tolist() == pytest.approx([1.0] * 4, abs=1e-5)    # unit variance per dim
    assert probe.scale[4] == 0                       # constant on the training clips: ignored
    plain = torch.nn.Linear(5, 3)
    plain.load_state_dict(probe.folded())
    test = torch.randn(7, 5, generator=gen) * 3
    torch.testing.assert_close(plain(test), probe(test), rtol=1e-5, atol=1e-4)


def test_standardized_probe_is_blind_to_the_feature_scale():
    """The point of the option: SGD on c * x + d follows the same path as on x."""
    from processor.evaluation import StandardizedLinear
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 6, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    outputs = []
    for scale, shift in ((1.0, 0.0), (250.0, -7.0)):
        torch.manual_seed(0)
        feats = x * scale + shift
        probe = StandardizedLinear(torch.nn.Linear(6, 3), feats.mean(0), feats.std(0))
        opt = torch.optim.SGD(probe.parameters(), lr=3.0, momentum=0.9)
        for _ in range(20):
            loss = torch.nn.functional.cross_entropy(probe(feats), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        outputs.append(probe(feats).detach())
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-3, atol=1e-3)


def test_standardize_features_saves_a_reference_format_classifier(tiny_data, tmp_path, pretrained):
    work = tmp_path / 'std'
    # the untrained encoder (default init, BN statistics of the data): features that vary
    varied = ['--model_args.init_weights', 'false', '--recalibrate_bn', 'true']
    summary = LinearEvaluation.from_argv(eval_argv(tiny_data, str(work), None,
                                                   ['--standardize_features', 'true'] + varied)).start()
    assert 0 <= summary['final_epoch']['accuracy'][1] <= 1
    saved = torch.load(work / 'best_model.pt', weights_only=True)
    assert sorted(k for k in saved if k.startswith('encoder_q.fc.')) == ['encoder_q.fc.bias', 'encoder_q.fc.weight']
    # the saved plain classifier on the raw features gives the scores the run wrote
    LinearEvaluation.from_argv(eval_argv(tiny_data, str(tmp_path / 'test'), None, [
        '--phase', 'test', '--weights', str(work / 'best_model.pt')] + varied)).start()
    scores = pickle.load(open(tmp_path / 'test' / 'test_result.pkl', 'rb'))
    best = pickle.load(open(work / 'test_result.pkl', 'rb'))
    assert len(best) == 12
    for name in best:
        np.testing.assert_allclose(scores[name], best[name], rtol=1e-4, atol=1e-4)
    log = open(work / 'log.txt').read()
    assert 'Classifier trained on standardised features (8 dims' in log and 'constant dims' not in log


def test_standardize_features_is_refused_for_fine_tuning(tiny_data, tmp_path, pretrained, capsys):
    import main
    argv = eval_argv(tiny_data, str(tmp_path / 'ft'), pretrained, ['--standardize_features', 'true'])
    assert main.main(['finetune_evaluation'] + argv) == 2
    assert 'standardize_features is for linear evaluation' in capsys.readouterr().err


def test_standardized_probe_cached_equals_running_encoder(tiny_data, tmp_path):
    """Without caching the wrapped classifier runs inside the encoder's forward: the same result."""
    extra = ['--model_args.init_weights', 'false', '--recalibrate_bn', 'true', '--standardize_features', 'true']
    runs = [LinearEvaluation.from_argv(eval_argv(tiny_data, str(tmp_path / name), None, extra + more)).start()
            for name, more in (('a', []), ('b', ['--cache_features', 'false']))]
    assert runs[0]['final_epoch']['accuracy'] == pytest.approx(runs[1]['final_epoch']['accuracy'])
    a = pickle.load(open(tmp_path / 'a' / 'test_result_final.pkl', 'rb'))
    b = pickle.load(open(tmp_path / 'b' / 'test_result_final.pkl', 'rb'))
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-4)
