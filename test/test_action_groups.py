"""Action groups (policy/action_groups.py): splitting a chunk by joint names, validation, velocity integration."""
import numpy as np
import pytest

from turbopi_ros.policy.action_groups import ActionGroup, check_groups, groups_from_mapping, integrate, split

DROID = [f"joint_{i}" for i in range(7)] + ["gripper"]


def test_split_by_joint_names_in_each_groups_order():
    chunk = np.arange(3 * 8, dtype=float).reshape(3, 8)
    groups = groups_from_mapping({"arm": {"joints": DROID[:7], "kind": "velocity"},
                                  "hand": {"joints": ["gripper"]}})
    parts = split(chunk, DROID, groups)
    assert list(parts) == ["arm", "hand"] and groups[1].kind == "position"
    assert np.array_equal(parts["arm"], chunk[:, :7]) and np.array_equal(parts["hand"], chunk[:, 7:])
    swapped = split(chunk, DROID, [ActionGroup("two", ("joint_3", "joint_1"))])
    assert np.array_equal(swapped["two"], chunk[:, [3, 1]])
    parts["arm"][0, 0] = -1.0
    assert chunk[0, 0] == 0.0  # copies


@pytest.mark.parametrize("groups,message", [
    ([ActionGroup("a", ("joint_0", "elbow"))], r"group 'a': joints \['elbow'\] are not action joints"),
    ([ActionGroup("a", ("joint_0",)), ActionGroup("b", ("joint_0",))], "joint 'joint_0' is in groups 'a' and 'b'"),
    ([ActionGroup("a", ())], "group 'a' has no joints"),
    ([ActionGroup("a", ("joint_0",), "torque")], r"kind 'torque' is not one of \['position', 'velocity'\]"),
    ([ActionGroup("a", ("joint_0",)), ActionGroup("a", ("joint_1",))], "group name 'a' is empty or used twice"),
])
def test_bad_group_configurations_are_named(groups, message):
    with pytest.raises(ValueError, match=message):
        check_groups(groups, DROID)


def test_bad_mappings_and_shapes():
    with pytest.raises(ValueError, match=r"unknown keys \['joint'\]"):
        groups_from_mapping({"arm": {"joint": ["joint_0"]}})
    with pytest.raises(ValueError, match="joints must be a list of joint names"):
        groups_from_mapping({"arm": {"joints": "joint_0"}})
    with pytest.raises(ValueError, match=r"actions must be \[H, 8\]"):
        split(np.zeros((3, 7)), DROID, [ActionGroup("a", ("joint_0",))])


def test_integrate_velocities_from_the_current_position():
    rng = np.random.default_rng(0)
    v, q0, rate = rng.normal(size=(10, 7)), rng.normal(size=7), 15.0
    q = integrate(v, q0, rate)
    expected = [q0 + v[:k + 1].sum(axis=0) / rate for k in range(10)]  # where each held velocity leaves the joint
    assert np.allclose(q, expected, atol=1e-12)
    assert np.allclose(np.diff(np.vstack([q0, q]), axis=0) * rate, v, atol=1e-9)  # the finite difference is v
    # limits clamp each target and the integration continues from the clamped position
    clamped = integrate(np.ones((4, 1)), np.array([0.0]), 10.0, lower=np.array([-1.0]), upper=np.array([0.25]))
    assert np.allclose(clamped[:, 0], [0.1, 0.2, 0.25, 0.25])
    back = integrate(np.array([[1.0], [1.0], [-1.0]]), np.array([0.0]), 10.0, np.array([-1.0]), np.array([0.15]))
    assert np.allclose(back[:, 0], [0.1, 0.15, 0.05])  # no travel built up beyond the limit


@pytest.mark.parametrize("args,message", [
    ((np.zeros((3, 2)), np.zeros(3), 10.0), r"velocities must be \[H, n\] and start \[n\]"),
    ((np.zeros((3, 2)), np.zeros(2), 0.0), "rate_hz must be a positive number"),
    ((np.full((3, 2), np.nan), np.zeros(2), 10.0), "must be finite"),
])
def test_integrate_refuses_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        integrate(*args)
