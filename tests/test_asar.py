"""ASAR (reference doc 5): relabeling targets, closed-form gradient embedding, k-means,
tiering/selection against a literal transcription of the reference loop, queue writes,
configs and a tiny engine run across the active-sampling epoch."""
import glob
import math
import os

import pytest
import torch
import torch.nn.functional as F

import main
import net.asar as asar_module
from net.asar import ASAR, candidate_gradients, kmeans, selection, soft_targets, tiers
from tests.conftest import ROOT, TINY_ENCODER, pretrain_argv
from torchlight.config import build_config, check_kwargs
from torchlight.registry import ENCODERS, FEEDERS, MODELS, TASKS


def tiny_asar(**kw):
    torch.manual_seed(0)
    return ASAR(**{**TINY_ENCODER, 'feature_dim': 4, 'queue_size': 20, 'momentum': 0.9, **kw})


# ----------------------------------------------------------------------------- relabeling
def test_soft_targets_on_hand_made_queue():
    # 3-d keys, 6 queue entries: for key e0 the two nearest entries are columns 1 and 4.
    queue = F.normalize(torch.tensor([[0.1, 0.9, -1.0, 0.0, 0.8, 0.3],
                                      [1.0, 0.1, 0.0, 1.0, 0.5, 0.0],
                                      [0.0, 0.0, 0.2, 0.2, 0.0, 1.0]], dtype=torch.float64), dim=0)
    k = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    n, tau = 2, 0.5
    targets, c = soft_targets(k, queue, n, tau)
    assert targets.shape == (2, 7)
    assert torch.allclose(targets.sum(1), torch.ones(2, dtype=torch.float64))
    for i, expected_neighbours in enumerate(([1, 4], [5, 3])):
        s = [float(k[i] @ queue[:, j]) / tau for j in range(6)]
        z = sum(math.exp(v) for v in s)
        entropy = -sum(math.exp(v) / z * math.log(math.exp(v) / z) for v in s)
        conf = 1 - entropy / math.log(6)
        assert float(c[i]) == pytest.approx(conf, abs=1e-12)
        assert float(targets[i, 0]) == pytest.approx(1 / (1 + n * conf), abs=1e-12)
        for j in range(6):
            want = conf / (1 + n * conf) if j in expected_neighbours else 0.0
            assert float(targets[i, 1 + j]) == pytest.approx(want, abs=1e-12)


def test_uniform_similarities_give_zero_confidence():
    queue = torch.zeros(3, 8)
    targets, c = soft_targets(F.normalize(torch.ones(2, 3), dim=1), queue, 5, 0.07)
    assert torch.allclose(c, torch.zeros(2), atol=1e-6)
    assert torch.allclose(targets[:, 0], torch.ones(2), atol=1e-6)


def test_loss_is_soft_cross_entropy_with_reference_weights():
    m = tiny_asar(neighbours=3, tau_q=0.1, tau_k=0.2)
    x = torch.randn(4, 3, 12, 25, 2)
    queue = m.queue.clone()
    torch.manual_seed(1)
    out = m(x, x.flip(2), epoch=1)
    torch.manual_seed(1)
    q = F.normalize(m.encoder_q(x), dim=1)          # EMA came first, so encoders are as now
    k = F.normalize(m.encoder_k(x.flip(2)), dim=1)
    s = k @ queue / 0.2
    log_p = F.log_softmax(s, 1)
    c = 1 + (log_p.exp() * log_p).sum(1) / math.log(20)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], 1) / 0.1
    log_q = F.log_softmax(logits, 1)
    neighbours = log_q[:, 1:].gather(1, s.topk(3, dim=1).indices).sum(1)
    expected = (-(log_q[:, 0] + c * neighbours) / (1 + 3 * c)).mean()
    assert torch.allclose(out['loss'], expected, atol=1e-5)
    assert int(m.queue_ptr) == 4 and torch.allclose(m.queue[:, :4], k.T, atol=1e-6)


