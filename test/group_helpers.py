"""Action groups for the node tests (test_node_groups.py) and the launch test (test_groups_launch.py): the demo's
seven action joints as a left arm (position, its own joint order), a right arm (velocity, scaled and limited) and a
gripper, each on its controller's topics; a recorder of what each group receives, and the checks both tests make."""
from __future__ import annotations

import threading
import time
from typing import List

import numpy as np
import pytest

from ros_helpers import assert_published_at, node_params, stamp_of, trajectory_times

PARAMS = node_params()
RATE = PARAMS["control_rate_hz"]
COMMAND_HZ = 40.0  # not the joint_states rate: the streams follow command_rate_hz
LIMIT = 0.4  # right arm velocity limit: the tiny random model's outputs (clamped to +-3.14) go beyond it
SCALE = 2.0  # right arm: model values x SCALE are the velocities sent
GROUPS = {
    "left_arm": dict(joints=["joint_3", "joint_1", "joint_2"], trajectory="/left_arm_controller/joint_trajectory",
                     command="/left_arm_controller/commands"),
    "right_arm": dict(joints=["joint_4", "joint_5", "joint_6"], trajectory="/right_arm_controller/joint_trajectory",
                      command="/right_arm_velocity_controller/commands", interface="velocity"),
    "gripper": dict(joints=["gripper"], trajectory="/turbopi_node/gripper/action_chunk",
                    command="/gripper_controller/commands"),
}


def group_params() -> dict:
    """The node parameters (YAML values) that set GROUPS up; the gripper keeps its default trajectory topic."""
    p = {"action.groups": list(GROUPS), "command_rate_hz": COMMAND_HZ}
    for name, spec in GROUPS.items():
        p[f"action.group.{name}.joints"] = spec["joints"]
        p[f"action.group.{name}.command_topic"] = spec["command"]
        if not spec["trajectory"].startswith("/turbopi_node/"):
            p[f"action.group.{name}.trajectory_topic"] = spec["trajectory"]
    p["action.group.right_arm.interface"] = "velocity"
    p["action.group.right_arm.velocity_limits"] = [LIMIT] * 3
    p["action.group.right_arm.velocity_scale"] = SCALE
    return p


def group_overrides() -> dict:
    """group_params as ``-p name:=value`` strings (node_session's overrides)."""
    def text(v):
        return "[" + ", ".join(str(x) for x in v) + "]" if isinstance(v, list) else v
    return {k: text(v) for k, v in group_params().items()}


class Recorder:
    """Each group's trajectories and commands with their arrival times, subscribed on ``node``; ``command_sources``:
    each group's (arrival, the node's publish time from the rmw source timestamp) per command."""

    def __init__(self, node):
        from std_msgs.msg import Float64MultiArray
        from trajectory_msgs.msg import JointTrajectory

        self.lock = threading.Lock()
        self.trajectories = {g: [] for g in GROUPS}
        self.commands = {g: [] for g in GROUPS}
        self.command_sources = {g: [] for g in GROUPS}
        for g, spec in GROUPS.items():
            node.create_subscription(JointTrajectory, spec["trajectory"], self._keep(self.trajectories[g]), 10)
            node.create_subscription(Float64MultiArray, spec["command"],
                                     self._keep(self.commands[g], self.command_sources[g]), 100)

    def _keep(self, store, sources=None):
        def callback(msg, info):
            t = time.monotonic()
            with self.lock:
                store.append((t, msg))
                if sources is not None:
                    sources.append((t, info["source_timestamp"] * 1e-9))
        return callback

    def since(self, store, t0: float):
        with self.lock:
            return [(t, m) for t, m in store if t >= t0]


def columns(joints):
    return [PARAMS["action.joints"].index(j) for j in joints]


def check_group_trajectories(full_chunks, recorder: Recorder, min_common: int = 2) -> int:
    """Each group's trajectories against the whole chunks (~/action_chunk) of the same stamp: only the group's joints
    in its order, the same stamp and point times, position groups the chunk's columns, the velocity group the
    columns scaled and clamped with no positions. Returns how many velocity values were clamped."""
    full = {stamp_of(m): m for _, m in full_chunks}
    per_group = {g: {stamp_of(m): m for _, m in recorder.since(recorder.trajectories[g], 0.0)} for g in GROUPS}
    common = set(full).intersection(*[set(s) for s in per_group.values()])
    assert len(common) >= min_common, {g: len(s) for g, s in per_group.items()}
    for g in GROUPS:  # every group trajectory is one of a chunk's: the same stamps everywhere
        assert {s for s in per_group[g] if s >= min(full)} <= set(full), g
    clamped = 0
    for stamp in sorted(common):
        chunk = np.array([p.positions for p in full[stamp].points])
        for g, spec in GROUPS.items():
            msg = per_group[g][stamp]
            assert list(msg.joint_names) == spec["joints"], g
            assert np.array_equal(trajectory_times(msg), trajectory_times(full[stamp])), g
            assert trajectory_times(msg)[0] == pytest.approx(1.0 / RATE)
            expected = chunk[:, columns(spec["joints"])]
            if spec.get("interface") == "velocity":
                assert all(len(p.positions) == 0 for p in msg.points), g
                velocities = np.array([p.velocities for p in msg.points])
                assert np.array_equal(velocities, np.clip(expected * SCALE, -LIMIT, LIMIT)), g
                clamped += int(np.sum(np.abs(expected * SCALE) > LIMIT))
                continue
            positions = np.array([p.positions for p in msg.points])
            assert np.array_equal(positions, expected), g
            velocities = np.array([p.velocities for p in msg.points])
            assert np.allclose(velocities[:-1], np.diff(expected, axis=0) * RATE) and np.all(velocities[-1] == 0)
    return clamped


def check_command_rates(recorder: Recorder, t0: float, seconds: float, chunks: List[tuple]) -> None:
    """Each group's commands over [t0, t0 + seconds) were published at COMMAND_HZ (ros_helpers.assert_published_at:
    the median period, and kept coming while one of ``chunks``, the feeder's (arrival, ~/action_chunk) pairs, had an
    action), each with the group's joints; the velocity group's within its limits."""
    for g, spec in GROUPS.items():
        arrived = [(t, m) for t, m in recorder.since(recorder.commands[g], t0) if t < t0 + seconds]
        with recorder.lock:
            sources = list(recorder.command_sources[g])
        assert_published_at(sources, t0, seconds, COMMAND_HZ, rel=0.05, what=f"{g}: ", chunks=chunks)
        assert len([t for t, _ in sources if t0 <= t < t0 + seconds]) == len(arrived), g
        assert all(len(m.data) == len(spec["joints"]) for _, m in arrived), g
        if spec.get("interface") == "velocity":
            assert np.all(np.abs([m.data for _, m in arrived]) <= LIMIT + 1e-12), g
