"""Built-in demo dataset: synthetic skeleton actions on the NTU RGB+D 25-joint layout.

Every clip comes from a small kinematic model: a rest pose built from bone lengths, joint
angles per frame as smooth functions of an action phase, and forward kinematics to 3-D
camera-space positions (metres; x right, y up, z depth away from the camera). Bodies differ
by subject (size and limb proportions), viewpoint, position, speed, phase, amplitude, idle
sway and sensor noise; about 30% of the clips show a second person (body slot M=1) doing the
same action or idling. Train and test use disjoint subjects (a cross-subject split).

    python tools/make_demo_data.py --out_folder data/demo [--num_train 1200] [--num_val 400]
        [--frames 50] [--seed 0] [--overwrite]

Writes train_data.npy / val_data.npy (float32, N x 3 x T x 25 x 2), train_label.pkl /
val_label.pkl ((sample_names, labels) with 0-based labels), classes.txt and meta.json.
"""
import argparse
import json
import os
import pickle
import sys
import tempfile
import time

import numpy as np

GENERATOR_VERSION = 1
NUM_JOINTS = 25
NUM_BODIES = 2
PARTNER_RATE = 0.3            # share of clips with a second person
PARTNER_SAME_ACTION = 0.5     # of those, share where the partner does the action too
NOISE_STD = 0.01              # metres, per coordinate (Kinect-like jitter)
NUM_SUBJECTS = 40
TRAIN_SUBJECTS = tuple(range(1, 29))    # subject ids 1..28 train, 29..40 test
TEST_SUBJECTS = tuple(range(29, 41))
IDLE = -1                     # action code of a partner who just stands there

# ----------------------------------------------------------------------------- skeleton
# 0-based joint indices of the Kinect v2 / NTU layout.
SPINE_BASE, SPINE_MID, NECK, HEAD = 0, 1, 2, 3
L_SHOULDER, L_ELBOW, L_WRIST, L_HAND = 4, 5, 6, 7
R_SHOULDER, R_ELBOW, R_WRIST, R_HAND = 8, 9, 10, 11
L_HIP, L_KNEE, L_ANKLE, L_FOOT = 12, 13, 14, 15
R_HIP, R_KNEE, R_ANKLE, R_FOOT = 16, 17, 18, 19
SPINE_SHOULDER, L_HAND_TIP, L_THUMB, R_HAND_TIP, R_THUMB = 20, 21, 22, 23, 24

JOINT_NAMES = (
    'spine base', 'spine mid', 'neck', 'head',
    'left shoulder', 'left elbow', 'left wrist', 'left hand',
    'right shoulder', 'right elbow', 'right wrist', 'right hand',
    'left hip', 'left knee', 'left ankle', 'left foot',
    'right hip', 'right knee', 'right ankle', 'right foot',
    'spine shoulder', 'left hand tip', 'left thumb', 'right hand tip', 'right thumb')

# NTU bone list, 1-based (child, parent), as used by ST-GCN.
NTU_BONES = ((1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21),
             (10, 9), (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1),
             (18, 17), (19, 18), (20, 19), (22, 23), (23, 8), (24, 25), (25, 12))

