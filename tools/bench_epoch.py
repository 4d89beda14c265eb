"""Time whole pretraining epochs through the real engine on an NTU-60-sized synthetic set.

    python tools/bench_epoch.py --config config/ntu60/pretext/pretext_aimclr_xsub_joint.yaml \
        --task pretrain_aimclr --clips 37646 --epochs 2 -- --amp bf16 --num_worker 8

Writes random clips (N, 3, 50, 25, 2) (second body zero in half of them, as in NTU) to a
memory-mapped file under --data_dir, runs `main.py <task>` on them for --epochs epochs with the
given config plus the overrides after `--`, and prints the per-epoch wall time and clips/s the
engine logged (the first epoch includes warm-up: cuDNN autotuning, torch.compile).
"""
import argparse
import os
import pickle
import re
import shutil
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def write_clips(folder, clips, frames=50, seed=0):
    path = os.path.join(folder, 'train_position.npy')
    data = np.lib.format.open_memmap(path, mode='w+', dtype=np.float32, shape=(clips, 3, frames, 25, 2))
    rng = np.random.default_rng(seed)
    for start in range(0, clips, 4096):
        block = rng.standard_normal((min(4096, clips - start), 3, frames, 25, 2), dtype=np.float32) * 0.3
        block[1::2, ..., 1] = 0
        data[start:start + len(block)] = block
    data.flush()
    with open(os.path.join(folder, 'train_label.pkl'), 'wb') as f:
        pickle.dump(([f'clip{i:06d}' for i in range(clips)], [i % 60 for i in range(clips)]), f)
    return path


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index('--') + 1:] if '--' in argv else []
    argv = argv[:argv.index('--')] if '--' in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', required=True)
    parser.add_argument('--task', default='pretrain_aimclr')
    parser.add_argument('--clips', type=int, default=37646, help='NTU-60 xview training size')
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--data_dir', default=None, help='where to write the clips (default: a temp dir)')
    args = parser.parse_args(argv)
    import main as cli
    folder = args.data_dir or tempfile.mkdtemp(prefix='bench_epoch_')
    os.makedirs(folder, exist_ok=True)
    data = os.path.join(folder, 'train_position.npy')
    if not os.path.exists(data) or np.load(data, mmap_mode='r').shape[0] != args.clips:
        data = write_clips(folder, args.clips)
    work = os.path.join(folder, 'work')
    shutil.rmtree(work, ignore_errors=True)
    code = cli.main([args.task, '--config', args.config, '--work_dir', work,
                     '--train_feeder_args.data_path', data,
                     '--train_feeder_args.label_path', os.path.join(folder, 'train_label.pkl'),
                     '--num_epoch', str(args.epochs), '--save_interval', '-1', '--print_log', 'false',
                     '--log_interval', '1000000'] + extra)
    if code:
        sys.exit(code)
    for line in open(os.path.join(work, 'log.txt')):
        match = re.search(r'Epoch (\d+) done .*\| ([\d.]+) s, ([\d.]+) clips/s', line)
        if match:
            print(f'epoch {match.group(1)}: {match.group(2)} s, {match.group(3)} clips/s')


if __name__ == '__main__':
    main()
