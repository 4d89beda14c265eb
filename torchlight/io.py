"""Work directory, logging, tensorboard, atomic checkpoints and reference-format weight loading."""
import argparse
import os
import re
import sys
import time
import warnings
from collections import OrderedDict

import torch

# Safe reading of data files, atomic writes and the work-dir lock live in torchlight.files
# (numpy only, for the data tools); re-exported here for the tasks.
from torchlight.files import (DataFileError, WorkDirError, WorkDirLock, atomic_write,  # noqa: F401
                              load_label_pickle, load_npy, load_pickle, remove_stale_temporaries,
                              write_json, write_pickle)


class WeightsError(RuntimeError):
    """A checkpoint that cannot be loaded into the model (names the file and the keys at fault)."""


# ----------------------------------------------------------------------------- work dir / log
class Logger:
    """Prints and appends '[mm.dd.yy|HH:MM:SS] line' to work_dir/log.txt (file kept open)."""

    def __init__(self, work_dir=None, enabled=True, print_log=True):
        self.enabled = enabled
        self.print_log = print_log
        self._file = None
        if enabled and work_dir:
            os.makedirs(work_dir, exist_ok=True)
            self._file = open(os.path.join(work_dir, 'log.txt'), 'a', buffering=1)

    def __call__(self, text, echo=True):
        """Log `text`; echo=False writes it to log.txt only (e.g. an error main.py prints itself)."""
        if not self.enabled:
            return
        line = f'[{time.strftime("%m.%d.%y|%H:%M:%S")}] {text}'
        if self.print_log and echo:
            try:
                from tqdm import tqdm
                tqdm.write(line, file=sys.stdout)
            except ImportError:
                print(line, flush=True)
        if self._file:
            self._file.write(line + '\n')

    def debug(self, text):
        """Detail that goes to log.txt only (e.g. every ignored checkpoint key), never to the screen."""
        if self.enabled and self._file:
            self._file.write(f'[{time.strftime("%m.%d.%y|%H:%M:%S")}] {text}\n')

    def close(self):
        if self._file:
            self._file.close()
            self._file = None


class NullWriter:
    """Stands in for a SummaryWriter on non-zero ranks or when tensorboard is unavailable."""

    def add_scalar(self, *args, **kwargs):
        pass

    def close(self):
        pass


def summary_writer(log_dir, enabled=True):
    if not enabled:
        return NullWriter()
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return NullWriter()
    return SummaryWriter(log_dir)


# ----------------------------------------------------------------------------- checkpoints
def atomic_save(obj, path):
    """torch.save to a temporary file in the same folder, then rename: a kill never leaves a
    truncated checkpoint, and an existing file is replaced only by a complete one."""
    atomic_write(path, lambda f: torch.save(obj, f))


# Non-tensor objects that released checkpoints of the original code bases contain
# (AS-CAL stores its argparse options). Everything else must be tensors and containers.
SAFE_GLOBALS = [argparse.Namespace]


def read_checkpoint(path, what='checkpoint'):
    """torch.load with weights_only=True and the small allow-list above; a file it refuses or
    cannot read is a WeightsError saying what the file is (see checkpoint_problem)."""
    if not os.path.isfile(path):
        raise WeightsError(f'{what} not found: {path}')
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
            # plain pickles draw a protocol warning before the refusal explained below
            warnings.filterwarnings('ignore', message='Detected pickle protocol')
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # pickle errors come in several classes
        raise WeightsError(f'{what} {path} {checkpoint_problem(path, err)}') from None


def checkpoint_problem(path, err):
    """Why torch.load(weights_only=True) refused `path`, in words: what the file is, or the
    name it refers to. torch's own message advises weights_only=False, which would run
    whatever the file names, so it is never passed on."""
    with open(path, 'rb') as f:
        head = f.read(8)
    refused = re.search(r'GLOBAL ([\w.]+)', str(err))
    if refused:
        return (f'refused: it refers to {refused.group(1)}, which a checkpoint of tensors never '
                'needs (loaded with weights_only=True; nothing in the file was run)')
    if not head:
        return 'is empty, not a PyTorch checkpoint'
    if head.startswith(b'\x93NUMPY'):
        return 'is a .npy array, not a PyTorch checkpoint'
    if head.startswith(b'PK\x03\x04'):
        return 'is a damaged or truncated PyTorch checkpoint (its zip archive cannot be read)'
    if head[:1] == b'\x80':
        return 'is a pickle of other objects, not a PyTorch checkpoint written by torch.save'
    return f'is not a PyTorch checkpoint (the file starts with {head!r})'


def state_dict_of(obj, path='<checkpoint>'):
    """The flat {key: tensor} mapping inside a checkpoint of any supported layout:
    AimCLR/ASAR flat dicts, `{'state_dict': ...}` (ISC, HiCo, ours), `{'model': ...}` (AS-CAL)."""
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for key in ('state_dict', 'model', 'model_state'):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return state_dict_of(obj[key], path)
    raise WeightsError(f'{path}: no state dict found (top-level keys: '
                       f'{list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__})')


def strip_module(key):
    """Keep the text after the last 'module.' (DataParallel/DDP wrappers), as the reference does."""
    return key.rsplit('module.', 1)[-1]


def select_prefix(weights, prefix, target='encoder_q.', path='<checkpoint>'):
    """Keep only the keys under `prefix` and move them under `target`: a released checkpoint's
    branch (ISC `encoder_r.`, a key encoder, ...) becomes the query encoder of our model."""
    chosen = OrderedDict((target + k[len(prefix):], v) for k, v in weights.items() if k.startswith(prefix))
    if not chosen:
        heads = sorted({k.split('.', 1)[0] + '.' for k in weights})
        raise WeightsError(f'{path}: no key starts with weights_prefix {prefix!r} '
                           f'(the file has prefixes {heads[:10]})')
    return chosen