# Kinematic tree of the model: joint -> (parent, rest direction in the parent's frame,
# bone length in metres for a ~1.70 m adult). Body frame: x = the person's right, y up,
# z backwards, so a person facing the camera looks along -z. Each joint carries the
# rotation of the bone that ends at it (the upper-arm swing lives on the elbow joint).
BONES = {
    SPINE_MID: (SPINE_BASE, (0, 1, 0), 0.28),
    SPINE_SHOULDER: (SPINE_MID, (0, 1, 0), 0.24),
    NECK: (SPINE_SHOULDER, (0, 1, -0.05), 0.07),
    HEAD: (NECK, (0, 1, -0.1), 0.13),
    L_SHOULDER: (SPINE_SHOULDER, (-1, -0.25, 0), 0.17),
    L_ELBOW: (L_SHOULDER, (0, -1, 0), 0.27),
    L_WRIST: (L_ELBOW, (0, -1, 0), 0.25),
    L_HAND: (L_WRIST, (0, -1, 0), 0.08),
    L_HAND_TIP: (L_HAND, (0, -1, 0), 0.07),
    L_THUMB: (L_HAND, (0.4, -0.6, -0.7), 0.05),
    R_SHOULDER: (SPINE_SHOULDER, (1, -0.25, 0), 0.17),
    R_ELBOW: (R_SHOULDER, (0, -1, 0), 0.27),
    R_WRIST: (R_ELBOW, (0, -1, 0), 0.25),
    R_HAND: (R_WRIST, (0, -1, 0), 0.08),
    R_HAND_TIP: (R_HAND, (0, -1, 0), 0.07),
    R_THUMB: (R_HAND, (-0.4, -0.6, -0.7), 0.05),
    L_HIP: (SPINE_BASE, (-1, -0.6, 0), 0.095),
    L_KNEE: (L_HIP, (0, -1, 0), 0.42),
    L_ANKLE: (L_KNEE, (0, -1, 0), 0.40),
    L_FOOT: (L_ANKLE, (0, -0.45, -1), 0.13),
    R_HIP: (SPINE_BASE, (1, -0.6, 0), 0.095),
    R_KNEE: (R_HIP, (0, -1, 0), 0.42),
    R_ANKLE: (R_KNEE, (0, -1, 0), 0.40),
    R_FOOT: (R_ANKLE, (0, -0.45, -1), 0.13),
}
PARENT = np.full(NUM_JOINTS, -1)
REST_DIRECTION = np.zeros((NUM_JOINTS, 3))
REST_LENGTH = np.zeros(NUM_JOINTS)
for _joint, (_parent, _direction, _length) in BONES.items():
    PARENT[_joint] = _parent
    REST_DIRECTION[_joint] = np.asarray(_direction, float) / np.linalg.norm(_direction)
    REST_LENGTH[_joint] = _length
# Parents before children.
FK_ORDER = (SPINE_BASE, SPINE_MID, SPINE_SHOULDER, NECK, HEAD,
            L_SHOULDER, L_ELBOW, L_WRIST, L_HAND, L_HAND_TIP, L_THUMB,
            R_SHOULDER, R_ELBOW, R_WRIST, R_HAND, R_HAND_TIP, R_THUMB,
            L_HIP, L_KNEE, L_ANKLE, L_FOOT, R_HIP, R_KNEE, R_ANKLE, R_FOOT)

# Bones whose lengths vary together within a subject (limb-proportion jitter).
PROPORTION_GROUPS = {
    'trunk': (SPINE_MID, SPINE_SHOULDER, NECK, HEAD),
    'shoulders': (L_SHOULDER, R_SHOULDER),
    'arms': (L_ELBOW, L_WRIST, L_HAND, L_HAND_TIP, L_THUMB,
             R_ELBOW, R_WRIST, R_HAND, R_HAND_TIP, R_THUMB),
    'hips': (L_HIP, R_HIP),
    'legs': (L_KNEE, L_ANKLE, L_FOOT, R_KNEE, R_ANKLE, R_FOOT),
}

# Angle slots per joint: rotation about x (flexion: +x swings a hanging limb forward),
# y (turn about the vertical) and z (sideways; +z swings a hanging limb to the person's right).
RX, RY, RZ = 0, 1, 2
SIDES = {'left': -1.0, 'right': 1.0}
UPPER_ARM = {'left': L_ELBOW, 'right': R_ELBOW}
FOREARM = {'left': L_WRIST, 'right': R_WRIST}
HAND = {'left': L_HAND, 'right': R_HAND}
THIGH = {'left': L_KNEE, 'right': R_KNEE}
SHANK = {'left': L_ANKLE, 'right': R_ANKLE}
FOOT = {'left': L_FOOT, 'right': R_FOOT}
FEET = (L_ANKLE, L_FOOT, R_ANKLE, R_FOOT)
# Kinect tracks hands and feet worst: their noise is this many times NOISE_STD.
NOISY_JOINTS = (L_HAND, L_HAND_TIP, L_THUMB, R_HAND, R_HAND_TIP, R_THUMB, L_FOOT, R_FOOT)
EXTREMITY_NOISE = 2.0
NOISE_SCALE = np.ones(NUM_JOINTS)
NOISE_SCALE[list(NOISY_JOINTS)] = EXTREMITY_NOISE
# Bones that get a small per-clip posture offset (the rest stay rigidly attached).
POSTURE_JOINTS = (SPINE_MID, SPINE_SHOULDER, NECK, HEAD, L_ELBOW, L_WRIST, L_HAND,
                  R_ELBOW, R_WRIST, R_HAND, L_KNEE, L_ANKLE, R_KNEE, R_ANKLE)

