"""tools/benchmark.py timing helper: warm-ups before the timed calls, memory sampling optional."""
import torch

from tools.benchmark import timed


def test_timed_runs_warmups_then_steps_and_samples_memory_only_when_asked():
    calls = []
    warmup, median, peak = timed(lambda: calls.append(len(calls)), torch.device('cpu'), steps=3, warmups=2)
    assert len(calls) == 5 and warmup >= 0 and median >= 0 and peak > 0
    calls.clear()
    _, _, peak = timed(lambda: calls.append(0), torch.device('cpu'), steps=4, memory=False, warmups=3)
    assert len(calls) == 7 and peak is None
