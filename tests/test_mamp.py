"""MAMP pieces against slow per-sequence formulations (masking, target, decoder un-shuffling),
the random_rot / centre crop views, the generic optimisation options (AdamW groups, layer
decay, per-iteration cosine schedule), and the whole path through the command line:
pretrain_mamp -> linear_evaluation / knn_retrieval / finetune_evaluation on a tiny model."""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import main
from feeder import augment
from feeder.views import eval_view, has_augmentation, make_views
from net.mamp import MAMP, masked_mse, next_frame_motion, patchify, standardise
from processor.pretrain_mamp import MAMPPretrain
from tests.conftest import ROOT, write_dataset
from torchlight.config import ConfigError, build_config
from torchlight.registry import TASKS

TINY = dict(dim_feat=16, depth=2, num_heads=2, num_frames=8, num_joints=25, t_patch_size=4)


def tiny(**kwargs):
    torch.manual_seed(0)
    return MAMP(**{**TINY, 'decoder_dim_feat': 8, 'decoder_depth': 1, **kwargs})


def test_masking_matches_a_per_sequence_reference():
    model = tiny(motion_aware_tau=0.8, mask_ratio=0.75)
    x = torch.randn(3, 3, 8, 25, 2)
    x[1, :, :, :, 1] = 0
    seq = model.sequences(x)
    uniform = torch.rand(6, 50)
    keep, mask = model.draw_mask(seq, uniform)
    for b in range(6):   # the original's formulation, one sequence at a time
        frames = seq[b].reshape(2, 4, 25, 3)                     # (TP, u, V, C)
        motion = torch.zeros(2, 25)
        motion[1] = (frames[1] - frames[0]).abs().mean(dim=(0, 2))
        motion[0] = motion[1]
        motion = motion.reshape(50)
        prob = torch.softmax(motion / (motion.max() * 0.8 + 1e-10), dim=0)
        noise = torch.log(prob) - torch.log(-torch.log(uniform[b] + 1e-10) + 1e-10)
        expected = noise.argsort()[:int(50 * 0.25)]
        assert torch.equal(keep[b], expected)
        assert torch.equal(mask[b].nonzero().squeeze(1), torch.tensor(sorted(set(range(50)) - set(expected.tolist()))))
    # an all-zero person: uniform probabilities, the kept tokens are the smallest Gumbel scores
    assert torch.equal(keep[3], (-torch.log(-torch.log(uniform[3] + 1e-10) + 1e-10)).argsort()[:12])


def test_kept_count_is_the_original_float_rounding():
    assert tiny(mask_ratio=0.9).num_keep(750) == 74 and tiny(mask_ratio=0.9).num_keep(50) == 4


def test_target_is_standardised_next_frame_motion():
    seq = torch.randn(2, 8, 25, 3)
    motion = next_frame_motion(seq)
    assert torch.equal(motion[:, :-1], seq[:, 1:] - seq[:, :-1]) and not motion[:, -1].any()
    patches = patchify(motion, 4, 1)
    # token tp*V + v holds frames 4tp..4tp+3 of joint v, values ordered (u, c)
    assert torch.equal(patches[1, 1 * 25 + 7], motion[1, 4:8, 7].reshape(-1))
    t = patches[0, 3]
    manual = (t - t.mean()) / torch.sqrt(((t - t.mean()) ** 2).sum() / (t.numel() - 1) + 1e-6)
    assert torch.allclose(standardise(patches)[0, 3], manual, atol=1e-6)
    pred, mask = torch.zeros_like(patches), torch.zeros(2, 50)
    mask[0, 3] = mask[1, 9] = 1
    expected = ((patches[0, 3] ** 2).mean() + (patches[1, 9] ** 2).mean()) / 2
    assert torch.allclose(masked_mse(pred, patches, mask), expected)