# Camera setups (height above the floor in metres, pitch in degrees); S### in sample names.
CAMERA_SETUPS = ((0.8, 3.0), (1.0, -2.0), (1.2, -5.0), (1.4, -8.0))


# ----------------------------------------------------------------------------- rotations
def rotation_x(angle):
    c, s, one, zero = np.cos(angle), np.sin(angle), np.ones_like(angle), np.zeros_like(angle)
    return np.stack([one, zero, zero, zero, c, -s, zero, s, c], -1).reshape(angle.shape + (3, 3))


def rotation_y(angle):
    c, s, one, zero = np.cos(angle), np.sin(angle), np.ones_like(angle), np.zeros_like(angle)
    return np.stack([c, zero, s, zero, one, zero, -s, zero, c], -1).reshape(angle.shape + (3, 3))


def rotation_z(angle):
    c, s, one, zero = np.cos(angle), np.sin(angle), np.ones_like(angle), np.zeros_like(angle)
    return np.stack([c, -s, zero, s, c, zero, zero, zero, one], -1).reshape(angle.shape + (3, 3))


def joint_rotation(angles):
    """(..., 3) angles (rx, ry, rz) -> (..., 3, 3) = Ry @ Rx @ Rz: sideways swing first, then
    forward flexion, then a turn about the vertical (what clapping arms do). Written out
    in closed form because it is the hot spot of the generator."""
    cx, sx = np.cos(angles[..., RX]), np.sin(angles[..., RX])
    cy, sy = np.cos(angles[..., RY]), np.sin(angles[..., RY])
    cz, sz = np.cos(angles[..., RZ]), np.sin(angles[..., RZ])
    return np.stack([cy * cz + sy * sx * sz, sy * sx * cz - cy * sz, sy * cx,
                     cx * sz, cx * cz, -sx,
                     cy * sx * sz - sy * cz, sy * sz + cy * sx * cz, cy * cx],
                    -1).reshape(angles.shape[:-1] + (3, 3))


def forward_kinematics(angles, bone_lengths):
    """angles (n, T, V, 3), bone_lengths (n, V) -> joint positions (n, T, V, 3) in the body
    frame with the spine base at the origin. Joint j's rotation turns the bone parent->j
    and everything below it."""
    n, frames = angles.shape[:2]
    position = {SPINE_BASE: np.zeros((n, frames, 3))}
    orientation = {SPINE_BASE: joint_rotation(angles[:, :, SPINE_BASE])}
    for joint in FK_ORDER[1:]:
        parent = PARENT[joint]
        if angles[:, :, joint].any():
            orientation[joint] = orientation[parent] @ joint_rotation(angles[:, :, joint])
        else:       # rigid attachment (hand tips, thumbs, hips): skip the identity rotation
            orientation[joint] = orientation[parent]
        offset = bone_lengths[:, joint, None] * REST_DIRECTION[joint]             # (n, 3)
        position[joint] = position[parent] + (orientation[joint] @ offset[:, None, :, None])[..., 0]
    return np.stack([position[joint] for joint in range(NUM_JOINTS)], axis=2)


# ----------------------------------------------------------------------------- subjects
def make_subjects(rng, count=NUM_SUBJECTS):
    """Body identities: (count, V) bone lengths (overall scale x group proportion jitter) and
    personal style factors for amplitude and speed."""
    scale = rng.uniform(0.85, 1.15, count)
    lengths = np.tile(REST_LENGTH, (count, 1)) * scale[:, None]
    for bones in PROPORTION_GROUPS.values():
        lengths[:, list(bones)] *= rng.uniform(0.92, 1.08, (count, 1))
    return {'scale': scale, 'bone_lengths': lengths,
            'amplitude': rng.uniform(0.85, 1.15, count),
            'speed': rng.uniform(0.85, 1.15, count)}


# ----------------------------------------------------------------------------- motions
def pulse(phase, center=0.0, sharpness=1.0):
    """Smooth periodic bump in [0, 1]: 1 at `center`, 0 half a cycle away; higher
    sharpness makes it narrower (about 2 / sqrt(sharpness) radians wide)."""
    return ((1.0 + np.cos(phase - center)) / 2.0) ** sharpness


