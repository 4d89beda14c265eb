"""Skeleton layouts: joint names, graph edges, centre joint, bones and left/right pairs.

The one place that knows what a skeleton looks like. The graph of an encoder (net/graph.py),
the bone stream (feeder/streams.py), the spatial flip (feeder/augment.py) and the plots all
ask `get_layout(spec)`, where `spec` is a built-in name (`ntu-rgb+d`, `nw-ucla`), a Layout,
or the path of a small YAML (or JSON) file that declares your own skeleton:

    name: kinect-v1                      # optional, for messages
    joints: [hip_centre, spine, ...]     # V names, in the order of the data's joint axis
    edges: [[spine, hip_centre], ...]    # (child, parent) bones, by name or 0-based index
    center: spine                        # ST-GCN 'spatial' partition centre
    flip: [[left_shoulder, right_shoulder], ...]   # (left, right) pairs: spatial flip, plot colours
    bones: [[spine, hip_centre], ...]    # optional: bone-stream pairs when they differ from edges

A converter's meta.json may hold the same mapping under the key `skeleton`.
"""
import functools
import json
import os
from dataclasses import dataclass

from torchlight.config import ConfigError


class LayoutError(ConfigError):
    """A bad layout name or file: the message names the file and the key at fault."""


@dataclass(frozen=True)
class Layout:
    name: str
    joints: tuple   # V joint names
    edges: tuple    # 0-based graph edges (child, parent)
    center: int
    bones: tuple    # 0-based (joint, parent) pairs of the bone stream; a root is its own parent
    flip: tuple     # 0-based (left, right) joint pairs

    @property
    def num_joints(self):
        return len(self.joints)

    @property
    def parents(self):
        """Parent of every joint for the bone stream; roots are their own parent (zero bone)."""
        parents = list(range(self.num_joints))
        for child, parent in self.bones:
            parents[child] = parent
        return parents

    @property
    def flip_map(self):
        """New joint v takes old joint flip_map[v]: left and right labels swapped."""
        order = list(range(self.num_joints))
        for left, right in self.flip:
            order[left], order[right] = right, left
        return tuple(order)

    def side(self, joint):
        """'left', 'right' or 'centre' (from the flip pairs), for plot colours."""
        if any(joint == left for left, _ in self.flip):
            return 'left'
        if any(joint == right for _, right in self.flip):
            return 'right'
        return 'centre'


def _zero_based(pairs_1based):
    return tuple((a - 1, b - 1) for a, b in pairs_1based)


# NTU RGB+D, 25 Kinect v2 joints (0-based names).
NTU_JOINTS = ('base_of_spine', 'middle_of_spine', 'neck', 'head', 'left_shoulder', 'left_elbow',
              'left_wrist', 'left_hand', 'right_shoulder', 'right_elbow', 'right_wrist', 'right_hand',
              'left_hip', 'left_knee', 'left_ankle', 'left_foot', 'right_hip', 'right_knee',
              'right_ankle', 'right_foot', 'spine_shoulder', 'left_hand_tip', 'left_thumb',
              'right_hand_tip', 'right_thumb')
# 1-based (joint, joint) graph edges, reference ST-GCN order.
NTU_EDGES_1BASED = (
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9),
    (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18),
    (20, 19), (22, 23), (23, 8), (24, 25), (25, 12),
)
# Bone stream pairs (v, u), 1-based, as the reference lists them: the bone of joint v is
# x_v - x_u; (21, 21) makes the root (spine-shoulder) a zero bone.
NTU_BONE_PAIRS_1BASED = NTU_EDGES_1BASED[:20] + ((21, 21),) + NTU_EDGES_1BASED[20:]
NTU_FLIP_PAIRS = ((4, 8), (5, 9), (6, 10), (7, 11), (12, 16), (13, 17), (14, 18), (15, 19),
                  (21, 23), (22, 24))

# NW-UCLA, 20 Kinect v1 joints (../shared/data/nw-ucla/README.md); edges = bones (child, parent).
NW_UCLA_JOINTS = ('hip_centre', 'spine', 'shoulder_centre', 'head', 'left_shoulder', 'left_elbow',
                  'left_wrist', 'left_hand', 'right_shoulder', 'right_elbow', 'right_wrist',
                  'right_hand', 'left_hip', 'left_knee', 'left_ankle', 'left_foot', 'right_hip',
                  'right_knee', 'right_ankle', 'right_foot')
NW_UCLA_EDGES = (
    (1, 0), (2, 1), (3, 2), (4, 2), (5, 4), (6, 5), (7, 6), (8, 2), (9, 8), (10, 9),
    (11, 10), (12, 0), (13, 12), (14, 13), (15, 14), (16, 0), (17, 16), (18, 17), (19, 18),
)
NW_UCLA_FLIP_PAIRS = ((4, 8), (5, 9), (6, 10), (7, 11), (12, 16), (13, 17), (14, 18), (15, 19))