def test_prediction_does_not_depend_on_the_order_of_kept_tokens():
    model = tiny().eval()
    x = torch.randn(2, 3, 8, 25, 2)
    keep, mask = model.draw_mask(model.sequences(x))
    with torch.no_grad():
        loss_a, pred_a, _ = model.predict(x, keep, mask)
        loss_b, pred_b, _ = model.predict(x, keep.flip(1), mask)
    assert torch.allclose(pred_a, pred_b, atol=1e-5) and torch.allclose(loss_a, loss_b, atol=1e-6)


def test_bad_input_and_arguments_are_clear_errors():
    with pytest.raises(ValueError, match=r'expects clips \(N, 3, 8, 25, M\), got \(1, 3, 64, 25, 2\)'):
        tiny()(torch.randn(1, 3, 64, 25, 2))
    with pytest.raises(ValueError, match='protocol'):
        tiny(pretrain=False, protocol='probe')
    for ratio in (0.0, 1.0, 0.99):   # nothing masked / nothing kept of the 50 tokens
        with pytest.raises(ValueError, match='mask_ratio'):
            tiny(mask_ratio=ratio)
    with pytest.raises(ValueError, match='base_encoder'):
        tiny(base_encoder='net.st_gcn.Model')


def test_random_rot_view_rotates_the_centre_crop():
    x = torch.randn(4, 3, 20, 25, 2)
    lengths = torch.tensor([20, 16, 12, 8])
    args = {'l_ratio': [0.95], 'input_size': 10, 'random_rot': True}
    view = make_views(x, ('crop_resize',), torch.Generator().manual_seed(3), args)[0]
    plain = make_views(x, ('crop_resize',), None, {'l_ratio': [0.95], 'input_size': 10}, lengths)[0]
    unrotated = make_views(x, ('center_crop',), None, {'l_ratio': [0.95], 'input_size': 10}, lengths)[0]
    assert torch.equal(plain, unrotated)   # one l_ratio entry: the centre crop
    rot = augment.draw_random_rot(4, torch.Generator().manual_seed(3), 0.3)
    again = make_views(x, ('crop_resize',), torch.Generator().manual_seed(3), args, lengths)[0]
    assert torch.allclose(again, torch.einsum('nij,njtvm->nitvm', rot, plain), atol=1e-6)
    # the original's angles: three per clip, |angle| <= 0.3, R = Rz Ry Rx orthonormal
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3).expand(4, 3, 3), atol=1e-6)
    assert view.shape == (4, 3, 10, 25, 2)
    assert has_augmentation({'random_rot': True}) and not has_augmentation({'l_ratio': [0.95]})
    assert eval_view(args, train=True) == 'center_crop'
    with pytest.raises(ValueError, match='random_rot is a training augmentation'):
        eval_view(args, train=False)


def options(argv):
    return build_config(MAMPPretrain.options, argv)


def test_cosine_schedule_and_param_groups_follow_the_original(tmp_path):
    proc = MAMPPretrain(options(['--work_dir', str(tmp_path), '--use_gpu', 'false', '--print_log', 'false',
                                 '--num_epoch', '400', '--warmup_epochs', '20']))
    # util/lr_sched.adjust_learning_rate at epoch = step / iters + (epoch - 1)
    assert proc.lr_at(1, 0.0) == 0.0 and proc.lr_at(1, 0.5) == pytest.approx(1e-3 * 0.5 / 20)
    assert proc.lr_at(21) == pytest.approx(1e-3)
    assert proc.lr_at(400, 1.0) == pytest.approx(5e-4)
    e = 123.25
    assert proc.lr_at(124, 0.25) == pytest.approx(5e-4 + 5e-4 * 0.5 * (1 + math.cos(math.pi * (e - 20) / 380)))
    model = tiny()
    optimizer = proc.build_optimizer(model)
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults['betas'] == (0.9, 0.95)
    by_wd = {g['weight_decay']: g for g in optimizer.param_groups}
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in by_wd[0.0]['params']}
    assert no_decay == {n for n, p in model.named_parameters() if p.dim() == 1}
    assert {'mask_token', 'encoder_q.temp_embed', 'decoder_pos_embed'} <= {names[id(p)] for p in by_wd[0.05]['params']}