# Motions add joint angles to a relaxed pose. Arguments: angles (n, T, V, 3) changed in
# place, phase (n, T) in radians with the main event at 0, amp (n, 1) amplitude factor,
# style (n, 1) in [-1, 1] that varies how the motion is done (arm height, lean, ...).
# A motion may return a jump height (n, T) in metres for a 1.70 m person.

def wave(angles, phase, amp, style, side):
    s = SIDES[side]
    angles[:, :, UPPER_ARM[side], RZ] += s * (1.35 + 0.3 * style)     # elbow at shoulder height or above
    angles[:, :, UPPER_ARM[side], RX] += 0.25 - 0.15 * style
    angles[:, :, FOREARM[side], RX] -= 0.15                          # undo the idle elbow bend
    angles[:, :, FOREARM[side], RZ] += s * (1.55 + 0.5 * amp * np.sin(phase))
    angles[:, :, HAND[side], RZ] += s * 0.25 * amp * np.sin(phase - 0.8)   # the hand lags


def raise_hand(angles, phase, amp, style, side='right'):
    """Arm held up overhead, with a slow small drift."""
    s = SIDES[side]
    angles[:, :, UPPER_ARM[side], RZ] += s * (2.8 + 0.12 * style + 0.08 * amp * np.sin(phase))
    angles[:, :, UPPER_ARM[side], RX] += 0.2 - 0.15 * style
    angles[:, :, FOREARM[side], RZ] += s * (0.2 - 0.15 * style)
    angles[:, :, FOREARM[side], RX] -= 0.15


def clap(angles, phase, amp, style):
    together = pulse(phase, 0.0, 2.0) * amp
    for side, s in SIDES.items():
        angles[:, :, UPPER_ARM[side], RX] += 1.2 + 0.3 * style       # clap at belly to face height
        angles[:, :, UPPER_ARM[side], RY] += s * (0.02 + 0.3 * together)
        angles[:, :, UPPER_ARM[side], RZ] -= s * 0.1                  # undo the idle abduction
        angles[:, :, FOREARM[side], RX] += 0.5 - 0.2 * style


def push(angles, phase, amp, style):
    """Both hands push forward from the chest, together."""
    extend = pulse(phase, 0.0, 3.0) * amp
    for side, s in SIDES.items():
        angles[:, :, UPPER_ARM[side], RX] += 0.4 + 0.15 * style + 0.9 * extend
        angles[:, :, UPPER_ARM[side], RY] += s * 0.15
        angles[:, :, FOREARM[side], RX] += 1.8 * (1.0 - extend)
    angles[:, :, SPINE_MID, RX] -= 0.15 * extend                      # lean into the push


def squat(angles, phase, amp, style):
    depth = pulse(phase, 0.0, 1.0) * amp
    for side in SIDES:
        angles[:, :, THIGH[side], RX] += 1.5 * depth
        angles[:, :, SHANK[side], RX] -= 2.0 * depth
        angles[:, :, FOOT[side], RX] += 0.5 * depth                   # keep the foot flat
        angles[:, :, UPPER_ARM[side], RX] += (1.0 + 0.4 * style) * depth   # arms forward for balance
    angles[:, :, SPINE_MID, RX] -= (0.5 - 0.2 * style) * depth        # lean forward
    angles[:, :, HEAD, RX] += 0.3 * depth


def jump(angles, phase, amp, style):
    """Crouch, take off (flight centred at phase 0), land; returns the flight height."""
    crouch = pulse(phase, np.pi, 2.0) * amp
    flight = pulse(phase, 0.0, 8.0)
    arms_up = 2.0 + 0.6 * style
    for side in SIDES:
        angles[:, :, THIGH[side], RX] += 1.0 * crouch + 0.3 * flight
        angles[:, :, SHANK[side], RX] -= 1.5 * crouch + 0.5 * flight
        angles[:, :, FOOT[side], RX] += 0.5 * crouch - 0.4 * flight   # toes point down in the air
        angles[:, :, UPPER_ARM[side], RX] += arms_up * flight * amp - 0.6 * crouch
    angles[:, :, SPINE_MID, RX] -= 0.4 * crouch
    return 0.3 * amp * flight


