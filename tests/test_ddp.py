"""DDP on 2 CPU processes (gloo) equals one process with the same global batch.

What is compared: a SkeletonCLR model (tiny ST-GCN in float64, so that rounding differences of
the reduction order stay far below the tolerance; dropout 0 so no per-rank random stream
enters), SGD with momentum and weight decay, 3 steps on fixed global batches of 8 clips. The
2-process run wraps the model in DistributedDataParallel after `convert_sync_batchnorm` (batch
norm over the global batch, on gloo); rank r gets the contiguous half r of every global batch.
The single process runs the whole batch. After every step the loss (mean over ranks), and at
the end the queue, its pointer, every parameter (query and EMA key encoder) and every BN
running statistic must agree (loss to 1e-9, state to 1e-7 relative / 1e-9 absolute). Keys are all-gathered in rank order, so the queue
columns come out in the single-process order.
A second test runs the engine itself under torchrun (2 ranks) and resumes it.
"""
import os
import socket
import subprocess
import sys

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from tests.conftest import ROOT, TINY_ENCODER, pretrain_argv

STEPS, GLOBAL_BATCH = 3, 8


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def train(rank, world):
    from net.skeletonclr import SkeletonCLR
    from torchlight import dist
    torch.manual_seed(0)
    model = SkeletonCLR(**dict(TINY_ENCODER, hidden_channels=4, hidden_dim=8, dropout=0.0,
                               feature_dim=8, queue_size=40, momentum=0.9, Temperature=0.2)).double()
    net = model
    if world > 1:
        model = dist.convert_sync_batchnorm(model)
        net = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01,
                                momentum=0.9, weight_decay=1e-4)
    data = torch.Generator().manual_seed(1)
    per_rank = GLOBAL_BATCH // world
    losses = []
    for _ in range(STEPS):
        x_q, x_k = torch.randn(2, GLOBAL_BATCH, 3, 16, 25, 2, generator=data, dtype=torch.float64)
        part = slice(rank * per_rank, (rank + 1) * per_rank)
        loss = net(x_q[part], x_k[part], epoch=1)['loss']
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(dist.all_reduce_mean(loss.item()))
    return {'losses': losses, 'state': {k: v.clone() for k, v in model.state_dict().items()}}


def worker(rank, world, port, folder):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch_dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        torch.save(train(rank, world), os.path.join(folder, f'rank{rank}.pt'))
    finally:
        torch_dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process_with_the_global_batch(tmp_path):
    mp.start_processes(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, start_method='spawn')
    single = train(0, 1)
    ranks = [torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in range(2)]
    for result in ranks:
        assert len(result['losses']) == STEPS
        for a, b in zip(result['losses'], single['losses']):
            assert abs(a - b) < 1e-9, (result['losses'], single['losses'])
        assert result['state'].keys() == single['state'].keys()
        for key, value in single['state'].items():
            torch.testing.assert_close(result['state'][key], value, rtol=1e-7, atol=1e-9, msg=key)
    assert int(single['state']['queue_ptr']) == STEPS * GLOBAL_BATCH % 40
    # the queue holds real keys (unit columns), not its random initialisation
    filled = single['state']['queue'][:, :STEPS * GLOBAL_BATCH]
    torch.testing.assert_close(filled.norm(dim=0), torch.ones(STEPS * GLOBAL_BATCH, dtype=torch.float64))


def torchrun(args, work_dir, port):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--nnodes', '1',
           '--master_addr', '127.0.0.1', '--master_port', str(port),
           os.path.join(ROOT, 'main.py'), 'pretrain_skeletonclr'] + args
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def test_engine_under_torchrun_trains_checkpoints_on_rank0_and_resumes(tiny_data, tmp_path):
    work = str(tmp_path / 'ddp')
    first = torchrun(pretrain_argv(tiny_data, work, epochs=1), work, free_port())
    assert first.returncode == 0, first.stderr[-3000:]
    assert os.path.exists(os.path.join(work, 'epoch1_model.pt'))
    log = open(os.path.join(work, 'log.txt')).read()
    assert '2 rank(s)' in log and log.count('Epoch 1 done') == 1   # rank 0 logs alone
    second = torchrun(pretrain_argv(tiny_data, work, epochs=2, extra=['--resume', 'auto']), work, free_port())
    assert second.returncode == 0, second.stderr[-3000:]
    state = torch.load(os.path.join(work, 'checkpoint_last.pt'), weights_only=True)
    assert state['epoch'] == 2 and 'Resumed from' in open(os.path.join(work, 'log.txt')).read()
    # batch 8 over 2 ranks: 24 clips -> 3 steps of 8 keys per epoch, one pointer update per step
    assert int(state['model']['queue_ptr']) == (2 * 3 * 8) % 20


def test_keep_freed_memory_reuses_large_blocks_in_a_fresh_process():
    """With glibc a freed 64 MB block's pages are reused by the next one (without the call glibc
    maps each afresh: ~16,000 page faults); elsewhere the call reports False."""
    import subprocess
    import sys
    code = (
        'import ctypes, resource, sys\n'
        'from torchlight import dist\n'
        'kept = dist.keep_freed_memory() if sys.argv[1] == "keep" else None\n'
        'libc = ctypes.CDLL("libc.so.6")\n'
        'libc.malloc.restype = ctypes.c_void_p; libc.free.argtypes = [ctypes.c_void_p]\n'
        'libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]\n'
        'faults = []\n'
        'for _ in range(3):\n'
        '    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n'
        '    block = libc.malloc(64 << 20); libc.memset(block, 1, 64 << 20); libc.free(block)\n'
        '    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n'
        'print(kept, faults[-1])\n')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = lambda mode: subprocess.run([sys.executable, '-c', code, mode], capture_output=True, text=True,
                                      check=True, cwd=root).stdout.split()
    kept, faults = run('keep')
    if kept == 'True':
        assert int(faults) < 1000 < int(run('default')[1])
