"""The node's action outputs: the chunk as JointTrajectory messages and the streamed command as Float64MultiArray,
either as one stream for all action joints or one per action group (one per ros2_control controller).

No groups (``action.groups: []``, the default): ``~/action_chunk`` (JointTrajectory of every action joint) and
``~/joint_command`` (Float64MultiArray, action.joints order), as the node always published them.

Groups: ``action.groups: [left_arm, right_arm, grippers]`` names them; each group's parameters are
``action.group.<name>.<key>`` (declared once action.groups is read: rclpy needs parameters declared before they are
read), in YAML ``action: {group: {left_arm: {joints: [...], ...}}}`` or dotted keys:

    joints            the action joints the group commands, in its controller's order (required)
    interface         position | velocity: what the model's values for these joints are
    trajectory_topic  its JointTrajectory (default ~/<name>/action_chunk; e.g. /left_arm_controller/joint_trajectory)
    command_topic     its Float64MultiArray stream (default ~/<name>/joint_command; e.g. /gripper_controller/commands)
    velocity_scale    velocity groups: the model's values times this are the controller's velocities (DROID's
                      are normalized, |v| <= 1 is 0.2 rad per 15 Hz step: 3.0 gives rad/s); default 1
    velocity_limits   velocity groups: per joint, |v| (after the scale) is clamped to it (required there, [] for
                      position groups)

Every group gets its own JointTrajectory per chunk with only its joints, and its own command at each command tick. A
position group's trajectory is the one ``~/action_chunk`` would carry for those joints (the chunk's header stamp,
point k at (k + 1) / control_rate_hz after it, positions, velocities by central differences, zero at the last
point), except that the points before the blend ends (blend_s after it is published) carry the blended command, as
the command stream does: the chunk being followed fading into the new one (policy.chunking's ChunkSchedule.blended),
so that a joint_trajectory_controller does not jump to the new chunk on arrival. A velocity group's points carry
``velocities`` (blended the same way, clamped to velocity_limits) and no positions: a joint_trajectory_controller
takes them with ``allow_integration_in_goal_trajectories: true`` (docs/node.md says why not positions integrated
here). It is stamped 0 and holds the velocities still ahead when it is published, timed from then, and a stop one
control step after the last: what that controller can follow (velocity_trajectory). Its command stream carries the
velocities, clamped, for a velocity forward_command_controller, and a zero-velocity command once whenever the stream
stops (inputs stale, inference failed, disabled, shutdown): a forward controller holds its last command, and a held
velocity keeps the joint moving. For the same reason ``on_stale: hold`` holds a velocity group at zero velocity.
With groups, ``~/action_chunk`` still carries the whole chunk, unblended (the record that turbopi-replay and the
recorder compare against; not for a controller), and ``~/joint_command`` is not published.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ..policy.action_groups import KINDS, ActionGroup, check_groups
from .conversions import chunk_to_trajectory, sec_to_duration
from .parameters import Param, declare_parameters, resolved_topic
from .qos_overrides import create_overridable

GROUP_NAME = r"[A-Za-z][A-Za-z0-9_]*"  # a parameter name part and a topic name token
GROUP_PREFIX = "action.group."


def group_parameters(name: str) -> Dict[str, Param]:
    """The parameters of group ``name`` (full names -> Param)."""
    prefix = f"{GROUP_PREFIX}{name}."
    return {
        prefix + "joints": Param([], f"action joints of group {name}, in its controller's order", required=True,
                                 items=str),
        prefix + "interface": Param("position", "what the model's values for these joints are: position targets "
                                                "or joint velocities", choices=KINDS),
        prefix + "trajectory_topic": Param(f"~/{name}/action_chunk", "this group's JointTrajectory topic",
                                           required=True),
        prefix + "command_topic": Param(f"~/{name}/joint_command", "this group's Float64MultiArray command topic",
                                        required=True),
        prefix + "velocity_scale": Param(1.0, "velocity groups: the model's values times this are the velocities "
                                              "sent (e.g. DROID's normalized joint velocities to rad/s)",
                                         min=-1000.0, max=1000.0),
        prefix + "velocity_limits": Param([], "velocity groups: per joint, the largest |velocity| sent (after "
                                              "velocity_scale; required there); [] for position groups", items=float,
                                          min=0.0),
    }


def group_table(names: Sequence[str]) -> Dict[str, Param]:
    """The parameters of the groups ``names`` (action.groups), which are checked first."""
    bad = [n for n in names if not re.fullmatch(GROUP_NAME, n)]
    if bad:
        raise ValueError(f"parameter action.groups: {bad} are not group names (letters, digits, '_'; a letter first)")
    twice = sorted({n for n in names if list(names).count(n) > 1})
    if twice:
        raise ValueError(f"parameter action.groups: {twice} listed more than once")
    table: Dict[str, Param] = {}
    for n in names:
        table.update(group_parameters(n))
    return table


@dataclasses.dataclass(frozen=True)
class GroupOutput:
    """One action group as the node publishes it."""

    group: ActionGroup
    columns: Tuple[int, ...]  # the group's joints' columns in the chunk (action.joints order)
    trajectory_topic: str
    command_topic: str
    velocity_limits: Optional[np.ndarray]  # velocity groups: [n] > 0
    velocity_scale: float = 1.0

    @property
    def name(self) -> str:
        return self.group.name

    @property
    def is_velocity(self) -> bool:
        return self.group.kind == "velocity"

    def values(self, actions: np.ndarray) -> np.ndarray:
        """The group's columns of actions [..., N] (a velocity group's scaled and clamped to its limits)."""
        values = np.asarray(actions, dtype=np.float64)[..., list(self.columns)]
        if self.velocity_limits is not None:
            values = np.clip(values * self.velocity_scale, -self.velocity_limits, self.velocity_limits)
        return values


def groups_from_parameters(p: Dict[str, Any], action_joints: Sequence[str]) -> Tuple[GroupOutput, ...]:
    """The groups of the checked parameters ``p`` (action.groups and each group's), validated against the action
    joints; a ValueError names the parameter that is wrong."""
    action_joints = list(action_joints)
    index = {j: i for i, j in enumerate(action_joints)}
    owner: Dict[str, str] = {}
    outputs: List[GroupOutput] = []
    for name in p["action.groups"]:
        key = f"{GROUP_PREFIX}{name}."
        joints = list(p[key + "joints"])
        unknown = [j for j in joints if j not in index]
        if unknown:
            raise ValueError(f"parameter {key}joints: {unknown} are not in action.joints {action_joints}")
        repeated = sorted({j for j in joints if joints.count(j) > 1})
        if repeated:
            raise ValueError(f"parameter {key}joints: {repeated} listed more than once")
        for j in joints:
            if j in owner:
                raise ValueError(f"parameter {key}joints: joint {j!r} is in group {owner[j]!r} already "
                                 f"({GROUP_PREFIX}{owner[j]}.joints): a joint belongs to one group")
            owner[j] = name
        kind = p[key + "interface"]
        limits = list(p[key + "velocity_limits"])
        if kind == "velocity":
            if len(limits) != len(joints) or not all(v > 0 for v in limits):
                raise ValueError(f"parameter {key}velocity_limits: a velocity group needs one limit > 0 per joint "
                                 f"({len(joints)}), got {limits}")
            jumps = dict(zip(action_joints, p.get("action.max_jump") or ()))
            checked = [j for j in joints if jumps.get(j, 0.0) > 0.0]
            if checked:
                raise ValueError(f"parameter action.max_jump: {checked} are in velocity group {name!r}, whose actions "
                                 "are velocities, not positions to compare with the observed ones: give them 0")
        elif limits:
            raise ValueError(f"parameter {key}velocity_limits: only velocity groups take limits (this group's "
                             f"interface is {kind}): leave it []")
        scale = float(p[key + "velocity_scale"])
        if kind == "velocity" and scale == 0.0:
            raise ValueError(f"parameter {key}velocity_scale: 0 would send no motion at all")
        if kind != "velocity" and scale != 1.0:
            raise ValueError(f"parameter {key}velocity_scale: only velocity groups are scaled (this group's "
                             f"interface is {kind}): leave it 1.0")
        outputs.append(GroupOutput(ActionGroup(name, tuple(joints), kind), tuple(index[j] for j in joints),
                                   p[key + "trajectory_topic"], p[key + "command_topic"],
                                   np.array(limits, dtype=np.float64) if kind == "velocity" else None, scale))
    check_groups([o.group for o in outputs], action_joints)
    return tuple(outputs)


def unpublished_command_remap(node: Node, groups: Sequence[GroupOutput]) -> str:
    """A warning when ~/joint_command is remapped (turbopi.launch.py's command_topic, ``-r``) on a node with action
    groups, which does not publish it: the remap's target would get nothing. "" otherwise."""
    target = node.resolve_topic_name("~/joint_command")
    if not groups or target == node.resolve_topic_name("~/joint_command", only_expand=True):
        return ""
    topics = ", ".join(f"{GROUP_PREFIX}{g.name}.command_topic ({g.command_topic})" for g in groups)
    return (f"~/joint_command is remapped to {target}, but with action.groups it is not published: nothing goes "
            f"there; each group's commands go to its own topic, set in the parameter file: {topics}")


def declare_groups(node: Node, p: Dict[str, Any], action_joints: Sequence[str]) -> Tuple[GroupOutput, ...]:
    """Declare the parameters of the groups in ``p["action.groups"]`` on ``node`` and return the groups. A group
    parameter given (YAML, -p) for a group action.groups does not list, or with an unknown key, is refused: a typo
    there would otherwise leave a group without its setting."""
    table = group_table(list(p["action.groups"]))
    given = [n for n in getattr(node, "_parameter_overrides", {}) if n.startswith(GROUP_PREFIX)]
    stray = sorted(n for n in given if n not in table)
    if stray:
        raise ValueError(f"parameter {stray[0]}: no such group parameter (groups {list(p['action.groups'])} in "
                         f"action.groups; keys {[k.rsplit('.', 1)[1] for k in group_parameters('g')]})")
    values = dict(p, **declare_parameters(node, table))
    for name in table:
        if name.endswith("_topic"):
            resolved_topic(node, values[name], name)  # a name rcl refuses: refused here, before the model loads
    return groups_from_parameters(values, action_joints)


def velocity_trajectory(velocities: np.ndarray, joint_names: Sequence[str], stamp: float, control_rate_hz: float,
                        now: float) -> Optional[JointTrajectory]:
    """Velocities [H, n], those of control steps 1..H after ``stamp`` (the chunk's timing), as a JointTrajectory a
    joint_trajectory_controller can follow from ``now`` (node clock): stamped 0, so it starts on arrival; the
    velocities whose time is still ahead of ``now``, timed from ``now``; then zero velocity one control step after
    the last, so it ends at rest; ``positions`` empty. None when even that stop is not ahead of ``now``.

    Why (ros2_controllers' joint_trajectory_controller, Humble to Rolling): it integrates velocity-only points into
    positions one segment at a time, the first from its own state before the trajectory, and only when it first samples
    the trajectory before its first point; a trajectory stamped at its observation arrives a latency later, past its
    first point once that exceeds a control step, and the controller then integrates from a point that has no
    positions (undefined behaviour in its Trajectory::deduce_from_derivatives). And since Jazzy its default
    allow_nonzero_velocity_at_trajectory_end: false rejects a trajectory whose last point moves."""
    velocities = np.asarray(velocities, dtype=np.float64)
    if velocities.ndim != 2 or velocities.shape[1] != len(joint_names):
        raise ValueError(f"velocities {list(velocities.shape)} for {len(joint_names)} joint names")
    dt = 1.0 / control_rate_hz
    times = (stamp - now) + dt * np.arange(1, len(velocities) + 2)  # each control step's, then the stop's
    ahead = np.flatnonzero(times > 0.0)
    if not len(ahead):
        return None
    rows = np.vstack([velocities, np.zeros((1, len(joint_names)))])
    msg = JointTrajectory()
    msg.joint_names = list(joint_names)
    for k in ahead:
        msg.points.append(JointTrajectoryPoint(velocities=rows[k].tolist(), time_from_start=sec_to_duration(times[k])))
    return msg


class ActionOutputs:
    """The publishers of chunks and commands (module docstring) and the messages they carry."""

    def __init__(self, node: Node, action_joints: Sequence[str], groups: Sequence[GroupOutput], rate_hz: float,
                 halt_on_stop: bool = False, halt_time_s: float = 0.25):
        self.action_joints = list(action_joints)
        self.halt_on_stop = bool(halt_on_stop)  # action.halt_on_stop (halt)
        self.halt_time_s = float(halt_time_s)  # action.halt_time_s
        self.groups = tuple(groups)
        self.rate_hz = float(rate_hz)
        def publisher(msg_type, topic: str):  # reliable, volatile, depth 10 unless overridden (qos_overrides.py)
            return create_overridable(node.create_publisher, msg_type, topic, None, QoSProfile(depth=10))

        self.chunk_pub = publisher(JointTrajectory, "~/action_chunk")
        self.command_pub = None if self.groups else publisher(Float64MultiArray, "~/joint_command")
        self._trajectory_pubs = [publisher(JointTrajectory, g.trajectory_topic) for g in self.groups]
        self._command_pubs = [publisher(Float64MultiArray, g.command_topic) for g in self.groups]
        self._moving = False  # a velocity group was sent a non-zero-velocity stream since the last stop

    def describe(self) -> str:
        if not self.groups:
            return "~/action_chunk, ~/joint_command"
        return ", ".join(f"{g.name} ({g.group.kind}, {len(g.columns)} joints: {g.trajectory_topic}, {g.command_topic})"
                         for g in self.groups)

    def publish_chunk(self, actions: np.ndarray, stamp: float, now: float,
                      blended: Optional[np.ndarray] = None) -> None:
        """The chunk [H, N] observed at ``stamp``, published at ``now`` (node clock): the whole one, as the model gave
        it, on ~/action_chunk; then each group's (a velocity group's from ``now``: velocity_trajectory) from
        ``blended``, the chunk as the commands will follow it (ChunkSchedule.blended: the old chunk faded into it over
        blend_s), where given, so that a group's controller meets the command stream instead of jumping to the new
        chunk on arrival."""
        self.chunk_pub.publish(chunk_to_trajectory(actions, self.action_joints, stamp, self.rate_hz))
        if blended is not None:
            if np.shape(blended) != np.shape(actions):
                raise ValueError(f"blended chunk {list(np.shape(blended))} for a chunk {list(np.shape(actions))}")
            actions = blended
        for g, pub in zip(self.groups, self._trajectory_pubs):
            joints = g.group.joints
            if not g.is_velocity:
                pub.publish(chunk_to_trajectory(g.values(actions), joints, stamp, self.rate_hz))
                continue
            msg = velocity_trajectory(g.values(actions), joints, stamp, self.rate_hz, now)
            if msg is not None:
                pub.publish(msg)

    def halt(self, schedule, now: float) -> None:
        """The operator's stop (~/enable false, deactivate, shutdown), before ``schedule`` (policy.chunking's
        ChunkSchedule) is cleared: with action.halt_on_stop, while a chunk is followed, brake it to a stop over
        action.halt_time_s: on ~/action_chunk without groups; with groups on each group's trajectory, not on
        ~/action_chunk, which is then the record of the chunks, no controller's.

        The halt is one point halt_time_s after it arrives (stamped 0) with zero velocity: at the chunk's command
        halfway there (ChunkSchedule.halt_action); a velocity group's has zero velocity only. From the chunk's speed v
        the controller's cubic to it brakes evenly at v / halt_time_s. One control step, as the node halted before,
        took a joint at 1 rad/s through 200 rad/s^2 at 50 Hz (test_action_outputs)."""
        target = schedule.halt_action(now, self.halt_time_s) if self.halt_on_stop else None
        if target is None:
            return
        # a one-action chunk stamped 0 at the rate 1 / halt_time_s: one point halt_time_s after it arrives, at zero
        # velocity (the last point's); a velocity group's: no velocities ahead, only the stop
        halt, halt_rate = target[None], 1.0 / self.halt_time_s
        if not self.groups:
            self.chunk_pub.publish(chunk_to_trajectory(halt, self.action_joints, 0.0, halt_rate))
            return
        for g, pub in zip(self.groups, self._trajectory_pubs):
            joints = g.group.joints
            pub.publish(velocity_trajectory(np.zeros((0, len(joints))), joints, now, halt_rate, now) if g.is_velocity
                        else chunk_to_trajectory(g.values(halt), joints, 0.0, halt_rate))

    def publish_command(self, command: np.ndarray, held: bool = False) -> None:
        """One command tick: ``command`` [N] (action.joints order); ``held`` (on_stale: hold repeating the last
        one): velocity groups get zero velocity."""
        if self.command_pub is not None:
            self.command_pub.publish(Float64MultiArray(data=np.asarray(command, dtype=np.float64).tolist()))
            return
        for g, pub in zip(self.groups, self._command_pubs):
            values = np.zeros(len(g.columns)) if (held and g.is_velocity) else g.values(command)
            pub.publish(Float64MultiArray(data=values.tolist()))
        self._moving = not held and any(g.is_velocity for g in self.groups)

    def stop(self) -> None:
        """The command stream stops: velocity groups that were streaming get one zero-velocity command (their
        forward controllers would hold the last velocity); nothing else is published."""
        if not self._moving:
            return
        self._moving = False
        for g, pub in zip(self.groups, self._command_pubs):
            if g.is_velocity:
                pub.publish(Float64MultiArray(data=[0.0] * len(g.columns)))
