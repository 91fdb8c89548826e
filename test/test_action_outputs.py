"""ros/action_outputs.py without a node: group parameters, validation naming the parameter, the messages a group
publishes (ActionOutputs over DDS: test_node_groups.py), and that a joint_trajectory_controller takes and can follow
each of them (jtc_rules.py)."""
import dataclasses

import numpy as np
import pytest

pytest.importorskip("rclpy")

from jtc_rules import Controller, cubic, problem  # noqa: E402
from ros_helpers import trajectory_times  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402
from turbopi_ros.ros.action_outputs import (ActionOutputs, group_table, groups_from_parameters,  # noqa: E402
                                            velocity_trajectory)
from turbopi_ros.ros.conversions import chunk_to_trajectory  # noqa: E402

JOINTS = ["a1", "a2", "a3", "b1", "b2", "g"]


def _params(groups: dict) -> dict:
    """Checked parameters for ``groups`` ({name: {key: value}}), defaults filled in as the node declares them."""
    p = {"action.groups": list(groups)}
    for name, param in group_table(list(groups)).items():
        _, _, group, key = name.split(".")
        p[name] = param.check(name, groups[group].get(key, param.default))
    return p


def test_groups_split_by_name_and_clamp_velocities():
    p = _params({"left": {"joints": ["a3", "a1", "a2"]},
                 "base": {"joints": ["b1", "b2"], "interface": "velocity", "velocity_limits": [0.5, 2.0],
                          "velocity_scale": 2.0, "command_topic": "/base_controller/commands"},
                 "hand": {"joints": ["g"]}})
    left, base, hand = groups_from_parameters(p, JOINTS)
    assert (left.trajectory_topic, left.command_topic) == ("~/left/action_chunk", "~/left/joint_command")
    assert base.command_topic == "/base_controller/commands" and base.is_velocity and not hand.is_velocity
    chunk = np.arange(12.0).reshape(2, 6) / 10.0
    assert np.array_equal(left.values(chunk), chunk[:, [2, 0, 1]])
    assert np.array_equal(base.values(chunk), np.clip(chunk[:, [3, 4]] * 2.0, [-0.5, -2.0], [0.5, 2.0]))
    assert np.array_equal(base.values(-chunk[0]), [-0.5, -0.8])  # a command vector, negative side


@pytest.mark.parametrize("groups,message", [
    ({"arm": {"joints": ["a1", "elbow"]}}, r"parameter action.group.arm.joints: \['elbow'\] are not in action.joints"),
    ({"arm": {"joints": ["a1", "g"]}, "hand": {"joints": ["g"]}},
     r"parameter action.group.hand.joints: joint 'g' is in group 'arm' already \(action.group.arm.joints\)"),
    ({"arm": {"joints": ["a1", "a1"]}}, r"parameter action.group.arm.joints: \['a1'\] listed more than once"),
    ({"arm": {"joints": ["a1"], "interface": "velocity"}},
     "parameter action.group.arm.velocity_limits: a velocity group needs one limit > 0 per joint"),
    ({"arm": {"joints": ["a1"], "interface": "velocity", "velocity_limits": [0.0]}},
     "parameter action.group.arm.velocity_limits: a velocity group needs one limit > 0 per joint"),
    ({"arm": {"joints": ["a1"], "velocity_limits": [1.0]}},
     "parameter action.group.arm.velocity_limits: only velocity groups take limits"),
    ({"arm": {"joints": ["a1"], "velocity_scale": 3.0}},
     "parameter action.group.arm.velocity_scale: only velocity groups are scaled"),
])
def test_bad_groups_name_the_parameter(groups, message):
    with pytest.raises(ValueError, match=message):
        groups_from_parameters(_params(groups), JOINTS)