def kick(angles, phase, amp, style, side='right'):
    s, other = SIDES[side], 'left' if side == 'right' else 'right'
    extend = pulse(phase, 0.0, 3.0) * amp
    chamber = pulse(phase, -0.7, 6.0) * amp * (0.7 + 0.3 * style)    # knee drawn up first
    angles[:, :, THIGH[side], RX] += (1.2 + 0.25 * style) * extend + 0.6 * chamber
    angles[:, :, SHANK[side], RX] -= 1.6 * chamber
    angles[:, :, FOOT[side], RX] -= 0.4 * extend
    angles[:, :, SPINE_MID, RX] += 0.2 * extend                        # lean back against the kick
    angles[:, :, UPPER_ARM[side], RZ] += s * 0.4 * extend
    angles[:, :, UPPER_ARM[other], RZ] -= s * 0.4 * extend
    angles[:, :, UPPER_ARM[other], RX] += 0.4 * extend


def bow(angles, phase, amp, style):
    depth = pulse(phase, 0.0, 2.0) * amp
    angles[:, :, SPINE_MID, RX] -= (0.9 + 0.2 * style) * depth
    angles[:, :, SPINE_SHOULDER, RX] -= 0.25 * depth
    angles[:, :, HEAD, RX] -= 0.2 * depth
    for side in SIDES:
        angles[:, :, UPPER_ARM[side], RX] += (0.6 + 0.3 * style) * depth   # arms hang down


def walk_in_place(angles, phase, amp, style):
    lift = {'left': pulse(phase, np.pi / 2, 2.0) * amp, 'right': pulse(phase, -np.pi / 2, 2.0) * amp}
    knee_up = 0.9 + 0.25 * style
    for side, other in (('left', 'right'), ('right', 'left')):
        angles[:, :, THIGH[side], RX] += knee_up * lift[side]
        angles[:, :, SHANK[side], RX] -= 1.5 * lift[side]
        angles[:, :, FOOT[side], RX] += 0.3 * lift[side]
        angles[:, :, UPPER_ARM[side], RX] += 0.5 * (lift[other] - lift[side])   # opposite arm swings
        angles[:, :, FOREARM[side], RX] += 0.4 + 0.2 * style


def arm_circles(angles, phase, amp, style):
    for side, s in SIDES.items():
        angles[:, :, UPPER_ARM[side], RZ] += s * (1.4 + 0.15 * style + 0.4 * amp * np.cos(phase))
        angles[:, :, UPPER_ARM[side], RY] += s * 0.4 * amp * np.sin(phase)     # forward/back
        angles[:, :, FOREARM[side], RX] -= 0.15


def punch(angles, phase, amp, style, side='right'):
    s = SIDES[side]
    strike = pulse(phase, 0.0, 6.0) * amp
    for guard_side in SIDES:                                   # both fists up in guard
        angles[:, :, UPPER_ARM[guard_side], RX] += 0.35 + 0.15 * style
        angles[:, :, FOREARM[guard_side], RX] += 1.9
    angles[:, :, UPPER_ARM[side], RX] += 1.15 * strike
    angles[:, :, UPPER_ARM[side], RZ] -= s * 0.25 * strike    # aim at the midline
    angles[:, :, FOREARM[side], RX] -= 1.9 * strike
    angles[:, :, SPINE_SHOULDER, RY] += s * 0.3 * strike      # the punching shoulder leads


def on_side(motion, side):
    return lambda angles, phase, amp, style: motion(angles, phase, amp, style, side)


# name, motion, period range in frames (before subject/sample speed factors)
ACTIONS = (
    ('wave left hand', on_side(wave, 'left'), (10, 16)),
    ('wave right hand', on_side(wave, 'right'), (10, 16)),
    ('raise right hand', raise_hand, (30, 60)),
    ('clap', clap, (8, 13)),
    ('push', push, (18, 28)),
    ('punch', punch, (14, 22)),
    ('squat', squat, (30, 44)),
    ('jump', jump, (24, 34)),
    ('kick', kick, (28, 40)),
    ('bow', bow, (36, 52)),
    ('walk in place', walk_in_place, (16, 24)),
    ('arm circles', arm_circles, (16, 26)),
)
CLASS_NAMES = tuple(name for name, _, _ in ACTIONS)
NUM_CLASSES = len(ACTIONS)