NTU = 'ntu-rgb+d'
NW_UCLA = 'nw-ucla'
BUILTIN = {
    NTU: Layout(NTU, NTU_JOINTS, _zero_based(NTU_EDGES_1BASED), 20,
                _zero_based(NTU_BONE_PAIRS_1BASED), NTU_FLIP_PAIRS),
    NW_UCLA: Layout(NW_UCLA, NW_UCLA_JOINTS, NW_UCLA_EDGES, 2, NW_UCLA_EDGES, NW_UCLA_FLIP_PAIRS),
}


def is_layout_file(spec):
    return isinstance(spec, str) and spec not in BUILTIN and (
        spec.endswith(('.yaml', '.yml', '.json')) or os.path.sep in spec)


def get_layout(spec=None, num_joints=None):
    """The Layout of `spec` (built-in name, file path, Layout; None: the built-in layout with
    `num_joints` joints), checked against `num_joints` when given."""
    if isinstance(spec, Layout):
        layout = spec
    elif spec is None:
        matches = [layout for layout in BUILTIN.values() if layout.num_joints == num_joints]
        if not matches:
            counts = {name: layout.num_joints for name, layout in BUILTIN.items()}
            raise LayoutError(f'cannot infer the skeleton layout from V={num_joints} joints (built-in: '
                              f'{counts}); declare yours in a layout YAML (docs/DATA.md)')
        layout = matches[0]
    elif is_layout_file(spec):
        layout = load_layout(os.path.abspath(spec))
    elif spec in BUILTIN:
        layout = BUILTIN[spec]
    else:
        raise LayoutError(f'unknown skeleton layout {spec!r}: use one of {sorted(BUILTIN)} or the '
                          'path of a layout YAML (docs/DATA.md)')
    if num_joints is not None and layout.num_joints != num_joints:
        raise LayoutError(f'layout {layout.name!r} has V={layout.num_joints} joints, but the data has '
                          f'V={num_joints}')
    return layout


@functools.lru_cache(maxsize=None)
def load_layout(path):
    """Read and check a layout file (YAML, or JSON with the mapping at top level or under
    'skeleton')."""
    import yaml
    if not os.path.isfile(path):
        raise LayoutError(f'layout file not found: {path}')
    try:
        with open(path) as f:
            content = json.load(f) if path.endswith('.json') else yaml.safe_load(f)
    except Exception as err:
        raise LayoutError(f'cannot read layout file {path}: {err}') from None
    if isinstance(content, dict) and isinstance(content.get('skeleton'), dict):
        content = content['skeleton']
    return layout_from_dict(content, path)


def layout_from_dict(content, where='<layout>'):
    if not isinstance(content, dict):
        raise LayoutError(f'{where}: expected a mapping with joints, edges, center, flip')
    unknown = sorted(set(content) - {'name', 'joints', 'edges', 'center', 'flip', 'bones'})
    if unknown:
        raise LayoutError(f'{where}: unknown keys {unknown} (valid: name, joints, edges, center, flip, bones)')
    joints = content.get('joints')
    if isinstance(joints, int):   # a count: joints named by their index
        joints = [str(i) for i in range(joints)]
    if not (isinstance(joints, list) and joints):
        raise LayoutError(f"{where}: 'joints' must list the joint names (or give their number)")
    joints = tuple(str(j) for j in joints)
    if len(set(joints)) != len(joints):
        raise LayoutError(f"{where}: repeated joint names in 'joints'")

    def index(value, key):
        if isinstance(value, bool):
            value = None
        if isinstance(value, int) and 0 <= value < len(joints):
            return value
        if isinstance(value, str) and value in joints:
            return joints.index(value)
        raise LayoutError(f"{where}: {key}: {value!r} is not a joint name or a 0-based index < {len(joints)}")

    def pairs(key, required):
        value = content.get(key)
        if value is None:
            if required:
                raise LayoutError(f"{where}: missing '{key}' (a list of [joint, joint] pairs)")
            return None
        if not isinstance(value, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
            raise LayoutError(f"{where}: '{key}' must be a list of [joint, joint] pairs")
        return tuple((index(a, key), index(b, key)) for a, b in value)

    edges = pairs('edges', required=True)
    bones = pairs('bones', required=False) or edges
    children = [c for c, p in bones if c != p]
    if len(set(children)) != len(children):
        raise LayoutError(f"{where}: a joint is the child of two bones in '{'bones' if 'bones' in content else 'edges'}' "
                          '(each joint has one parent; list edges as [child, parent])')
    flip = pairs('flip', required=False) or ()
    flipped = [j for pair in flip for j in pair]
    if len(set(flipped)) != len(flipped) or any(a == b for a, b in flip):
        raise LayoutError(f"{where}: 'flip' pairs must name distinct joints, each at most once")
    if 'center' not in content:
        raise LayoutError(f"{where}: missing 'center' (the joint the graph partition is centred on)")
    center = index(content['center'], 'center')
    name = str(content.get('name') or os.path.splitext(os.path.basename(where))[0])
    return Layout(name, joints, edges, center, bones, flip)