def test_layer_decay_scales_lr_per_block(tmp_path):
    cfg = build_config(TASKS.get('finetune_evaluation').options,
                       ['--work_dir', str(tmp_path), '--use_gpu', 'false', '--print_log', 'false',
                        '--optimizer', 'AdamW', '--layer_decay', '0.8', '--no_decay_1d', 'true',
                        '--weight_decay', '0.05', '--lr_schedule', 'cosine', '--base_lr', '1e-3', '--model', 'mamp'])
    proc = TASKS.get('finetune_evaluation')(cfg)
    model = tiny(pretrain=False, protocol='finetune', num_class=5)
    optimizer = proc.build_optimizer(model)
    proc.set_lr(optimizer, 1, 0.0)   # no warm-up: the peak
    scale = {n: g['lr_scale'] for g in optimizer.param_groups for n, p in model.named_parameters()
             if any(p is q for q in g['params'])}
    # BEiT ids: embeddings 0, block i -> i + 1, final norm and head 3 (of L = 3)
    assert scale['encoder_q.pos_embed'] == scale['encoder_q.joints_embed.proj.weight'] == pytest.approx(0.8 ** 3)
    assert scale['encoder_q.blocks.1.attn.qkv.weight'] == pytest.approx(0.8)
    assert scale['encoder_q.fc.fc2.weight'] == scale['encoder_q.norm.weight'] == 1.0
    assert all(g['lr'] == pytest.approx(1e-3 * g['lr_scale']) for g in optimizer.param_groups)


def test_bad_optimisation_options_are_config_errors(tmp_path):
    base = ['--work_dir', str(tmp_path), '--use_gpu', 'false', '--print_log', 'false']
    for extra, message in ((['--lr_schedule', 'poly'], 'lr_schedule'), (['--optimizer', 'LAMB'], 'optimizer'),
                           (['--betas', '0.9'], 'betas'), (['--layer_decay', '0'], 'layer_decay')):
        with pytest.raises(ConfigError, match=message):
            MAMPPretrain(options(base + extra))


# ---------------------------------------------------------------------------- command line
MODEL_ARGS = {'dim_feat': 16, 'depth': 2, 'num_heads': 2, 'num_frames': 12, 'decoder_dim_feat': 8,
              'decoder_depth': 1}
EVAL_ARGS = {k: v for k, v in MODEL_ARGS.items() if not k.startswith('decoder')}


def split_args(prefix, data, l_ratio, rot=False):
    return [f'--{prefix}.data_path', data[0], f'--{prefix}.label_path', data[1],
            f'--{prefix}.l_ratio', str(l_ratio), f'--{prefix}.input_size', '12'] + \
        ([f'--{prefix}.random_rot', 'true'] if rot else [])


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp('mamp'))
    data = {s: write_dataset(folder, s, n, seed=i) for i, (s, n) in enumerate((('train', 16), ('val', 8)))}
    for split, (path, _) in data.items():   # zero-padded clips of 12..20 valid frames
        x = np.load(path)
        x[np.arange(len(x)) % 2 == 1, :, 14:] = 0
        np.save(path, x)
    work = os.path.join(folder, 'pretext')
    argv = ['pretrain_mamp', '--work_dir', work, '--model_args', json.dumps(MODEL_ARGS),
            *split_args('train_feeder_args', data['train'], [0.5, 1.0], rot=True),
            '--batch_size', '8', '--num_epoch', '2', '--warmup_epochs', '1', '--num_worker', '0',
            '--use_gpu', 'false', '--print_log', 'false', '--save_interval', '1', '--log_interval', '1']
    assert main.main(argv) == 0
    return {'folder': folder, 'data': data, 'work': work}