def idle_angles(rng, n, frames):
    """Relaxed standing pose with a per-clip posture offset and a slow sway."""
    angles = np.zeros((n, frames, NUM_JOINTS, 3))
    angles[:, :, POSTURE_JOINTS] = rng.normal(0.0, 0.07, (n, 1, len(POSTURE_JOINTS), 3))
    t = np.arange(frames)[None, :]
    for side, s in SIDES.items():
        angles[:, :, UPPER_ARM[side], RZ] += s * 0.1
        angles[:, :, FOREARM[side], RX] += 0.15
    for joint, axis, size in ((SPINE_BASE, RZ, 0.03), (SPINE_BASE, RX, 0.02), (HEAD, RX, 0.05)):
        period = rng.uniform(50, 120, (n, 1))
        offset = rng.uniform(0, 2 * np.pi, (n, 1))
        angles[:, :, joint, axis] += size * np.sin(2 * np.pi * t / period + offset)
    return angles


# ----------------------------------------------------------------------------- one body
def activity_window(rng, n, frames, ramp=6.0):
    """When the action happens: an envelope (n, T) that ramps smoothly from idle (0) to the
    full action (1) and back, covering 60-100% of the clip at a random place, and the time
    of the action's main event (n,) near the middle of the visible part."""
    start = rng.uniform(-0.2, 0.3, n) * frames
    stop = start + rng.uniform(0.6, 1.2, n) * frames
    t = np.arange(frames)[None, :]
    rise = np.clip((t - start[:, None]) / ramp, 0.0, 1.0)
    fall = np.clip((stop[:, None] - t) / ramp, 0.0, 1.0)
    envelope = smoothstep(rise) * smoothstep(fall)
    first, last = np.maximum(start, 0), np.minimum(stop, frames - 1)
    event = (first + last) / 2 + rng.uniform(-0.2, 0.2, n) * (last - first)
    return envelope, event


def smoothstep(x):
    return x * x * (3.0 - 2.0 * x)


def animate(rng, actions, subjects, subject_index, frames):
    """Body-frame joint positions (n, T, V, 3): feet on the floor (y = 0), supporting feet
    at x = z = 0, facing -z. actions: class index per body or IDLE."""
    n = len(actions)
    angles = idle_angles(rng, n, frames)
    height = np.zeros((n, frames))
    speed = rng.uniform(0.75, 1.3, n) * subjects['speed'][subject_index]
    amplitude = rng.uniform(0.65, 1.2, n) * subjects['amplitude'][subject_index]
    style = rng.uniform(-1.0, 1.0, (n, 1))
    envelope, event = activity_window(rng, n, frames)
    t = np.arange(frames)
    for label, (_, motion, (shortest, longest)) in enumerate(ACTIONS):
        members = np.flatnonzero(actions == label)
        if len(members) == 0:
            continue
        period = rng.uniform(shortest, longest, len(members)) / speed[members]
        # Phase 0 is each motion's main event (the squat's bottom, the kick, the bow).
        phase = 2 * np.pi * (t[None, :] - event[members, None]) / period[:, None]
        idle = angles[members]
        moving = idle.copy()
        lift = motion(moving, phase, amplitude[members, None], style[members])
        active = envelope[members]
        angles[members] = idle + active[:, :, None, None] * (moving - idle)
        if lift is not None:
            height[members] = lift * active * subjects['scale'][subject_index[members], None]
    positions = forward_kinematics(angles, subjects['bone_lengths'][subject_index])
    return stand_on_floor(positions, height)


def stand_on_floor(positions, height):
    """Put the lowest foot joint on y = 0 (plus any jump height) and keep the supporting
    feet in place horizontally, so squats and kicks do not slide the body."""
    feet = positions[:, :, FEET]                                     # (n, T, 4, 3)
    floor = feet[..., 1].min(axis=2)                                 # (n, T)
    support = np.exp(-(feet[..., 1] - floor[..., None]) / 0.03)     # grounded feet weigh most
    anchor = (support[..., None] * feet).sum(2) / support.sum(2)[..., None]
    shift = np.stack([-anchor[..., 0], height - floor, -anchor[..., 2]], -1)
    return positions + shift[:, :, None, :]


# ----------------------------------------------------------------------------- scene
def place_in_camera(positions, yaw, origin, pitch):
    """Turn a body about its vertical axis, move it to `origin` (camera space, floor level)
    and apply the camera pitch. positions (n, T, V, 3); yaw, pitch (n,); origin (n, 3)."""
    pitch_matrix = rotation_x(pitch)
    rotation = pitch_matrix @ rotation_y(yaw)
    shift = np.einsum('nab,nb->na', pitch_matrix, origin)
    return np.einsum('nab,ntvb->ntva', rotation, positions) + shift[:, None, None, :]


