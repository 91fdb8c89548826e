"""Joint states from publishers that share the topic, each with a part of the joints (ros/joint_states.py)."""
import numpy as np
import pytest

pytest.importorskip("sensor_msgs")

from sensor_msgs.msg import JointState  # noqa: E402

from turbopi_ros.ros.conversions import InputError, sec_to_stamp  # noqa: E402
from turbopi_ros.ros.inputs import JOINT_STATES, InputBuffer  # noqa: E402
from turbopi_ros.ros.joint_states import MAX_SOURCES, JointStateSources  # noqa: E402

ARM, GRIPPER = ["shoulder", "elbow", "wrist"], ["finger"]
STATE = ARM + GRIPPER


def _js(names, positions, t):
    msg = JointState(name=list(names), position=[float(p) for p in positions])
    msg.header.stamp = sec_to_stamp(t)
    return msg


def _buffer(max_age_s=0.5):
    return InputBuffer([], {JOINT_STATES: "/joint_states"}, STATE, max_age_s)


def _state(buffer, now):
    return buffer.observation(buffer.snapshot(), "go", now).state


def test_one_publisher_is_used_as_it_is():
    sources = JointStateSources(STATE)
    msg = _js(STATE + ["conveyor"], [1, 2, 3, 4, 5], 10.0)
    assert sources.add(msg) == (msg, True)
    partial = _js(ARM, [1, 2, 3], 10.01)  # one publisher that sends a part: nothing to merge it with
    fresh = JointStateSources(STATE)
    assert fresh.add(partial) == (partial, True)


def test_an_arm_and_a_gripper_on_one_topic_merge_per_joint():
    """As robot_state_publisher does: each joint's newest position; stamped with the oldest message it used; the
    joint-states rate counts the arm's messages only (the source with the most state joints)."""
    buffer = _buffer()
    assert buffer.store(JOINT_STATES, _js(ARM + ["conveyor"], [0.1, 0.2, 0.3, 9.0], 10.00))
    assert not buffer.store(JOINT_STATES, _js(GRIPPER, [0.04], 10.02))
    assert np.array_equal(_state(buffer, 10.05), [0.1, 0.2, 0.3, 0.04])
    merged = buffer.snapshot()[JOINT_STATES]
    assert (merged.header.stamp.sec, merged.header.stamp.nanosec) == (10, 0) and merged.sources == 2
    assert buffer.store(JOINT_STATES, _js(ARM + ["conveyor"], [0.5, 0.6, 0.7, 9.0], 10.03))
    assert np.array_equal(_state(buffer, 10.05), [0.5, 0.6, 0.7, 0.04])
    assert buffer.snapshot()[JOINT_STATES].header.stamp.nanosec == pytest.approx(0.02e9, abs=1e3)  # the gripper's
    # a message holding every state joint is used as it is, even beside others
    whole = _js(STATE, [1, 2, 3, 4], 10.04)
    assert buffer.store(JOINT_STATES, whole) and buffer.snapshot()[JOINT_STATES] is whole
    buffer.store(JOINT_STATES, _js(GRIPPER, [0.05], 10.05))  # then the gripper is newer than the whole message
    assert np.array_equal(_state(buffer, 10.06), [1, 2, 3, 0.05])


def test_a_source_that_stopped_makes_the_state_stale_naming_its_joints():
    buffer = _buffer(max_age_s=0.5)
    buffer.store(JOINT_STATES, _js(GRIPPER, [0.04], 10.0))
    for t in (10.5, 10.7, 10.9):  # the arm goes on, the gripper's driver stopped at 10.0
        buffer.store(JOINT_STATES, _js(ARM, [0.1, 0.2, 0.3], t))
    with pytest.raises(InputError, match=r"joint_states: joints \['finger'\] last came 0\.95 s ago \("
                                         r"max_observation_age_s 0\.5; the messages on the topic hold different "
                                         r"joints, and each joint's newest position is used\)"):
        buffer.observation(buffer.snapshot(), "go", 10.95)


def test_bad_and_missing_joints_are_still_named():
    buffer = _buffer()
    buffer.store(JOINT_STATES, _js(ARM, [0.1, 0.2, 0.3], 10.0))
    with pytest.raises(InputError, match=r"joints \['finger'\] of state.joints missing from JointState"):
        _state(buffer, 10.01)  # no source holds the gripper
    bad = JointState(name=GRIPPER, position=[0.04, 0.05])
    bad.header.stamp = sec_to_stamp(10.01)
    buffer.store(JOINT_STATES, bad)
    with pytest.raises(InputError, match=r"1 names but 2 positions"):
        _state(buffer, 10.02)
    buffer.store(JOINT_STATES, _js(GRIPPER, [float("nan")], 10.02))
    with pytest.raises(InputError, match=r"non-finite position 'finger'=nan"):
        _state(buffer, 10.03)
    buffer.store(JOINT_STATES, _js(GRIPPER, [0.04], 10.03))
    assert np.array_equal(_state(buffer, 10.04), [0.1, 0.2, 0.3, 0.04])


def test_sources_are_bounded():
    sources = JointStateSources(STATE)
    for i in range(3 * MAX_SOURCES):
        sources.add(_js([f"other_{i}"], [0.0], 10.0 + i))
    assert len(sources._newest) == MAX_SOURCES
    arm, gripper = _js(ARM, [1, 2, 3], 50.0), _js(GRIPPER, [4], 50.1)
    assert sources.add(arm) == (arm, True)  # the source with the most state joints so far
    merged, counts = sources.add(gripper)
    assert merged.position == [1, 2, 3, 4] and not counts


def test_the_rate_moves_to_the_next_source_when_its_source_stops():
    """The rate source (most state joints) stops, as when one driver that published every joint gives way to an arm's
    and a gripper's: after QUIET messages of the others, the arm's messages count for the rate."""
    from turbopi_ros.ros.joint_states import QUIET

    sources = JointStateSources(STATE)
    t = 10.0
    for _ in range(5):
        t += 0.01
        assert sources.add(_js(STATE, [1, 2, 3, 4], t))[1]
    counted = []
    for _ in range(QUIET + 5):
        t += 0.01
        counted.append(sources.add(_js(ARM, [1, 2, 3], t))[1])
        assert not sources.add(_js(GRIPPER, [4], t))[1]
    assert not any(counted[:QUIET // 2 - 1]) and all(counted[QUIET // 2 + 1:]), counted