# ----------------------------------------------------------------------------- gradient embedding
def test_closed_form_gradient_equals_autograd():
    gen = torch.Generator().manual_seed(3)
    q = F.normalize(torch.randn(6, 5, generator=gen, dtype=torch.float64), dim=1)
    z = F.normalize(torch.randn(12, 5, generator=gen, dtype=torch.float64), dim=1).requires_grad_()
    loss = F.cross_entropy(q @ z.T, torch.arange(6))
    (expected,) = torch.autograd.grad(loss, z)
    assert torch.allclose(candidate_gradients(q, z.detach()), expected, atol=1e-12)


# ----------------------------------------------------------------------------- k-means
def test_kmeans_is_deterministic_and_separates_blobs():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = (centres[:, None] + 0.1 * torch.randn(3, 10, 2, generator=gen)).reshape(30, 2)
    a, _ = kmeans(x, 3, torch.Generator().manual_seed(5))
    b, _ = kmeans(x, 3, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    for blob in a.view(3, 10):            # points of a blob share one label, blobs differ
        assert (blob == blob[0]).all()
    assert len(set(a.view(3, 10)[:, 0].tolist())) == 3


@pytest.mark.parametrize('empty, expected', [('keep', [1.0, 1.0]), ('zero', [0.0, 0.0])])
def test_kmeans_empty_cluster(empty, expected):
    # Both initial centroids sit on the same point: the second cluster gets no member.
    x = torch.tensor([[1.0, 1.0], [1.0, 1.0], [5.0, 5.0]])
    labels, centroids = kmeans(x, 2, init=[0, 1], max_iter=1, empty=empty)
    assert labels.tolist() == [0, 0, 0]
    assert torch.isfinite(centroids).all()
    assert centroids[1].tolist() == expected
    labels, centroids = kmeans(x, 2, init=[0, 1], empty=empty)   # then it recovers
    assert labels.tolist() == [1, 1, 0]


# ----------------------------------------------------------------------------- tiering / selection
def reference_selection(labels, bs):
    """The reference counter loop, transcribed literally (slow)."""
    out, count = labels.unique(return_counts=True)
    count = count.clone()
    ls1, ls2, ls3, ls4 = [], [], [], []
    for j, value in enumerate(labels):
        where = torch.nonzero(out == value.item()).squeeze()
        if count[where] == 1:
            ls1.append(j)
        elif count[where] == 2:
            ls2.append(j)
            count[where] -= 1
        elif count[where] == 3:
            ls3.append(j)
            count[where] -= 1
        else:
            ls4.append(j)
            count[where] -= 1
    if len(ls1) < bs:
        if len(ls1) + len(ls2) >= bs:
            ls = (ls1 + ls2)[:bs]
        elif len(ls1) + len(ls2) + len(ls3) >= bs:
            ls = (ls1 + ls2 + ls3)[:bs]
        else:
            ls = ls1 + ls2 + ls3 + ls4
    else:
        ls = ls1
    return (ls1, ls2, ls3, ls4), ls


def tier_lists(labels, n_clusters):
    t = tiers(labels, n_clusters)
    return tuple(torch.nonzero(t == i).flatten().tolist() for i in (1, 2, 3, 4))


def test_tiering_hand_made_assignment():
    # clusters 0..4 of sizes 1..5, interleaved; clusters 5..7 are empty (N = 8, 2N = 16 with one extra)
    labels = torch.tensor([4, 3, 2, 4, 1, 3, 4, 0, 2, 4, 3, 1, 4, 2, 3])
    t = tiers(labels, 8)
    assert tier_lists(labels, 8) == reference_selection(labels, 8)[0]
    for c in range(5):                    # exactly one tier-1 member per cluster: its last index
        members = torch.nonzero(labels == c).flatten()
        assert t[members[-1]] == 1 and (t[members[:-1]] != 1).all()
        assert t[members].tolist() == [min(len(members) - r, 4) for r in range(len(members))]
    assert (t == 1).sum() == 5


@pytest.mark.parametrize('seed', range(20))
def test_tiering_and_selection_match_reference_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(2, 12, (1,), generator=gen))
    spread = int(torch.randint(1, n + 1, (1,), generator=gen))    # few used clusters -> big ones
    labels = torch.randint(0, spread, (2 * n,), generator=gen)
    ref_tiers, ref_ls = reference_selection(labels, n)
    assert tier_lists(labels, n) == ref_tiers
    assert selection(labels, n, n).tolist() == ref_ls