def to_channels_first(positions, rng, noise_std):
    """(n, T, V, 3) positions plus sensor noise -> float32 (n, 3, T, V)."""
    noise = rng.normal(0.0, noise_std, positions.shape) * NOISE_SCALE[:, None]
    noisy = positions + noise
    return noisy.transpose(0, 3, 1, 2).astype(np.float32)


def balanced_labels(rng, count):
    """Every class equally often (up to one), in random order."""
    return rng.permutation(np.arange(count) % NUM_CLASSES)


def generate_split(rng, count, subjects, subject_ids, frames, first_index, noise_std=NOISE_STD):
    """Clips of one split: data (count, 3, T, V, 2) float32, names, labels, subject ids
    (count, 2) with 0 for an absent body."""
    labels = balanced_labels(rng, count)
    pool = np.asarray(subject_ids)
    main_pick = rng.integers(0, len(pool), count)
    main_subject = pool[main_pick] - 1                     # rows of the subject table
    setup = rng.integers(0, len(CAMERA_SETUPS), count)
    camera_height = np.array([CAMERA_SETUPS[i][0] for i in setup]) + rng.normal(0, 0.05, count)
    pitch = np.radians(np.array([CAMERA_SETUPS[i][1] for i in setup]) + rng.normal(0, 1.5, count))
    yaw = np.radians(rng.uniform(-45, 45, count))
    origin = np.stack([rng.uniform(-0.4, 0.4, count), -camera_height,
                       rng.uniform(2.7, 3.6, count)], -1)

    data = np.zeros((count, 3, frames, NUM_JOINTS, NUM_BODIES), np.float32)
    main = animate(rng, labels, subjects, main_subject, frames)
    data[..., 0] = to_channels_first(place_in_camera(main, yaw, origin, pitch), rng, noise_std)

    partnered = np.flatnonzero(rng.random(count) < PARTNER_RATE)
    partner_subject = np.full(count, -1)
    if len(partnered):
        # Another subject of the same split, side by side with the main actor.
        other_pick = (main_pick[partnered] + rng.integers(1, len(pool), len(partnered))) % len(pool)
        partner_subject[partnered] = pool[other_pick] - 1
        same = rng.random(len(partnered)) < PARTNER_SAME_ACTION
        partner_action = np.where(same, labels[partnered], IDLE)
        partner = animate(rng, partner_action, subjects, partner_subject[partnered], frames)
        side = rng.choice([-1.0, 1.0], len(partnered))
        shift = np.stack([side * rng.uniform(0.8, 1.2, len(partnered)), np.zeros(len(partnered)),
                          rng.uniform(-0.3, 0.3, len(partnered))], -1)
        partner_yaw = yaw[partnered] + np.radians(rng.normal(0, 10, len(partnered)))
        # The pair turns as a whole, so the partner's offset turns with the main actor.
        partner_origin = origin[partnered] + np.einsum('nab,nb->na', rotation_y(yaw[partnered]), shift)
        placed = place_in_camera(partner, partner_yaw, partner_origin, pitch[partnered])
        data[partnered, ..., 1] = to_channels_first(placed, rng, noise_std)

    subject_number = np.stack([main_subject + 1, partner_subject + 1], -1)
    names = [f'demo_S{setup[i] + 1:03d}P{subject_number[i, 0]:03d}A{labels[i] + 1:03d}_'
             f'{first_index + i:04d}' for i in range(count)]
    return {'data': data, 'names': names, 'labels': [int(x) for x in labels],
            'subjects': subject_number}


def generate_dataset(num_train=1200, num_val=400, frames=50, seed=0, noise_std=NOISE_STD):
    """Both splits in memory: {'train': split, 'val': split} (see generate_split)."""
    subject_seed, train_seed, val_seed = np.random.SeedSequence(seed).spawn(3)
    subjects = make_subjects(np.random.default_rng(subject_seed))
    train = generate_split(np.random.default_rng(train_seed), num_train, subjects,
                           TRAIN_SUBJECTS, frames, first_index=1, noise_std=noise_std)
    val = generate_split(np.random.default_rng(val_seed), num_val, subjects,
                         TEST_SUBJECTS, frames, first_index=num_train + 1, noise_std=noise_std)
    return {'train': train, 'val': val}


