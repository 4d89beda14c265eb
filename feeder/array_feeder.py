"""Dataset for the standard array format: (N, C, T, V, M) float32 `.npy` + (names, labels) pickle.

The dataset only reads clips; augmentation happens batched on the device (feeder/augment.py).
The original feeder names are aliases of this class and their augmentation keys are kept
in `view_args`, which the processor hands to the view pipeline.
"""
import inspect

import numpy as np
import torch
from torch.utils.data import Dataset

from feeder.views import check_view_args
from torchlight.files import DataFileError, load_label_pickle, load_npy
from torchlight.registry import FEEDERS

# Bad dataset files: the message names the file and what is wrong.
DataError = DataFileError


def read_labels(label_path, expected=None):
    """(names, labels) of a label pickle (read with the restricted unpickler: plain values
    only), checked against the `expected` number of clips."""
    names, labels = load_label_pickle(label_path)
    if expected is not None and len(labels) != expected:
        raise DataError(f'{label_path}: {len(labels)} labels but the data array holds {expected} clips')
    return names, labels


def balanced_subset(labels, fraction, seed):
    """Indices of a class-balanced subset: round(fraction * n_c) samples of every class c
    (at least one), drawn reproducibly from `seed`, returned sorted."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        count = max(1, int(round(fraction * len(members))))
        chosen.append(rng.choice(members, size=min(count, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))


def first_per_class(labels, fraction, seed=None):
    """Indices of the AS-CAL semi-supervised subset: the first int(fraction * N / #classes)
    clips of every class in file order (at least one), sorted. Deterministic: `seed` unused."""
    labels = np.asarray(labels)
    count = max(1, int(fraction * len(labels) / len(np.unique(labels))))
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:count] for c in np.unique(labels)]))


SUBSET_RULES = {'balanced': balanced_subset, 'first': first_per_class}   # (labels, fraction, seed) -> indices


@FEEDERS.register('skeleton_array', aliases=[
    'feeder.ntu_feeder.Feeder_single', 'feeder.ntu_feeder.Feeder_dual',
    'feeder.ntu_feeder.Feeder_triple', 'feeder.ntu_feeder.Feeder', 'feeder.feeder.Feeder'])
class SkeletonArrayDataset(Dataset):
    """Reads `data_path` (memory-mapped when `mmap`) and `label_path`.

    label_percent < 1 keeps a class-balanced subset (semi-supervised protocol): `subset_rule`
    'balanced' draws round(label_percent * n_c) clips of each class from `subset_seed` (the
    AimCLR `Feeder_semi` rule), 'first' keeps the first int(label_percent * N / #classes) clips
    of each class in file order (the AS-CAL rule). `check_finite` scans the array once (in
    chunks) for NaN/inf.
    `num_frame_path`: an int .npy (N,) of true frame counts (ISC/HiCo data, padded cyclically);
    the crop views use it. `l_ratio` / `input_size` are the ISC/HiCo crop keys (MAMP's p_interval /
    window_size), `corrupt_joints` how many joints the ISC/HiCo joint corruption picks (15),
    `random_rot` (true or an angle) MAMP's rotation after the crop.
    """

    def __init__(self, data_path, label_path=None, mmap=True, label_percent=1.0, subset_seed=0,
                 check_finite=True, shear_amplitude=None, temperal_padding_ratio=None,
                 aug_method=None, blur_normalized=None, layout=None, view_rotation=None, num_frame_path=None,
                 l_ratio=None, input_size=None, min_crop=None, corrupt_joints=None, random_rot=None, window_size=-1, debug=False,
                 aug_order=None, subset_rule='balanced'):
        self.data = load_npy(data_path, mmap=mmap, what='data file')
        if self.data.ndim != 5:
            raise DataError(f'{data_path}: expected a 5-D array (N, C, T, V, M), got shape {self.data.shape}')
        if self.data.shape[0] == 0:
            raise DataError(f'{data_path}: the array holds no clips (shape {self.data.shape})')
        if check_finite:
            self._check_finite(data_path)
        n = self.data.shape[0]
        if label_path:
            self.sample_name, self.label = read_labels(label_path, expected=n)
        else:   # unlabelled pretraining data
            self.sample_name, self.label = [f'{i:06d}' for i in range(n)], [-1] * n
        self.num_frame = self._read_num_frame(num_frame_path, n) if num_frame_path else None
        self.index = np.arange(n)
        if subset_rule not in SUBSET_RULES:
            raise DataError(f'feeder_args.subset_rule must be one of {sorted(SUBSET_RULES)}, got {subset_rule!r}')
        if label_percent < 1.0:
            if not label_path:
                raise DataError('label_percent < 1 needs a label_path')
            self.index = SUBSET_RULES[subset_rule](self.label, label_percent, subset_seed)
        # Only keys the config set: pretraining fills in the reference defaults, evaluation
        # treats an absent key as 'no augmentation'.
        if aug_method is not None:   # unquoted YAML or a command-line 123456 arrives as a number
            aug_method = str(aug_method)
        given = dict(shear_amplitude=shear_amplitude, temperal_padding_ratio=temperal_padding_ratio,
                     aug_method=aug_method, blur_normalized=blur_normalized, layout=layout,
                     view_rotation=view_rotation, l_ratio=l_ratio, input_size=input_size, min_crop=min_crop,
                     corrupt_joints=corrupt_joints,
                     random_rot=random_rot, aug_order=aug_order)
        self.view_args = {k: v for k, v in given.items() if v is not None}
        try:
            check_view_args(self.view_args, 'feeder_args')
        except ValueError as err:
            raise DataError(str(err)) from None
        if corrupt_joints is not None and corrupt_joints > self.data.shape[3]:   # type checked above
            raise DataError(f'{data_path}: feeder_args.corrupt_joints is {corrupt_joints}, the clips have '
                            f'only {self.data.shape[3]} joints')
        self.data_path = data_path

    def _read_num_frame(self, path, n):
        counts = load_npy(path, what='num_frame file')
        if counts.shape != (n,) or not np.issubdtype(counts.dtype, np.integer):
            raise DataError(f'{path}: expected ({n},) integer frame counts, got {counts.dtype} {counts.shape}')
        if n and (counts.min() < 1 or counts.max() > self.data.shape[2]):
            raise DataError(f'{path}: frame counts must lie in [1, T={self.data.shape[2]}], '
                            f'got [{counts.min()}, {counts.max()}]')
        return counts.astype(np.int64)

    def frame_counts(self, items):
        """True frame counts (LongTensor) of the items a loader returned, or None when unknown."""
        if self.num_frame is None:
            return None
        return torch.from_numpy(self.num_frame[self.index[np.asarray(items)]])

    def _check_finite(self, path, chunk=1024):
        for start in range(0, self.data.shape[0], chunk):
            block = np.asarray(self.data[start:start + chunk])
            if not np.isfinite(block).all():
                bad = start + int(np.flatnonzero(~np.isfinite(block).reshape(len(block), -1).all(1))[0])
                raise DataError(f'{path}: clip {bad} contains NaN or inf values')

    @property
    def shape(self):
        return (len(self),) + tuple(self.data.shape[1:])

    @property
    def num_class(self):
        return max(self.label) + 1 if self.label and max(self.label) >= 0 else 0

    def names(self):
        return [self.sample_name[i] for i in self.index]

    def labels(self):
        return [self.label[i] for i in self.index]

    def __len__(self):
        return len(self.index)

    def __getitem__(self, item):
        i = int(self.index[item])
        clip = torch.from_numpy(np.array(self.data[i], dtype=np.float32))
        return clip, self.label[i], item


@FEEDERS.register('skeleton_semi', aliases=['feeder.ntu_feeder.Feeder_semi'])
class SemiArrayDataset(SkeletonArrayDataset):
    """`Feeder_semi`: as SkeletonArrayDataset, with the reference default label_percent 0.1."""

    def __init__(self, data_path, label_path=None, label_percent=0.1, **kwargs):
        super().__init__(data_path, label_path, label_percent=label_percent, **kwargs)

    # the parent's named arguments, so configs are still checked key by key
    __init__.__signature__ = inspect.signature(SkeletonArrayDataset.__init__).replace(parameters=[
        p.replace(default=0.1) if p.name == 'label_percent' else p
        for p in inspect.signature(SkeletonArrayDataset.__init__).parameters.values()])