def test_max_jump_leaves_velocity_groups_unchecked():
    """action.max_jump compares positions: a velocity group's joints must have 0 (unchecked); position groups' may."""
    groups = {"arm": {"joints": ["a1", "a2"]},
              "base": {"joints": ["b1", "b2"], "interface": "velocity", "velocity_limits": [1.0, 1.0]}}
    p = dict(_params(groups), **{"action.max_jump": [0.5, 0.5, 0.0, 0.0, 0.0, 0.0]})
    assert [g.name for g in groups_from_parameters(p, JOINTS)] == ["arm", "base"]
    p["action.max_jump"] = [0.5, 0.5, 0.0, 0.0, 0.3, 0.0]
    with pytest.raises(ValueError, match=r"parameter action.max_jump: \['b2'\] are in velocity group 'base'"):
        groups_from_parameters(p, JOINTS)


@pytest.mark.parametrize("names,message", [
    (["left arm"], r"parameter action.groups: \['left arm'\] are not group names"),
    (["arm", "arm"], r"parameter action.groups: \['arm'\] listed more than once"),
])
def test_bad_group_names(names, message):
    with pytest.raises(ValueError, match=message):
        group_table(names)


def test_velocity_trajectory_starts_on_arrival_with_the_steps_ahead_and_ends_at_rest():
    """Stamped 0, positions empty; the velocities of the control steps still ahead of the publication, timed from
    it; a stop one control step after the last."""
    v = np.array([[0.1, -0.2], [0.3, 0.4], [0.0, 0.5]])  # control steps 1..3 of 15 Hz after the observation at 12.25
    msg = velocity_trajectory(v, ["b1", "b2"], 12.25, 15.0, now=12.25)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (0, 0)
    assert list(msg.joint_names) == ["b1", "b2"]
    assert [p.time_from_start.nanosec for p in msg.points] == [66_666_667, 133_333_333, 200_000_000, 266_666_667]
    assert all(len(p.positions) == 0 and len(p.accelerations) == 0 for p in msg.points)
    assert np.array_equal([p.velocities for p in msg.points], np.vstack([v, [0.0, 0.0]]))
    late = velocity_trajectory(v, ["b1", "b2"], 12.25, 15.0, now=12.25 + 0.1)  # step 1 (at +66.7 ms) is past
    assert np.array_equal([p.velocities for p in late.points], [[0.3, 0.4], [0.0, 0.5], [0.0, 0.0]])
    assert np.allclose(trajectory_times(late), np.array([2, 3, 4]) / 15.0 - 0.1, atol=1e-9)
    only_the_stop = velocity_trajectory(v, ["b1", "b2"], 12.25, 15.0, now=12.25 + 0.21)
    assert [list(p.velocities) for p in only_the_stop.points] == [[0.0, 0.0]]
    assert velocity_trajectory(v, ["b1", "b2"], 12.25, 15.0, now=12.25 + 4 / 15.0) is None  # the stop is past too
    with pytest.raises(ValueError, match=r"velocities \[3, 2\] for 3 joint names"):
        velocity_trajectory(v, ["b1", "b2", "b3"], 0.0, 15.0, 0.0)


@pytest.mark.parametrize("latency_s", [0.0, 0.03, 0.07, 0.2, 0.9])
def test_every_trajectory_is_one_a_joint_trajectory_controller_takes_and_can_follow(latency_s):
    """jtc_rules (the controller's checks, Jazzy's defaults; allow_integration_in_goal_trajectories for the velocity
    group): the whole chunk, each group's and the halts, published latency_s after the observation of a 15-step
    chunk at 15 Hz (DROID's): past the first step from 0.067 s on, most of it at 0.9 s."""
    from turbopi_ros.policy.chunking import ChunkSchedule

    groups = {"arm": {"joints": ["a2", "a1"]},
              "base": {"joints": ["b1", "b2"], "interface": "velocity", "velocity_limits": [0.5, 0.5]}}
    node = _Publishers()
    outputs = ActionOutputs(node, JOINTS, groups_from_parameters(_params(groups), JOINTS), 15.0, halt_on_stop=True)
    chunk = np.random.default_rng(0).uniform(-1, 1, (15, 6))
    stamp = 100.0
    now = stamp + latency_s
    outputs.publish_chunk(chunk, stamp, now)
    schedule = ChunkSchedule(15.0, blend_s=0.0)
    schedule.set_chunk(chunk, stamp, now)
    outputs.halt(schedule, now)
    controllers = {"~/action_chunk": Controller(JOINTS), "~/arm/action_chunk": Controller(["a1", "a2"]),
                   "~/base/action_chunk": Controller(["b1", "b2"], allow_integration_in_goal_trajectories=True)}
    sent = [(topic, msg) for topic in controllers for msg in node.sent[topic]]
    assert len(sent) == 5  # the chunk on each of the three, a halt on each group's
    for topic, msg in sent:
        assert problem(msg, controllers[topic], arrival=now + 0.002) is None, (topic, problem(
            msg, controllers[topic], arrival=now + 0.002))