# ----------------------------------------------------------------------------- files
OUTPUT_FILES = ('train_data.npy', 'train_label.pkl', 'val_data.npy', 'val_label.pkl',
                'classes.txt', 'meta.json')


class ExistingDatasetError(RuntimeError):
    """The output folder already holds a dataset and --overwrite was not given."""


def existing_dataset_files(out_folder):
    return [name for name in OUTPUT_FILES if os.path.exists(os.path.join(out_folder, name))]


def _write_temp(folder, name, write):
    """Write through `write(file)` to a temporary file in `folder`; returns its path."""
    fd, tmp = tempfile.mkstemp(prefix='.' + name + '.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())    # mkstemp makes owner-only files
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_dataset(out_folder, dataset, seed, frames, overwrite=False):
    """All files are written under temporary names first and then renamed, so a crash never
    leaves a half-written dataset; other files in the folder are left alone."""
    os.makedirs(out_folder, exist_ok=True)
    existing = existing_dataset_files(out_folder)
    if existing and not overwrite:
        raise ExistingDatasetError(f'{out_folder} already holds {", ".join(existing)}; '
                                   f'pass --overwrite to replace them')
    meta = {'name': 'skeleton-ssl demo', 'layout': 'ntu-rgb+d', 'generator_version': GENERATOR_VERSION,
            'seed': seed, 'frames': frames, 'num_joints': NUM_JOINTS, 'num_bodies': NUM_BODIES,
            'num_class': NUM_CLASSES, 'classes': list(CLASS_NAMES),
            'num_train': len(dataset['train']['labels']), 'num_val': len(dataset['val']['labels']),
            'train_subjects': list(TRAIN_SUBJECTS), 'test_subjects': list(TEST_SUBJECTS),
            'units': 'metres, camera space: x right, y up, z depth'}
    writers = {
        'classes.txt': lambda f: f.write(''.join(name + '\n' for name in CLASS_NAMES).encode()),
        'meta.json': lambda f: f.write((json.dumps(meta, indent=2, sort_keys=True) + '\n').encode()),
    }
    for split in ('train', 'val'):
        part = dataset[split]
        writers[f'{split}_data.npy'] = lambda f, a=part['data']: np.save(f, a)
        writers[f'{split}_label.pkl'] = lambda f, p=part: pickle.dump(
            (list(p['names']), list(p['labels'])), f, protocol=4)
    temporary = {}
    try:
        for name in OUTPUT_FILES:
            temporary[name] = _write_temp(out_folder, name, writers[name])
        for name in OUTPUT_FILES:
            os.replace(temporary.pop(name), os.path.join(out_folder, name))
    finally:
        for tmp in temporary.values():
            os.unlink(tmp)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Generate the built-in synthetic skeleton-action demo dataset '
                    f'({NUM_CLASSES} classes, NTU RGB+D 25-joint layout, cross-subject split).')
    parser.add_argument('--out_folder', default='data/demo', help='output folder (default: data/demo)')
    parser.add_argument('--num_train', type=int, default=1200, help='training clips (default: 1200)')
    parser.add_argument('--num_val', type=int, default=400, help='test clips (default: 400)')
    parser.add_argument('--frames', type=int, default=50, help='frames per clip T (default: 50)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default: 0)')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing dataset')
    args = parser.parse_args(argv)
    for key in ('num_train', 'num_val', 'frames'):
        if getattr(args, key) < 1:
            parser.error(f'--{key} must be at least 1')
    return args


def main(argv=None):
    args = parse_args(argv)
    if existing_dataset_files(args.out_folder) and not args.overwrite:   # fail before the work
        print(f'error: {args.out_folder} already holds a dataset; pass --overwrite to replace it',
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    dataset = generate_dataset(args.num_train, args.num_val, args.frames, args.seed)
    generated = time.perf_counter()
    try:
        write_dataset(args.out_folder, dataset, args.seed, args.frames, overwrite=args.overwrite)
    except ExistingDatasetError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(f'wrote {args.num_train} train / {args.num_val} test clips '
          f'({NUM_CLASSES} classes, T={args.frames}) to {args.out_folder} '
          f'(generated in {generated - start:.1f}s, written in {time.perf_counter() - generated:.1f}s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
