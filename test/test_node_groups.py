"""Action groups through the node (ros/action_outputs.py): one JointTrajectory and one command stream per group, as
one ros2_control controller per arm and one for the gripper take them. The demo's seven action joints become a left
arm (position, its controller's topics, its own joint order), a right arm (velocity, limited) and a gripper."""
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from ros_helpers import node_params, node_session, trajectory_times, wait_for  # noqa: E402

PARAMS = node_params()
RATE = PARAMS["control_rate_hz"]
COMMAND_HZ = 40.0  # not the joint_states rate: the streams follow command_rate_hz
LIMIT = 0.4  # right arm velocity limit: the tiny random model's outputs (clamped to +-3.14) go beyond it
SCALE = 2.0  # right arm: model values x SCALE are the velocities sent
GROUPS = {
    "left_arm": dict(joints=["joint_3", "joint_1", "joint_2"], trajectory="/left_arm_controller/joint_trajectory",
                     command="/left_arm_controller/commands"),
    "right_arm": dict(joints=["joint_4", "joint_5", "joint_6"], trajectory="/turbopi_node/right_arm/action_chunk",
                      command="/turbopi_node/right_arm/joint_command"),
    "gripper": dict(joints=["gripper"], trajectory="/turbopi_node/gripper/action_chunk",
                    command="/gripper_controller/commands"),
}
OVERRIDES = {
    "action.groups": "[left_arm, right_arm, gripper]",
    "command_rate_hz": COMMAND_HZ,
    "action.group.left_arm.joints": "[joint_3, joint_1, joint_2]",
    "action.group.left_arm.trajectory_topic": GROUPS["left_arm"]["trajectory"],
    "action.group.left_arm.command_topic": GROUPS["left_arm"]["command"],
    "action.group.right_arm.joints": "[joint_4, joint_5, joint_6]",
    "action.group.right_arm.interface": "velocity",
    "action.group.right_arm.velocity_limits": f"[{LIMIT}, {LIMIT}, {LIMIT}]",
    "action.group.right_arm.velocity_scale": SCALE,
    "action.group.gripper.joints": "[gripper]",
    "action.group.gripper.command_topic": GROUPS["gripper"]["command"],
}


