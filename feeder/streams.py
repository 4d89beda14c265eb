"""Input streams (joint, motion, bone) computed batched from joint clips (N, C, T, V, M).

Skeleton layouts (joint counts, bone trees) come from feeder/layouts.py; the names below are
kept for the modules and tests that import them from here.
"""
import torch

from feeder.layouts import (BUILTIN, NTU, NTU_BONE_PAIRS_1BASED, NW_UCLA, NW_UCLA_EDGES,  # noqa: F401
                            get_layout)

NUM_JOINTS = {name: layout.num_joints for name, layout in BUILTIN.items()}
NTU_BONES = BUILTIN[NTU].bones
NW_UCLA_BONES = NW_UCLA_EDGES   # (child, parent), 0-based; joint 0 (hip centre) is the root
BONES = {name: layout.bones for name, layout in BUILTIN.items()}
STREAMS = ('joint', 'motion', 'bone')


def infer_layout(num_joints, layout=None):
    """The name of `layout` (built-in name or layout file, checked against `num_joints`), or of
    the built-in layout with `num_joints` joints."""
    return get_layout(layout, num_joints).name


def parent_index(layout):
    """(V,) long tensor: parent of every joint; roots are their own parent (zero bone)."""
    return torch.tensor(get_layout(layout).parents, dtype=torch.long)


def joint_to_motion(x):
    """m[t] = x[t+1] - x[t]; the last frame has no successor and is zero."""
    motion = torch.zeros_like(x)
    torch.sub(x[:, :, 1:], x[:, :, :-1], out=motion[:, :, :-1])
    return motion


def joint_to_bone(x, layout=None):
    """b[v] = x[v] - x[parent(v)] for every joint; roots get a zero bone."""
    parents = parent_index(get_layout(layout, x.shape[3])).to(x.device)
    return x - x.index_select(3, parents)


def to_stream(x, stream, layout=None):
    """Convert joint clips (N, C, T, V, M) to `stream` ('joint' returns x itself)."""
    if x.dim() != 5:
        raise ValueError(f'expected clips of shape (N, C, T, V, M), got {tuple(x.shape)}')
    if stream == 'joint':
        return x
    if stream == 'motion':
        return joint_to_motion(x)
    if stream == 'bone':
        return joint_to_bone(x, layout)
    raise ValueError(f'unknown stream {stream!r}; valid: {", ".join(STREAMS)}')