def test_the_controller_rules_refuse_what_they_should():
    """jtc_rules, the checker above, is not vacuous: a velocity trajectory that ends moving, and one stamped at its
    observation that arrives past its first point (as the node's velocity groups were sent before), fail it; a
    position trajectory may arrive late, until it has ended."""
    velocity = Controller(["b1"], allow_integration_in_goal_trajectories=True)
    moving = velocity_trajectory(np.ones((3, 1)), ["b1"], 10.0, 15.0, now=10.0)
    moving.points.pop()  # no stop at the end
    assert "is not zero" in problem(moving, velocity, arrival=10.0)
    assert problem(moving, dataclasses.replace(velocity, allow_nonzero_velocity_at_trajectory_end=True), 10.0) is None
    stamped = velocity_trajectory(np.ones((3, 1)), ["b1"], 10.0, 15.0, now=10.0)
    stamped.header.stamp.sec = 10  # at the observation: points from 10.067 s
    assert problem(stamped, velocity, arrival=10.05) is None
    assert "past the first point" in problem(stamped, velocity, arrival=10.1)
    assert "no position, velocity" in problem(JointTrajectory(joint_names=["b1"], points=[JointTrajectoryPoint()]),
                                             velocity, arrival=0.0)
    position = chunk_to_trajectory(np.zeros((3, 1)), ["b1"], 10.0, 15.0)
    assert problem(position, Controller(["b1"]), arrival=10.19) is None
    assert "ends in the past" in problem(position, Controller(["b1"]), arrival=10.21)
    assert "don't match" in problem(position, Controller(["b1", "b2"]), arrival=10.0)
    assert "Mismatch" in problem(velocity_trajectory(np.ones((3, 1)), ["b1"], 10.0, 15.0, 10.0), Controller(["b1"]),
                                 arrival=10.0)  # positions needed without allow_integration_in_goal_trajectories


class _Publishers:
    """Stands in for a node's create_publisher: each topic's published messages, in order (what ActionOutputs
    publishes where, without DDS; over DDS: test_node_groups.py)."""

    def __init__(self):
        self.sent = {}

    def create_publisher(self, msg_type, topic, qos, qos_overriding_options=None):
        sent = self.sent.setdefault(topic, [])

        class Publisher:
            def publish(self, msg):
                assert isinstance(msg, msg_type)
                sent.append(msg)
        return Publisher()


def _outputs(groups: dict, halt_on_stop: bool = False, halt_time_s: float = None):
    """ActionOutputs at 50 Hz on stand-in publishers; halt_time_s None: the default."""
    node = _Publishers()
    extra = {} if halt_time_s is None else {"halt_time_s": halt_time_s}
    return node, ActionOutputs(node, JOINTS, groups_from_parameters(_params(groups), JOINTS), 50.0, halt_on_stop,
                               **extra)


def test_without_groups_one_chunk_and_one_command_topic_as_before():
    node, outputs = _outputs({})
    chunk = np.linspace(-1, 1, 18).reshape(3, 6)
    outputs.publish_chunk(chunk, 5.5, 5.52)
    outputs.publish_command(chunk[0])
    outputs.publish_command(chunk[0], held=True)
    outputs.stop()
    assert sorted(node.sent) == ["~/action_chunk", "~/joint_command"]
    assert node.sent["~/action_chunk"] == [chunk_to_trajectory(chunk, JOINTS, 5.5, 50.0)]
    assert [list(m.data) for m in node.sent["~/joint_command"]] == [chunk[0].tolist()] * 2


