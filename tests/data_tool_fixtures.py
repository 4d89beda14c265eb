"""Builders of small raw inputs in the official formats, shared by the data-tool tests."""

import json
import os
import sys

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def body_info_line(body_id):
    # bodyID clipedEdges handLeftConfidence handLeftState handRightConfidence handRightState
    # isRestricted leanX leanY trackingState
    return f'{body_id} 0 1 1 1 1 0 0.1 -0.2 2'


def joint_line(xyz):
    x, y, z = xyz
    # x y z depthX depthY colorX colorY orientationW orientationX orientationY orientationZ state
    return f'{x:.6f} {y:.6f} {z:.6f} 250.1 200.2 900.3 500.4 0.5 0.1 0.2 0.3 2'


def skeleton_text(frames, num_joints=25):
    """`frames`: list over frames of lists of (num_joints, 3) arrays, one per body."""
    lines = [str(len(frames))]
    for bodies in frames:
        lines.append(str(len(bodies)))
        for index, body in enumerate(bodies):
            lines.append(body_info_line(72057594037930000 + index))
            lines.append(str(num_joints))
            lines.extend(joint_line(xyz) for xyz in np.asarray(body).reshape(-1, 3))
    return '\n'.join(lines) + '\n'


def write_skeleton(folder, name, frames, **kwargs):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name + '.skeleton')
    with open(path, 'w') as f:
        f.write(skeleton_text(frames, **kwargs))
    return path


def rounded(values):
    """Values as written with 6 decimals and read back in float64, then stored as float32."""
    return np.round(np.asarray(values, dtype=np.float64), 6).astype(np.float32)


def random_body(rng, num_joints=25, scale=1.0, offset=(0.0, 0.0, 3.0)):
    return rounded(rng.normal(size=(num_joints, 3)) * scale + np.asarray(offset))


def write_json(path, obj):
    with open(path, 'w') as f:
        json.dump(obj, f)