def test_pretraining_runs_with_the_cosine_schedule(pretrained):
    log = open(os.path.join(pretrained['work'], 'log.txt')).read()
    assert "views ('crop_resize',)" in log and 'Epoch 2 done' in log and 'masked_fraction' in log
    assert 'Epoch 1 Iter 1/2 | loss' in log and 'lr: 0.000000' in log   # warm-up starts at 0
    # the original's checkpoint layout: {'model': encoder keys at the top level + decoder}
    state = torch.load(os.path.join(pretrained['work'], 'epoch2_model.pt'), weights_only=True)['model']
    assert state['temp_embed'].shape == (1, 3, 1, 16) and 'decoder_pred.weight' in state
    assert 'blocks.1.mlp.fc2.bias' in state and not any(k.startswith('encoder_q.') for k in state)


def eval_argv(task, pretrained, name, model_args, extra=()):
    return [task, '--work_dir', os.path.join(pretrained['folder'], name), '--model', 'mamp',
            '--model_args', json.dumps({**EVAL_ARGS, **model_args}),
            '--weights', os.path.join(pretrained['work'], 'epoch2_model.pt'),
            *split_args('test_feeder_args', pretrained['data']['val'], [0.95]),
            '--num_worker', '0', '--use_gpu', 'false', '--print_log', 'false', '--save_result', 'false', *extra]


def test_linear_probe_trains_the_bn_head_on_augmented_clips(pretrained):
    argv = eval_argv('linear_evaluation', pretrained, 'linear', {},
                     [*split_args('train_feeder_args', pretrained['data']['train'], [0.5, 1.0], rot=True),
                      '--num_epoch', '2', '--base_lr', '0.1', '--lr_schedule', 'cosine', '--batch_size', '8',
                      '--test_batch_size', '8'])
    assert main.main(argv) == 0
    log = open(os.path.join(pretrained['folder'], 'linear', 'log.txt')).read()
    assert 'RESULT final epoch 2' in log and 'Cached features' not in log
    best = torch.load(os.path.join(pretrained['folder'], 'linear', 'best_model.pt'), weights_only=True)['model']
    assert int(best['head.fc.0.num_batches_tracked']) == 4   # the head's BN saw 2 x 2 batches
    assert best['head.fc.1.weight'].shape == (4, 16)   # the original's linear-probe names


def test_knn_and_finetune_on_the_pretrained_encoder(pretrained):
    argv = eval_argv('knn_retrieval', pretrained, 'knn', {},
                     split_args('train_feeder_args', pretrained['data']['train'], [0.95]))
    assert main.main(argv) == 0
    result = json.load(open(os.path.join(pretrained['folder'], 'knn', 'knn_results.json')))
    assert 0.0 <= result['k=1'] <= 1.0
    argv = eval_argv('finetune_evaluation', pretrained, 'finetune', {'protocol': 'finetune', 'drop_path_rate': 0.3},
                     [*split_args('train_feeder_args', pretrained['data']['train'], [0.5, 1.0], rot=True),
                      '--num_epoch', '1', '--optimizer', 'AdamW', '--base_lr', '5e-4', '--layer_decay', '0.8',
                      '--no_decay_1d', 'true', '--weight_decay', '0.05', '--lr_schedule', 'cosine',
                      '--label_smoothing', '0.1', '--batch_size', '8', '--test_batch_size', '8'])
    assert main.main(argv) == 0
    log = open(os.path.join(pretrained['folder'], 'finetune', 'log.txt')).read()
    assert 'RESULT final epoch 1' in log


