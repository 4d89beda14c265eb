"""Checkpoints are atomic and a killed pretraining run resumes as if it had never stopped."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from processor.pretrain import PretrainProcessor
from tests.conftest import ROOT, pretrain_argv
from torchlight.config import ConfigError


def final_state(work_dir, epochs):
    return torch.load(os.path.join(work_dir, f'epoch{epochs}_model.pt'), weights_only=True)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_continues_exactly(tiny_data, tmp_path):
    straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
    PretrainProcessor.from_argv(pretrain_argv(tiny_data, straight, epochs=3)).start()
    PretrainProcessor.from_argv(pretrain_argv(tiny_data, split, epochs=1)).start()
    # the same run, asked for 3 epochs, resumed after the first
    PretrainProcessor.from_argv(pretrain_argv(tiny_data, split, epochs=3, extra=['--resume', 'auto'])).start()
    assert_same_state(final_state(straight, 3), final_state(split, 3))
    state = torch.load(os.path.join(split, 'checkpoint_last.pt'), weights_only=True)
    assert state['epoch'] == 3 and 'queue' in state['model'] and state['optimizer']['state']


def test_fresh_run_refuses_to_overwrite_a_run(tiny_data, tmp_path):
    work = str(tmp_path / 'w')
    PretrainProcessor.from_argv(pretrain_argv(tiny_data, work, epochs=1)).start()
    with pytest.raises(ConfigError, match='--resume auto'):
        PretrainProcessor.from_argv(pretrain_argv(tiny_data, work, epochs=1)).start()


def test_resume_after_sigkill(tiny_data, tmp_path):
    epochs = 4
    straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
    cmd = [sys.executable, os.path.join(ROOT, 'main.py'), 'pretrain_skeletonclr']
    subprocess.run(cmd + pretrain_argv(tiny_data, straight, epochs), check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    proc = subprocess.Popen(cmd + pretrain_argv(tiny_data, killed, epochs), cwd=ROOT,
                            stdout=subprocess.DEVNULL)
    marker = os.path.join(killed, 'epoch2_model.pt')
    deadline = time.time() + 120
    while not os.path.exists(marker) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)      # somewhere in epoch 3 (or while saving)
    proc.wait()
    assert not any(f.endswith('.tmp') for f in os.listdir(killed) if not f.startswith('.'))
    subprocess.run(cmd + pretrain_argv(tiny_data, killed, epochs, extra=['--resume']), check=True,
                   cwd=ROOT, stdout=subprocess.DEVNULL)
    assert_same_state(final_state(straight, epochs), final_state(killed, epochs))