def test_held_and_stopped_velocity_groups_get_zero_velocity_once():
    node, outputs = _outputs({"arm": {"joints": ["a1", "a2"], "command_topic": "/arm/commands"},
                              "base": {"joints": ["b1"], "interface": "velocity", "velocity_limits": [0.5],
                                       "command_topic": "/base/commands"}})
    assert "~/joint_command" not in node.sent
    command = np.array([0.1, 0.2, 0.3, 0.9, 0.0, 1.0])
    outputs.publish_command(command)
    outputs.publish_command(command, held=True)  # on_stale: hold
    outputs.publish_command(command)
    outputs.stop()
    outputs.stop()  # a second stop sends nothing more
    assert [list(m.data) for m in node.sent["/arm/commands"]] == [[0.1, 0.2]] * 3
    assert [list(m.data) for m in node.sent["/base/commands"]] == [[0.5], [0.0], [0.5], [0.0]]
    before = {topic: len(sent) for topic, sent in node.sent.items()}
    outputs.stop()  # nothing was moving: nothing to stop
    assert {topic: len(sent) for topic, sent in node.sent.items()} == before


def test_a_halt_is_one_point_halt_time_s_after_its_arrival_with_zero_velocity():
    from turbopi_ros.policy.chunking import ChunkSchedule

    schedule = ChunkSchedule(50.0, blend_s=0.0)
    schedule.set_chunk(np.tile([0.25, -1.0, 0.0, 0.0, 0.5, 1.0], (50, 1)), stamp=10.0, now=10.0)
    for halt_time_s, nanosec in ((None, 250_000_000), (0.5, 500_000_000)):  # action.halt_time_s, default 0.25 s
        node, outputs = _outputs({"arm": {"joints": ["a1", "a2"]},
                                  "base": {"joints": ["b1"], "interface": "velocity", "velocity_limits": [0.5]}},
                                 halt_on_stop=True, halt_time_s=halt_time_s)
        outputs.halt(schedule, 10.0)
        (msg,) = node.sent["~/arm/action_chunk"]
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (0, 0)  # from its arrival, however late
        assert list(msg.joint_names) == ["a1", "a2"] and len(msg.points) == 1
        (point,) = msg.points
        assert list(point.positions) == [0.25, -1.0] and list(point.velocities) == [0.0, 0.0]
        assert (point.time_from_start.sec, point.time_from_start.nanosec) == (0, nanosec)
        (velocity_only,) = node.sent["~/base/action_chunk"][0].points
        assert len(velocity_only.positions) == 0 and list(velocity_only.velocities) == [0.0]
        assert (velocity_only.time_from_start.sec, velocity_only.time_from_start.nanosec) == (0, nanosec)
    with pytest.raises(ValueError, match="3 action dims for 2 joint names"):  # the builder the halt goes through
        chunk_to_trajectory(np.zeros((1, 3)), ["a1", "a2"], 0.0, 50.0)


@pytest.mark.parametrize("halt_time_s", [0.1, 0.25, 0.5])
def test_a_halt_brakes_evenly_from_the_chunks_speed(halt_time_s):
    """A joint following a chunk at 1 rad/s (50 Hz) when the halt comes: the controller's cubic from there (its
    position and the chunk's speed) to the halt point (jtc_rules.cubic) slows down monotonically to zero, at about
    1 / halt_time_s rad/s^2 at most; the halt one control step ahead, as before, went through 200 rad/s^2."""
    from turbopi_ros.policy.chunking import ChunkSchedule

    speed, rate = 1.0, 50.0
    chunk = np.outer(np.arange(1, 51) / rate * speed, np.ones(6))  # every joint at `speed` from 0 at t = 10 s
    schedule = ChunkSchedule(rate, blend_s=0.0)
    schedule.set_chunk(chunk, stamp=10.0, now=10.0)
    node, outputs = _outputs({}, halt_on_stop=True, halt_time_s=halt_time_s)
    now = 10.3
    outputs.halt(schedule, now)
    (msg,) = node.sent["~/action_chunk"]
    (point,), (duration,) = msg.points, trajectory_times(msg)
    assert duration == pytest.approx(halt_time_s)
    p0 = schedule.command(now)
    _, v, a = cubic(p0, np.full(6, speed), point.positions, point.velocities, duration, np.linspace(0, duration, 101))
    assert np.all(np.diff(v, axis=0) <= 1e-12) and np.all(v >= -1e-12), "slows down to a stop, never back"
    assert np.abs(a).max() <= 1.01 * speed / halt_time_s
    _, _, a_one_step = cubic(p0, np.full(6, speed), schedule.command(now + 1 / rate), np.zeros(6), 1 / rate,
                             np.linspace(0, 1 / rate, 101))
    assert np.abs(a_one_step).max() == pytest.approx(200.0, rel=0.01)  # the halt as it was