# ----------------------------------------------------------------------------- queue writes
def test_write_queue_wraps_and_caps_at_k():
    m = tiny_asar()                       # K = 20, D = 4
    m.queue_ptr[0] = 16
    before = m.queue.clone()
    rows = torch.arange(16 * 4, dtype=torch.float32).view(16, 4)
    m.write_queue(rows)
    index = [16, 17, 18, 19] + list(range(12))
    assert torch.equal(m.queue[:, index], rows.T) and int(m.queue_ptr) == 12
    assert torch.equal(m.queue[:, 12:16], before[:, 12:16])
    m.write_queue(torch.ones(25, 4) * torch.arange(25.0)[:, None])      # more rows than K
    assert int(m.queue_ptr) == 12
    assert m.queue[0, 12] == 5 and m.queue[0, 11] == 24                  # the last K rows, in order


def test_active_sampling_all_candidates_near_queue_end(monkeypatch):
    m = tiny_asar()                       # K = 20; N = 8, 2N = 16 candidates
    m.queue_ptr[0] = 16
    q, k = F.normalize(torch.randn(8, 4), dim=1), F.normalize(torch.randn(8, 4), dim=1)
    z = m.candidates(k)
    assert torch.equal(z[8:12], m.queue[:, 16:20].T) and torch.equal(z[12:], m.queue[:, :4].T)
    # two clusters of 8: tiers 1-3 hold 6 < N rows, so all 16 are written (tier order)
    fake = torch.tensor([0, 1] * 8)
    monkeypatch.setattr(asar_module, 'kmeans', lambda *a, **kw: (fake, None))
    written = m.active_sample(q, k, epoch=200)
    assert written == 16 and int(m.queue_ptr) == 12
    order = selection(fake, 8, 8)
    assert order.tolist() == [14, 15, 12, 13, 10, 11, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    index = [16, 17, 18, 19] + list(range(12))
    assert torch.allclose(m.queue[:, index], z[order].T)


def test_active_sampling_writes_n_rows_in_normal_case():
    m = tiny_asar(queue_size=40, active_epoch=0)
    x = torch.randn(8, 3, 12, 25, 2)
    for step in range(6):
        ptr = int(m.queue_ptr)
        out = m(x, x.flip(2), epoch=1)
        assert torch.isfinite(out['loss'])
        assert int(m.queue_ptr) == (ptr + int(out['enqueued'])) % 40
        assert out['enqueued'] in (8.0, 16.0)


def test_asar_compat_untransposed_block():
    m = tiny_asar(asar_compat=True)       # D = 4
    k = F.normalize(torch.randn(4, 4), dim=1)
    m.queue_ptr[0] = 2
    z = m.candidates(k)
    assert torch.equal(z[4:], m.queue[:, 2:6])    # rows are feature dimensions (reference defect)
    with pytest.raises(ValueError, match='N equals feature_dim'):
        m.candidates(torch.randn(3, 4))


def test_kmeans_seed_depends_on_epoch_and_step():
    m = tiny_asar()
    draws = [torch.randperm(10, generator=m.kmeans_generator(e)).tolist() for e in (3, 3, 4, 3)]
    assert draws[0] != draws[1] and draws[0] == draws[3]   # a new epoch restarts the step count
    m2 = tiny_asar()
    assert torch.randperm(10, generator=m2.kmeans_generator(3)).tolist() == draws[0]


def test_checkpoint_keys_and_eval_wrapper():
    m = tiny_asar()
    assert m.labels.shape == (20,) and (m.labels == -1).all() and m.labels.dtype == torch.long
    keys = set(m.state_dict())
    assert {'queue', 'queue_ptr', 'labels'} <= keys
    e = ASAR(**TINY_ENCODER, pretrain=False, num_class=5)
    assert not hasattr(e, 'labels') and e(torch.randn(2, 3, 12, 25, 2)).shape == (2, 5)


# ----------------------------------------------------------------------------- configs
ASAR_CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'config', '*', '*', '*asar*.yaml')))


