"""Work directory, logging, tensorboard, atomic checkpoints and reference-format weight loading."""
import argparse
import os
import sys
import tempfile
import time
from collections import OrderedDict

import torch


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

    def __call__(self, text):
        if not self.enabled:
            return
        line = f'[{time.strftime("%m.%d.%y|%H:%M:%S")}] {text}'
        if self.print_log:
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
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# Non-tensor objects that released checkpoints of the original code bases contain
# (AS-CAL stores its argparse options). Everything else must be tensors and containers.
SAFE_GLOBALS = [argparse.Namespace]


def read_checkpoint(path):
    """torch.load with weights_only=True and the small allow-list above."""
    if not os.path.isfile(path):
        raise WeightsError(f'checkpoint not found: {path}')
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # pickle errors come in several classes
        raise WeightsError(f'cannot read checkpoint {path} safely (weights_only=True): {err}') from None


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
    a bare encoder such as AS-CAL's); 3. every key starting with an
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
    unexpected = [k for k in weights if k not in own]
    mismatched = [f'{k}: file {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}'
                  for k in weights if k in own and weights[k].shape != own[k].shape]
    if unexpected or mismatched:
        lines = []
        if unexpected:
            lines.append(f'unexpected keys (add their prefixes to ignore_weights): {unexpected[:20]}'
                         + (f' ... and {len(unexpected) - 20} more' if len(unexpected) > 20 else ''))
        if mismatched:
            lines.append(f'shape mismatches: {mismatched[:20]}')
        raise WeightsError(f'cannot load {path}: ' + '; '.join(lines))
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


def reference_state_dict(model):
    """Flat CPU state dict with 'module.' removed: the format the reference saves and loads."""
    return OrderedDict((strip_module(k), v.detach().cpu()) for k, v in model.state_dict().items())