def test_halt_goes_where_the_controllers_take_their_trajectories():
    """At the chunk's command halfway through the braking time (a chunk of 50 Hz steps from t = 10 s, halted at
    10.04 s over 0.04 s: the one for 10.06 s, the third), while a chunk applies, with action.halt_on_stop only."""
    from turbopi_ros.policy.chunking import ChunkSchedule

    chunk = np.arange(5 * 6, dtype=np.float64).reshape(5, 6) / 10.0
    schedule = ChunkSchedule(50.0, blend_s=0.0)
    schedule.set_chunk(chunk, stamp=10.0, now=10.0)
    command = chunk[2]  # at 10.06 s: point k is at 10 + (k + 1) / 50
    node, outputs = _outputs({})
    outputs.halt(schedule, 10.04)
    assert node.sent["~/action_chunk"] == [], "action.halt_on_stop is off by default"
    node, outputs = _outputs({}, halt_on_stop=True, halt_time_s=0.04)
    outputs.halt(schedule, 10.04)
    (msg,) = node.sent["~/action_chunk"]
    assert list(msg.joint_names) == JOINTS and np.allclose(msg.points[0].positions, command, atol=1e-9)
    outputs.halt(schedule, 10.09)  # the chunk ends before 10.11 s: its last action
    assert np.allclose(node.sent["~/action_chunk"][-1].points[0].positions, chunk[-1], atol=1e-9)
    outputs.halt(schedule, 10.2)  # used up: nothing followed, nothing to stop
    assert len(node.sent["~/action_chunk"]) == 2

    node, outputs = _outputs({"arm": {"joints": ["a3", "a1"], "trajectory_topic": "/arm/joint_trajectory"},
                              "base": {"joints": ["b1"], "interface": "velocity", "velocity_limits": [0.5]}},
                             halt_on_stop=True)
    command = np.array([0.1, 0.2, 0.3, 0.9, 0.0, 1.0])
    schedule.set_chunk(np.tile(command, (5, 1)), stamp=10.0, now=10.0)
    outputs.halt(schedule, 10.05)
    assert node.sent["~/action_chunk"] == []  # with groups the record of the chunks, no controller's
    (arm,) = node.sent["/arm/joint_trajectory"]
    assert list(arm.joint_names) == ["a3", "a1"] and list(arm.points[0].positions) == [0.3, 0.1]
    (base,) = node.sent["~/base/action_chunk"]
    assert len(base.points[0].positions) == 0 and list(base.points[0].velocities) == [0.0]


def _sample(msg, t: float, stamp: float) -> np.ndarray:
    """A position trajectory stamped ``stamp`` where the controller puts it at time ``t`` (between two of its points,
    on their cubic: jtc_rules.cubic)."""
    times = stamp + trajectory_times(msg)
    k = int(np.searchsorted(times, t, side="right")) - 1
    p, v = msg.points[k], msg.points[k + 1]
    position, _, _ = cubic(p.positions, p.velocities, v.positions, v.velocities, times[k + 1] - times[k],
                           [t - times[k]])
    return position[0]


