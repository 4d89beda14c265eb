import pytest
import torch

from feeder.streams import (BONES, NTU_BONE_PAIRS_1BASED, NW_UCLA_BONES, infer_layout,
                            parent_index, to_stream)


def clips(v, n=2, t=6, m=2, seed=0):
    return torch.randn(n, 3, t, v, m, generator=torch.Generator().manual_seed(seed))


def test_joint_is_identity():
    x = clips(25)
    assert to_stream(x, 'joint') is x


def test_motion_is_forward_difference_with_zero_last_frame():
    x = torch.zeros(1, 3, 4, 25, 1)
    x[0, 0, :, 3, 0] = torch.tensor([1.0, 4.0, 2.0, 7.0])
    motion = to_stream(x, 'motion')
    assert motion[0, 0, :, 3, 0].tolist() == [3.0, -2.0, 5.0, 0.0]
    assert torch.equal(motion[:, :, -1], torch.zeros_like(motion[:, :, -1]))
    torch.testing.assert_close(motion[:, :, :-1], x[:, :, 1:] - x[:, :, :-1])


def test_ntu_bone_is_child_minus_parent_and_joint21_is_zero():
    x = clips(25)
    bone = to_stream(x, 'bone')
    assert len(NTU_BONE_PAIRS_1BASED) == 25
    for v, u in NTU_BONE_PAIRS_1BASED:
        torch.testing.assert_close(bone[:, :, :, v - 1], x[:, :, :, v - 1] - x[:, :, :, u - 1])
    assert torch.count_nonzero(bone[:, :, :, 20]) == 0
    assert torch.count_nonzero(bone) == bone.numel() - bone[:, :, :, 20].numel()


def test_ntu_bone_on_hand_made_skeleton():
    x = torch.zeros(1, 3, 1, 25, 1)
    x[0, :, 0, 20, 0] = torch.tensor([1.0, 2.0, 3.0])  # spine-shoulder (21)
    x[0, :, 0, 2, 0] = torch.tensor([1.0, 3.0, 3.0])   # neck (3), parent 21
    bone = to_stream(x, 'bone', layout='ntu-rgb+d')
    assert bone[0, :, 0, 2, 0].tolist() == [0.0, 1.0, 0.0]
    assert bone[0, :, 0, 20, 0].tolist() == [0.0, 0.0, 0.0]


def test_nw_ucla_bones_follow_readme_tree_and_root_is_zero():
    x = clips(20)
    bone = to_stream(x, 'bone')
    assert len(NW_UCLA_BONES) == 19 and {c for c, _ in NW_UCLA_BONES} == set(range(1, 20))
    for child, parent in NW_UCLA_BONES:
        torch.testing.assert_close(bone[:, :, :, child], x[:, :, :, child] - x[:, :, :, parent])
    assert torch.count_nonzero(bone[:, :, :, 0]) == 0


def test_parent_index_roots_are_self_parents():
    assert parent_index('ntu-rgb+d')[20] == 20 and parent_index('nw-ucla')[0] == 0
    assert set(BONES) == {'ntu-rgb+d', 'nw-ucla'}


def test_errors_name_the_bad_input():
    with pytest.raises(ValueError, match='joint, motion, bone'):
        to_stream(clips(25), 'velocity')
    with pytest.raises(ValueError, match='V=17'):
        to_stream(clips(17), 'bone')
    with pytest.raises(ValueError, match='V=20'):
        to_stream(clips(20), 'bone', layout='ntu-rgb+d')
    with pytest.raises(ValueError, match='N, C, T, V, M'):
        to_stream(torch.zeros(3, 4, 5), 'motion')
    assert infer_layout(25) == 'ntu-rgb+d' and infer_layout(20) == 'nw-ucla'
