import argparse
import os
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

from torchlight.io import WeightsError, atomic_save, load_weights, read_checkpoint


class Tiny(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.encoder_q = nn.Module()
        self.encoder_q.body = nn.Linear(4, 5)
        self.encoder_q.fc = nn.Linear(5, classes)


def reference_file(tmp_path, **extra):
    src = Tiny()
    sd = OrderedDict(('module.' + k, v) for k, v in src.state_dict().items())   # DataParallel names
    sd.update(extra)
    path = str(tmp_path / 'ref.pt')
    torch.save(sd, path)
    return src, path


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = str(tmp_path / 'ckpt.pt')
    atomic_save({'a': torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError('boom')

    with pytest.raises(RuntimeError, match='boom'):
        atomic_save({'a': torch.zeros(2), 'bad': Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)['a'], torch.ones(2))
    assert os.listdir(tmp_path) == ['ckpt.pt']   # no temporary file left behind


def test_load_strips_module_ignores_prefixes_and_lists_missing(tmp_path):
    src, path = reference_file(tmp_path, queue=torch.zeros(3), queue_ptr=torch.zeros(1))
    class Log(list):   # printed lines; debug lines (log.txt only) kept apart
        def __init__(self):
            super().__init__()
            self.details = []

        def __call__(self, text):
            self.append(text)

        def debug(self, text):
            self.details.append(text)

    dst, lines = Tiny(classes=7), Log()
    missing = load_weights(dst, path, ignore_weights=['encoder_q.fc', 'queue'], log=lines)
    assert missing == ['encoder_q.fc.weight', 'encoder_q.fc.bias']
    assert torch.equal(dst.encoder_q.body.weight, src.encoder_q.body.weight)
    assert any('Filter [queue] remove weights [queue_ptr]' in l for l in lines.details)   # prefix semantics
    # the screen gets one line per prefix with its count and one summary, no key lists
    assert 'Ignored 2 tensors under [queue]' in lines and 'Ignored 2 tensors under [encoder_q.fc]' in lines
    assert len(lines) == 3 and lines[-1].endswith('; 2 missing (encoder_q.fc, keep their initial values); 4 ignored')
    assert not any('remove weights' in l or 'Can not find' in l for l in lines)


def test_unexpected_keys_and_shape_mismatch_are_errors(tmp_path):
    _, path = reference_file(tmp_path, queue=torch.zeros(3))
    with pytest.raises(WeightsError, match=r"unexpected keys.*'queue'"):
        load_weights(Tiny(), path, ignore_weights=[], log=lambda s: None)
    with pytest.raises(WeightsError, match=r'encoder_q.fc.weight: file \(3, 5\) vs model \(7, 5\)'):
        load_weights(Tiny(classes=7), path, ignore_weights=['queue'], log=lambda s: None)


def test_safe_loading(tmp_path):
    path = str(tmp_path / 'opt.pth')
    torch.save({'opt': argparse.Namespace(lr=0.1), 'model': Tiny().state_dict()}, path)
    assert read_checkpoint(path)['opt'].lr == 0.1                 # allow-listed foreign object

    class Evil:
        def __reduce__(self):
            return (os.system, ('echo pwned',))

    torch.save({'x': Evil()}, str(tmp_path / 'evil.pt'))
    with pytest.raises(WeightsError, match='weights_only=True'):
        read_checkpoint(str(tmp_path / 'evil.pt'))
    with pytest.raises(WeightsError, match='not found'):
        read_checkpoint(str(tmp_path / 'nope.pt'))


def test_nested_state_dict_layouts(tmp_path):
    src = Tiny()
    path = str(tmp_path / 'isc.pth.tar')
    torch.save({'epoch': 1, 'state_dict': {'module.' + k: v for k, v in src.state_dict().items()}}, path)
    dst = Tiny()
    assert load_weights(dst, path, log=lambda s: None) == []
    assert torch.equal(dst.encoder_q.fc.bias, src.encoder_q.fc.bias)


def test_weights_prefix_loads_another_branch_as_the_query_encoder(tmp_path):
    # ISC inter-skeleton layout: the graph encoder of the second branch lives under encoder_r.
    src_q, src_r = Tiny(), Tiny()
    state = {'module.encoder_q.' + k[len('encoder_q.'):]: v for k, v in src_q.state_dict().items()}
    state.update({'module.encoder_r.' + k[len('encoder_q.'):]: v for k, v in src_r.state_dict().items()})
    state['module.queue'] = torch.zeros(3)
    path = str(tmp_path / 'inter.pth.tar')
    torch.save({'state_dict': state}, path)
    dst = Tiny()
    assert load_weights(dst, path, log=lambda s: None, prefix='encoder_r.') == []
    assert torch.equal(dst.encoder_q.body.weight, src_r.encoder_q.body.weight)
    with pytest.raises(WeightsError, match=r"no key starts with weights_prefix 'encoder_x.'.*encoder_q"):
        load_weights(dst, path, log=lambda s: None, prefix='encoder_x.')