@pytest.mark.parametrize("latency_s", [0.03, 0.07])
def test_group_trajectories_carry_the_blended_chunk_and_action_chunk_the_models(latency_s):
    """A new chunk 0.5 away from the one being followed, published latency_s after its observation: ~/action_chunk
    carries it as the model gave it; each group's trajectory the chunk the commands will follow (ChunkSchedule.blended),
    so that where the controller puts it on arrival is near where the old chunk had it (the blend is sampled at the
    points' times: within one control step's share of it, jump x (1 / rate) / blend_s; the raw chunk's trajectory
    jumps by the whole 0.5 there), and from blend_s on, the new chunk's own. The velocity group's velocities are
    blended the same way."""
    from turbopi_ros.policy.chunking import Chunk, ChunkSchedule

    rate, blend_s = 50.0, 0.1
    t = np.arange(1, 51)[:, None] / rate
    old = np.sin(2.0 * t + np.arange(6)) * 0.3
    schedule = ChunkSchedule(rate, blend_s)
    schedule.set_chunk(old, 10.0, 10.0)
    stamp = 10.2
    new = np.sin(2.0 * (t + 0.2) + np.arange(6)) * 0.3 + 0.5
    now = stamp + latency_s
    blended = schedule.blended(new, stamp, now)
    node, outputs = _outputs({"arm": {"joints": ["a2", "a1"]},
                              "base": {"joints": ["b1"], "interface": "velocity", "velocity_limits": [10.0]}})
    outputs.publish_chunk(new, stamp, now, blended)
    (whole,) = node.sent["~/action_chunk"]
    assert np.array_equal([p.positions for p in whole.points], new)
    (arm,) = node.sent["~/arm/action_chunk"]
    assert np.array_equal([p.positions for p in arm.points], blended[:, [1, 0]])
    following = Chunk(old, 10.0, rate).at(now)[[1, 0]]
    jump = 0.5
    assert np.abs(_sample(arm, now, stamp) - following).max() < jump * (1.0 / rate) / blend_s  # a control step's share
    raw = chunk_to_trajectory(new[:, [1, 0]], ["a2", "a1"], stamp, rate)
    assert np.abs(_sample(raw, now, stamp) - following).min() > 0.9 * jump  # what a controller jumped by before
    after = stamp + trajectory_times(arm) >= now + blend_s - 1e-9
    assert np.array_equal(np.array([p.positions for p in arm.points])[after], new[after][:, [1, 0]])
    (base,) = node.sent["~/base/action_chunk"]
    ahead = len(base.points) - 1
    assert np.array_equal([p.velocities[0] for p in base.points[:-1]], blended[len(new) - ahead:, 3])
    with pytest.raises(ValueError, match=r"blended chunk \[49, 6\] for a chunk \[50, 6\]"):
        outputs.publish_chunk(new, stamp, now, blended[1:])


def test_a_joint_command_remap_that_groups_leave_unpublished_is_named():
    """``turbopi.launch.py command_topic:=/arm_controller/commands`` (or ``-r ~/joint_command:=...``) remaps
    ~/joint_command, which a node with action.groups does not publish (both shipped robot configs have groups): the
    controller would get nothing, without a word. The warning names the remap and the groups' command topics."""
    from rclpy.node import Node
    from ros_helpers import rclpy_in_this_process
    from turbopi_ros.ros.action_outputs import unpublished_command_remap

    groups = groups_from_parameters(_params({"arm": {"joints": JOINTS}}), JOINTS)
    with rclpy_in_this_process():
        remapped = Node("turbopi_node", cli_args=["--ros-args", "-r", "~/joint_command:=/arm_controller/commands"])
        plain = Node("turbopi_node")
        try:
            warning = unpublished_command_remap(remapped, groups)
            assert "/arm_controller/commands" in warning and "action.group.arm.command_topic" in warning, warning
            assert unpublished_command_remap(remapped, ()) == ""  # without groups it is published: the remap works
            assert unpublished_command_remap(plain, groups) == ""
        finally:
            remapped.destroy_node()
            plain.destroy_node()
