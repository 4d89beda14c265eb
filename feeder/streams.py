"""Input streams (joint, motion, bone) computed batched from joint clips (N, C, T, V, M).

Also the single source of skeleton-layout knowledge (joint counts, bone trees) that other
modules import.
"""
import torch

NTU = 'ntu-rgb+d'
NW_UCLA = 'nw-ucla'
NUM_JOINTS = {NTU: 25, NW_UCLA: 20}

# NTU RGB+D bones as (v, u) 1-based pairs, exactly as the reference lists them: the bone of
# joint v is x_v - x_u. (21, 21) makes the root (spine-shoulder) a zero bone.
NTU_BONE_PAIRS_1BASED = (
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9),
    (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18),
    (20, 19), (21, 21), (22, 23), (23, 8), (24, 25), (25, 12),
)
NTU_BONES = tuple((v - 1, u - 1) for v, u in NTU_BONE_PAIRS_1BASED)

# NW-UCLA (Kinect v1) bones as (child, parent), 0-based; joint 0 (hip centre) is the root.
NW_UCLA_BONES = (
    (1, 0), (2, 1), (3, 2), (4, 2), (5, 4), (6, 5), (7, 6), (8, 2), (9, 8), (10, 9),
    (11, 10), (12, 0), (13, 12), (14, 13), (15, 14), (16, 0), (17, 16), (18, 17), (19, 18),
)

BONES = {NTU: NTU_BONES, NW_UCLA: NW_UCLA_BONES}
STREAMS = ('joint', 'motion', 'bone')


def infer_layout(num_joints, layout=None):
    """Return `layout` if given (validated), else the layout whose joint count is `num_joints`."""
    if layout is not None:
        if layout not in NUM_JOINTS:
            raise ValueError(f'unknown layout {layout!r}; valid: {sorted(NUM_JOINTS)}')
        if NUM_JOINTS[layout] != num_joints:
            raise ValueError(f'layout {layout!r} has {NUM_JOINTS[layout]} joints, '
                             f'got V={num_joints}')
        return layout
    for name, count in NUM_JOINTS.items():
        if count == num_joints:
            return name
    raise ValueError(f'cannot infer the skeleton layout from V={num_joints}; '
                     f'known joint counts: {NUM_JOINTS}')


def parent_index(layout):
    """(V,) long tensor: parent of every joint; roots are their own parent (zero bone)."""
    parents = list(range(NUM_JOINTS[layout]))
    for child, parent in BONES[layout]:
        parents[child] = parent
    return torch.tensor(parents, dtype=torch.long)


def joint_to_motion(x):
    """m[t] = x[t+1] - x[t]; the last frame has no successor and is zero."""
    motion = torch.zeros_like(x)
    torch.sub(x[:, :, 1:], x[:, :, :-1], out=motion[:, :, :-1])
    return motion


def joint_to_bone(x, layout=None):
    """b[v] = x[v] - x[parent(v)] for every joint; roots get a zero bone."""
    layout = infer_layout(x.shape[3], layout)
    parents = parent_index(layout).to(x.device)
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