def test_shipped_configs_hold_the_original_hyper_parameters():
    def load(task, *path):
        return build_config(TASKS.get(task).options, ['--config', os.path.join(ROOT, 'config', *path)])

    for folder, bench, decoder_depth, tau in (('ntu60', 'xsub', 3, 0.8), ('ntu60', 'xview', 3, 0.8),
                                              ('ntu120', 'xsub', 5, 0.75), ('ntu120', 'xset', 5, 0.75),
                                              ('pkummd', 'pkup1cs', 5, 0.8), ('pkummd', 'pkup2cs', 5, 0.8)):
        pre = load('pretrain_mamp', folder, 'mamp', bench, 'pretext_joint.yaml')
        assert (pre['optimizer'], pre['betas'], pre['base_lr'], pre['min_lr'], pre['weight_decay']) == \
            ('AdamW', [0.9, 0.95], 1e-3, 5e-4, 0.05)
        assert (pre['lr_schedule'], pre['warmup_epochs'], pre['num_epoch'], pre['batch_size']) == ('cosine', 20, 400, 128)
        assert pre['no_decay_1d'] and (pre['mask_ratio'], pre['motion_aware_tau']) == (0.9, tau)
        assert pre['model_args']['decoder_depth'] == decoder_depth and pre['model_args']['dim_feat'] == 256
        assert pre['train_feeder_args']['l_ratio'] == [0.5, 1.0] and pre['train_feeder_args']['input_size'] == 120
        assert pre['train_feeder_args']['random_rot'] is True
        lin = load('linear_evaluation', folder, 'mamp', bench, 'linear_eval_joint.yaml')
        assert (lin['optimizer'], lin['lr_schedule'], lin['num_epoch'], lin['weight_decay']) == ('SGD', 'cosine', 100, 0.0)
        assert lin['model_args']['protocol'] == 'linprobe' and lin['test_feeder_args']['l_ratio'] == [0.95]
        fin = load('finetune_evaluation', folder, 'mamp', bench, 'finetune_joint.yaml')
        assert (fin['optimizer'], fin['base_lr'], fin['min_lr'], fin['layer_decay'], fin['warmup_epochs']) == \
            ('AdamW', 3e-4, 1e-5, 0.8, 5)
        assert fin['label_smoothing'] == 0.1 and fin['model_args']['drop_path_rate'] == 0.3
        assert fin['model_args']['protocol'] == 'finetune' and fin['batch_size'] == 48
        assert load('knn_retrieval', folder, 'mamp', bench, 'knn_joint.yaml')['knn_k'] == [1]


@pytest.mark.parametrize('protocol', ['linprobe', 'finetune'])
def test_reference_checkpoint_round_trip(protocol, tmp_path):
    from torchlight.io import load_weights, reference_state_dict
    model = tiny(pretrain=False, protocol=protocol, num_class=5)
    path = str(tmp_path / 'model.pt')
    torch.save(reference_state_dict(model), path)
    heads = {k.split('.')[1] for k in torch.load(path, weights_only=True)['model'] if k.startswith('head.')}
    assert heads == ({'fc'} if protocol == 'linprobe' else {'fc1', 'bn', 'fc2'})
    other = tiny(pretrain=False, protocol=protocol, num_class=5)
    torch.nn.init.zeros_(other.encoder_q.pos_embed)
    assert load_weights(other, path, log=lambda line: None) == []
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name


def test_nw_ucla_shape_20_joints_one_person_short_clips():
    # NW-UCLA layout: 20 joints, 1 person, 50-frame clips resized to 48 frames (12 patches of 4)
    model = tiny(num_joints=20, num_frames=48)
    x = torch.randn(4, 3, 50, 20, 1)
    view = make_views(x, model.views, torch.Generator().manual_seed(0),
                      {'l_ratio': [0.5, 1.0], 'input_size': 48, 'random_rot': True})[0]
    out = model(view)
    out['loss'].backward()
    assert model.num_keep(12 * 20) == 23 and out['masked_fraction'] == pytest.approx(1 - 23 / 240)
    head = tiny(pretrain=False, num_joints=20, num_frames=48, protocol='finetune', num_class=10)
    assert head(view).shape == (4, 10) and head.encoder_q.feature_dim == 20 * 16