def test_all_asar_configs_present():
    names = {os.path.relpath(p, os.path.join(ROOT, 'config')) for p in ASAR_CONFIGS}
    for ds, splits in (('ntu60', ('xsub', 'xview')), ('ntu120', ('xsub', 'xset')),
                       ('pkummd', ('pkup1cs', 'pkup2cs'))):
        for split in splits:
            assert f'{ds}/pretext/pretext_asar_{split}.yaml' in names
            assert f'{ds}/linear_eval/linear_eval_asar_{split}.yaml' in names


@pytest.mark.parametrize('path', ASAR_CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_asar_config_resolves(path):
    pretext = os.sep + 'pretext' + os.sep in path
    task = TASKS.get('pretrain_asar' if pretext else 'linear_evaluation')
    cfg = build_config(task.options, ['--config', path])
    model_cls = MODELS.get(cfg['model'])
    assert model_cls is ASAR
    encoder_cls = ENCODERS.get(cfg['model_args']['base_encoder'])
    check_kwargs(cfg['model_args'], 'model_args', model_cls, encoder_cls)
    FEEDERS.get(cfg['train_feeder'])
    assert cfg['model_args']['pretrain'] is pretext
    if pretext:
        assert cfg['train_feeder'] == 'feeder.ntu_feeder.Feeder_triple'
        assert cfg['model_args']['queue_size'] == 32768 and cfg['batch_size'] == 128
        assert cfg['step'] == [250] and cfg['num_epoch'] == 300 and cfg['mining_epoch'] == 0
    else:
        FEEDERS.get(cfg['test_feeder'])
        assert cfg['ignore_weights'] == ['encoder_q.fc', 'encoder_k', 'queue', 'predict_q', 'labels']
        want = 60 if 'ntu60' in path else 120 if 'ntu120' in path else 51
        assert cfg['model_args']['num_class'] == want
        assert cfg['base_lr'] == 3.0 and cfg['step'] == [80] and cfg['weight_decay'] == 0.0


def test_reference_task_alias():
    assert TASKS.get('processor.pretrain_asar.ASAR_Processor') is TASKS.get('pretrain_asar')
    assert TASKS.get('pretrain_asar').options['model'].default == 'asar'


# ----------------------------------------------------------------------------- engine run
def asar_argv(data, work_dir, epochs, extra=()):
    model_args = {'queue_size': 40, 'active_epoch': 1, 'kmeans_iters': 20}
    return pretrain_argv(data, work_dir, epochs, model='net.asar.ASAR', model_args=model_args,
                         extra=['--train_feeder', 'feeder.ntu_feeder.Feeder_triple',
                                '--mining_epoch', '0', '--topk', '1', *extra])


def test_tiny_run_crosses_active_sampling_epoch(tiny_data, tmp_path):
    work = str(tmp_path / 'w')
    proc = TASKS.get('pretrain_asar').from_argv(asar_argv(tiny_data, work, 2))
    history = proc.start()               # 24 clips, batch 8: 3 steps per epoch
    assert math.isfinite(history['loss']) and 0 <= history['confidence'] <= 1
    first = torch.load(os.path.join(work, 'epoch1_model.pt'), weights_only=True)
    second = torch.load(os.path.join(work, 'epoch2_model.pt'), weights_only=True)
    assert int(first['queue_ptr']) == 24                      # epoch 1: plain enqueue of 3 x 8
    written = round(history['enqueued'] * 3)                  # epoch 2: active sampling
    assert 24 <= written <= 48 and int(second['queue_ptr']) == (24 + written) % 40
    assert (second['labels'] == -1).all() and not torch.equal(first['queue'], second['queue'])
    assert proc.model.kmeans_seed == 0
    # linear evaluation of the ASAR checkpoint with the reference ignore list
    argv = ['--work_dir', str(tmp_path / 'le'), '--model', 'net.asar.ASAR',
            '--model_args', str({**TINY_ENCODER, 'num_class': 4, 'pretrain': False}).replace("'", '"'),
            '--weights', os.path.join(work, 'epoch2_model.pt'),
            '--ignore_weights', 'encoder_q.fc', 'encoder_k', 'queue', 'predict_q', 'labels',
            '--train_feeder', 'feeder.ntu_feeder.Feeder_single',
            '--train_feeder_args.data_path', tiny_data['train'][0],
            '--train_feeder_args.label_path', tiny_data['train'][1],
            '--test_feeder_args.data_path', tiny_data['val'][0],
            '--test_feeder_args.label_path', tiny_data['val'][1],
            '--batch_size', '8', '--test_batch_size', '6', '--num_epoch', '2', '--eval_interval', '1',
            '--num_worker', '0', '--use_gpu', 'false', '--print_log', 'false']
    assert main.main(['processor.linear_evaluation.LE_Processor'] + argv) == 0


def test_resume_replays_active_sampling(tiny_data, tmp_path):
    straight, split = str(tmp_path / 'a'), str(tmp_path / 'b')
    assert main.main(['pretrain_asar'] + asar_argv(tiny_data, straight, 2)) == 0
    assert main.main(['pretrain_asar'] + asar_argv(tiny_data, split, 1)) == 0
    assert main.main(['pretrain_asar'] + asar_argv(tiny_data, split, 2, ['--resume', 'auto'])) == 0
    a = torch.load(os.path.join(straight, 'epoch2_model.pt'), weights_only=True)
    b = torch.load(os.path.join(split, 'epoch2_model.pt'), weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_reference_dequeue_with_a_batch_other_than_feature_dim_is_refused_at_set_up(tiny_data, tmp_path, capsys):
    # batch 8, feature_dim 8 (pretrain_argv): the reference block fits, the run goes on
    assert main.main(['pretrain_asar'] + asar_argv(tiny_data, str(tmp_path / 'fits'), 2,
                                                  ['--behaviour', 'reference'])) == 0
    # batch 6: one line at set-up naming the key, not a traceback after active_epoch
    work = str(tmp_path / 'w')
    assert main.main(['pretrain_asar'] + asar_argv(tiny_data, work, 2, ['--behaviour', 'reference',
                                                                        '--batch_size', '6'])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: model_args.asar_compat: the reference dequeue block '
                                               'needs batch_size (6) to equal model_args.feature_dim (8)'), err
    assert not os.path.exists(os.path.join(work, 'epoch1_model.pt'))
    # active sampling never starts (num_epoch <= active_epoch): nothing to refuse
    assert main.main(['pretrain_asar'] + asar_argv(tiny_data, str(tmp_path / 'early'), 1,
                                                  ['--behaviour', 'reference', '--batch_size', '6'])) == 0


# ----------------------------------------------------------------------------- distributed
def _ddp_worker(rank, world, init_file, out_dir, q, k):
    import torch.distributed as tdist
    torch.set_num_threads(1)
    tdist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    try:
        m = tiny_asar()
        m.queue_ptr[0] = 16
        n = q.shape[0] // world
        written = m.active_sample(q[rank * n:(rank + 1) * n], k[rank * n:(rank + 1) * n], epoch=200)
        torch.save({'queue': m.queue, 'ptr': m.queue_ptr, 'written': written},
                   os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        tdist.destroy_process_group()


def test_active_sampling_under_ddp_equals_single_process(tmp_path):
    import torch.multiprocessing as mp
    gen = torch.Generator().manual_seed(7)
    q = F.normalize(torch.randn(8, 4, generator=gen), dim=1)
    k = F.normalize(torch.randn(8, 4, generator=gen), dim=1)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / 'init'), str(tmp_path), q, k), nprocs=2, join=True)
    single = tiny_asar()
    single.queue_ptr[0] = 16
    written = single.active_sample(q, k, epoch=200)
    for rank in range(2):
        out = torch.load(tmp_path / f'rank{rank}.pt', weights_only=True)
        assert out['written'] == written
        assert torch.equal(out['ptr'], single.queue_ptr)
        assert torch.allclose(out['queue'], single.queue, atol=1e-6)