def _stamp(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


class Recorder:
    """Each group's trajectories and commands, and anything on ~/joint_command, with their arrival times."""

    def __init__(self, node):
        from std_msgs.msg import Float64MultiArray
        from trajectory_msgs.msg import JointTrajectory

        self.lock = threading.Lock()
        self.trajectories = {g: [] for g in GROUPS}
        self.commands = {g: [] for g in GROUPS}
        for g, spec in GROUPS.items():
            node.create_subscription(JointTrajectory, spec["trajectory"], self._keep(self.trajectories[g]), 10)
            node.create_subscription(Float64MultiArray, spec["command"], self._keep(self.commands[g]), 100)

    def _keep(self, store):
        def callback(msg):
            with self.lock:
                store.append((time.monotonic(), msg))
        return callback

    def since(self, store, t0: float):
        with self.lock:
            return [(t, m) for t, m in store if t >= t0]


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    with node_session(tmp_path_factory.mktemp("groups"), min_chunks=1, overrides=OVERRIDES) as (feeder, node):
        recorder = Recorder(feeder)
        t0 = time.monotonic()
        assert wait_for(lambda: all(len(recorder.since(recorder.trajectories[g], t0)) >= 3 for g in GROUPS),
                        timeout=60), node.log()
        yield feeder, node, recorder


def _columns(joints):
    return [PARAMS["action.joints"].index(j) for j in joints]


def test_each_group_gets_only_its_joints_with_the_chunks_stamp_and_times(running):
    feeder, node, recorder = running
    full = {_stamp(m): m for _, m in feeder.since(feeder.chunks, 0.0)}  # ~/action_chunk: the whole chunk, a record
    per_group = {g: {_stamp(m): m for _, m in recorder.since(recorder.trajectories[g], 0.0)} for g in GROUPS}
    common = set(full).intersection(*[set(s) for s in per_group.values()])
    assert len(common) >= 2, {g: len(s) for g, s in per_group.items()}
    for g in GROUPS:  # one trajectory per group per chunk: the same stamps everywhere (none extra, none lost)
        late = {s for s in per_group[g] if s > min(common)}
        assert late <= set(full), g
    for stamp in sorted(common):
        chunk = np.array([p.positions for p in full[stamp].points])
        for g, spec in GROUPS.items():
            msg = per_group[g][stamp]
            assert list(msg.joint_names) == spec["joints"], g
            assert np.array_equal(trajectory_times(msg), trajectory_times(full[stamp])), g
            assert trajectory_times(msg)[0] == pytest.approx(1.0 / RATE)
            expected = chunk[:, _columns(spec["joints"])]
            if g == "right_arm":
                continue  # velocities: test_velocity_group_...
            positions = np.array([p.positions for p in msg.points])
            assert np.array_equal(positions, expected), g
            velocities = np.array([p.velocities for p in msg.points])
            assert np.allclose(velocities[:-1], np.diff(expected, axis=0) * RATE) and np.all(velocities[-1] == 0)


def test_each_command_stream_runs_at_the_command_rate_with_its_joints(running):
    feeder, node, recorder = running
    t0 = time.monotonic() + 0.5
    time.sleep(4.7)
    for g, spec in GROUPS.items():
        arrived = [(t, m) for t, m in recorder.since(recorder.commands[g], t0) if t < t0 + 4.0]
        assert len(arrived) / 4.0 == pytest.approx(COMMAND_HZ, rel=0.15), f"{g}: {len(arrived) / 4.0:.1f} Hz"
        assert all(len(m.data) == len(spec["joints"]) for _, m in arrived), g
    assert feeder.since(feeder.commands, 0.0) == [], "with groups, ~/joint_command is not published"
    # the streams share the command tick: the left arm's and the gripper's commands are pairwise one tick's
    left = [m.data for _, m in recorder.since(recorder.commands["left_arm"], t0)]
    grip = [m.data for _, m in recorder.since(recorder.commands["gripper"], t0)]
    assert abs(len(left) - len(grip)) <= 2
    lo, hi = np.array(PARAMS["action.lower_limits"]), np.array(PARAMS["action.upper_limits"])
    cols = _columns(GROUPS["left_arm"]["joints"])
    assert np.all((np.array(left) >= lo[cols] - 1e-12) & (np.array(left) <= hi[cols] + 1e-12))


def test_velocity_group_sends_velocities_clamped_and_zero_when_it_stops(running):
    """The right arm: trajectory points with velocities (the chunk's values scaled, clamped to the limits) and no
    positions; commands within the limits; ~/enable false ends its stream with a zero velocity (a forward controller
    holds its last command), while the position groups' streams simply stop."""
    from std_srvs.srv import SetBool

    feeder, node, recorder = running
    full = {_stamp(m): m for _, m in feeder.since(feeder.chunks, 0.0)}
    cols = _columns(GROUPS["right_arm"]["joints"])
    checked = clamped = 0
    for _, msg in recorder.since(recorder.trajectories["right_arm"], 0.0):
        if _stamp(msg) not in full:
            continue
        chunk = np.array([p.positions for p in full[_stamp(msg)].points])[:, cols]
        assert all(len(p.positions) == 0 for p in msg.points)
        velocities = np.array([p.velocities for p in msg.points])
        assert np.array_equal(velocities, np.clip(chunk * SCALE, -LIMIT, LIMIT))
        clamped += int(np.sum(np.abs(chunk * SCALE) > LIMIT))
        checked += 1
    assert checked >= 2 and clamped > 0, (checked, clamped)
    commands = np.array([m.data for _, m in recorder.since(recorder.commands["right_arm"], 0.0)])
    assert len(commands) > 20 and np.all(np.abs(commands) <= LIMIT + 1e-12)
    assert np.any(np.abs(commands) > 0.01)  # moving before the stop

    client = feeder.create_client(SetBool, "/turbopi_node/enable")
    assert client.wait_for_service(timeout_sec=10)
    future = client.call_async(SetBool.Request(data=False))
    assert wait_for(future.done, timeout=5) and future.result().success
    t_off = time.monotonic()
    time.sleep(1.0)
    tail = recorder.since(recorder.commands["right_arm"], t_off - 0.5)
    assert tail and list(tail[-1][1].data) == [0.0, 0.0, 0.0], [list(m.data) for _, m in tail[-3:]]
    assert recorder.since(recorder.commands["right_arm"], t_off + 0.25) == []  # one zero, not a stream of them
    assert recorder.since(recorder.commands["left_arm"], t_off + 0.25) == []
    left_tail = recorder.since(recorder.commands["left_arm"], t_off - 0.5)
    assert left_tail and any(abs(v) > 0 for v in left_tail[-1][1].data)  # a position stream is not zeroed
    future = client.call_async(SetBool.Request(data=True))
    assert wait_for(future.done, timeout=5) and future.result().success
    t_on = time.monotonic()
    assert wait_for(lambda: len(recorder.since(recorder.commands["right_arm"], t_on)) > 10, timeout=30), node.log()