def pick_container(obj, container, path='<checkpoint>'):
    """The checkpoint entry `container` (e.g. AS-CAL's 'model_ema'), or `obj` when None."""
    if container is None:
        return obj
    if not isinstance(obj, dict) or container not in obj:
        keys = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise WeightsError(f'{path}: no entry {container!r} (weights_container); top-level keys: {keys}')
    return obj[container]


def load_weights(model, path, ignore_weights=(), log=print, rename=None, prefix=None, container=None):
    """Load `path` into `model` with the reference rules (reference doc 1.6).

    0. `container` picks a top-level entry of the file (else 'state_dict', 'model', ...);
    1. keys lose everything up to the last 'module.'; 2. with `prefix`, only the keys under it
    are kept and become `encoder_q.*` (see select_prefix; '' = every key, for files that hold
    a bare encoder such as AS-CAL's); 2b. a model with `adapt_weights(weights, path, log)`
    maps its original's key layout to its own (MAMP); 3. every key starting with an
    `ignore_weights` prefix is dropped; 4. keys the model has but the file lacks are listed
    and keep their current values; 5. keys the file has but the model lacks, and shape
    mismatches, are errors. `rename` optionally maps {old prefix: new prefix} first.
    Printed: one line per ignored prefix with its count, one summary line (loaded / missing /
    ignored); every ignored or missing key goes to `log.debug` (log.txt only) when the logger
    has it. Returns the list of missing keys.
    """
    detail = getattr(log, 'debug', None) or (lambda text: None)
    state = state_dict_of(pick_container(read_checkpoint(path), container, path), path)
    weights = OrderedDict((strip_module(k), v) for k, v in state.items())
    if prefix is not None:
        weights = select_prefix(weights, prefix, path=path)
    for old, new in (rename or {}).items():
        weights = OrderedDict((new + k[len(old):] if k.startswith(old) else k, v) for k, v in weights.items())
    ignored = 0
    if hasattr(model, 'adapt_weights'):   # a method that reads its original's file layout (MAMP)
        weights = model.adapt_weights(weights, path=path, log=log)
    for dropped in ignore_weights:
        keys = [k for k in weights if k.startswith(dropped)]
        for key in keys:
            detail(f'Filter [{dropped}] remove weights [{key}].')
            del weights[key]
        log(f'Ignored {len(keys)} tensors under [{dropped}]')
        ignored += len(keys)
    for name, module in model.named_modules():   # encoders that recognise a mismatched checkpoint
        if hasattr(module, 'check_weights'):
            module.check_weights(weights, prefix=f'{name}.' if name else '', path=path)
    own = model.state_dict()
    problems = state_mismatch(weights, own, missing=False,
                              unexpected_hint='add their prefixes to ignore_weights')
    if problems:
        raise WeightsError(f'cannot load {path}: {problems}')
    missing = [k for k in own if k not in weights]
    for key in missing:
        detail(f'Can not find weights [{key}].')
    merged = OrderedDict(own)
    merged.update({k: v.to(own[k].dtype) for k, v in weights.items()})
    model.load_state_dict(merged, strict=True)
    log(f'Loaded {len(weights)} tensors from {path}' + (f'; {len(missing)} missing' if missing else '')
        + (f' ({missing_summary(missing)}, keep their initial values)' if missing else '')
        + (f'; {ignored} ignored' if ignored else ''))
    return missing


def missing_summary(keys, shown=3):
    """'encoder_q.fc.weight, encoder_q.fc.bias' or the first few prefixes and a count."""
    heads = list(OrderedDict.fromkeys(k.rsplit('.', 1)[0] for k in keys))
    return ', '.join(heads[:shown]) + (f' and {len(heads) - shown} more modules' if len(heads) > shown else '')
def state_mismatch(weights, own, missing=True, unexpected_hint='', limit=20):
    """One line describing how the tensors `weights` differ from the state dict `own` (shape
    mismatches, unexpected keys and, with `missing`, the keys `weights` lacks; at most `limit`
    of each, with the count of the rest), or '' when they fit."""
    def listed(keys):
        return f'{keys[:limit]}' + (f' ... and {len(keys) - limit} more' if len(keys) > limit else '')
    unexpected = [k for k in weights if k not in own]
    mismatched = [f'{k}: file {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}'
                  for k in weights if k in own and weights[k].shape != own[k].shape]
    lacking = [k for k in own if k not in weights] if missing else []
    parts = []
    if mismatched:
        parts.append(f'shape mismatches: {listed(mismatched)}')
    if unexpected:
        parts.append('unexpected keys' + (f' ({unexpected_hint})' if unexpected_hint else '')
                     + f': {listed(unexpected)}')
    if lacking:
        parts.append(f'missing keys: {listed(lacking)}')
    return '; '.join(parts)


def reference_state_dict(model):
    """What our reference-format checkpoints hold: the flat CPU state dict with 'module.' removed
    (the format the reference saves and loads), or, for a method whose original stores another
    layout, `model.reference_checkpoint(state)` (MAMP: {'model': the original's key names})."""
    state = OrderedDict((strip_module(k), v.detach().cpu()) for k, v in model.state_dict().items())
    return model.reference_checkpoint(state) if hasattr(model, 'reference_checkpoint') else state
