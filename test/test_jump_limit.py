"""policy/jump_limit.py: action.max_jump compares each checked action joint's first action with the observed position
of the state joint of the same name, names every joint over its limit, and refuses settings it cannot check."""
import numpy as np
import pytest

from turbopi_ros.policy.jump_limit import JumpLimit

STATE = ["shoulder", "elbow", "wrist", "gripper"]
ACTIONS = ["elbow", "shoulder", "gripper"]  # another order than the state's, and a joint left out


def _chunk(first, rows=5):
    actions = np.zeros((rows, len(first)))
    actions[0] = first
    actions[1:] = 9.0  # only the first action counts
    return actions


def test_off_and_unchecked_joints_never_refuse():
    state = np.array([0.0, 0.0, 0.0, 0.0])
    assert not JumpLimit(ACTIONS, STATE, []).active
    assert JumpLimit(ACTIONS, STATE, []).problem(_chunk([5.0, 5.0, 5.0]), None) is None
    zeros = JumpLimit(ACTIONS, STATE, [0.0, 0.0, 0.0])
    assert not zeros.active and zeros.problem(_chunk([5.0, 5.0, 5.0]), state) is None


def test_each_action_joint_is_compared_with_the_state_joint_of_its_name():
    limit = JumpLimit(ACTIONS, STATE, [0.5, 0.2, 0.0])  # the gripper unchecked
    assert limit.checked_joints() == ["elbow", "shoulder"]
    state = np.array([1.0, 2.0, 3.0, 0.0])  # shoulder 1, elbow 2
    assert limit.problem(_chunk([2.4, 1.15, 1.0]), state) is None  # jumps of 0.4 and 0.15, the gripper's 1 unchecked
    assert limit.problem(_chunk([2.5, 1.2, 0.0]), state) is None  # at the limits: allowed
    why = limit.problem(_chunk([2.6, 0.7, 0.0]), state)
    assert why.startswith("chunk dropped: its first action jumps too far from where the robot was observed: ")
    assert "elbow 2.6 from the observed 2 (a jump of 0.6, action.max_jump 0.5)" in why
    assert "shoulder 0.7 from the observed 1 (a jump of 0.3, action.max_jump 0.2)" in why
    assert "norm stats" in why
    only = limit.problem(_chunk([2.0, 1.3, 0.0]), state)
    assert "shoulder" in only and "elbow" not in only


def test_a_non_finite_first_action_or_state_is_a_jump():
    limit = JumpLimit(ACTIONS, STATE, [0.5, 0.5, 0.0])
    assert "elbow nan" in limit.problem(_chunk([np.nan, 1.0, 0.0]), np.array([1.0, 2.0, 0.0, 0.0]))
    assert "from the observed inf" in limit.problem(_chunk([2.0, 1.0, 0.0]), np.array([np.inf, 2.0, 0.0, 0.0]))


def test_a_checked_chunk_without_its_state_is_an_error():
    with pytest.raises(ValueError, match="carries no observed state"):
        JumpLimit(ACTIONS, STATE, [0.5, 0.0, 0.0]).problem(_chunk([0.0, 0.0, 0.0]), None)


@pytest.mark.parametrize("max_jump,message", [
    ([0.5, 0.5], r"parameter action.max_jump has 2 entries for 3 action.joints"),
    ([0.5, -0.1, 0.0], r"parameter action.max_jump: \['shoulder'\] have a negative or NaN limit"),
    ([float("nan"), 0.1, 0.0], r"parameter action.max_jump: \['elbow'\] have a negative or NaN limit"),
])
def test_bad_settings_name_the_parameter(max_jump, message):
    with pytest.raises(ValueError, match=message):
        JumpLimit(ACTIONS, STATE, max_jump)


def test_a_joint_without_an_observed_position_must_be_left_unchecked():
    with pytest.raises(ValueError, match=r"\['hand'\] are not in state.joints .*give them 0"):
        JumpLimit(["elbow", "hand"], STATE, [0.5, 0.5])
    assert JumpLimit(["elbow", "hand"], STATE, [0.5, 0.0]).checked_joints() == ["elbow"]
