"""Action groups for the node tests (test_node_groups.py) and the launch test (test_groups_launch.py): the demo's
seven action joints as a left arm (position, its own joint order), a right arm (velocity, scaled and limited) and a
gripper, each on its controller's topics; a recorder of what each group receives, and the checks both tests make."""
from __future__ import annotations

import threading
import time
from typing import List

import numpy as np
import pytest

from jtc_rules import Controller, problem
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
    """Each group's trajectories and commands with their arrival times, subscribed on ``node``; ``trajectory_sources``
    and ``command_sources``: each group's (arrival, the node's publish time from the rmw source timestamp) per
    message."""

    def __init__(self, node):
        from std_msgs.msg import Float64MultiArray
        from trajectory_msgs.msg import JointTrajectory

        self.lock = threading.Lock()
        self.trajectories = {g: [] for g in GROUPS}
        self.trajectory_sources = {g: [] for g in GROUPS}
        self.commands = {g: [] for g in GROUPS}
        self.command_sources = {g: [] for g in GROUPS}
        for g, spec in GROUPS.items():
            node.create_subscription(JointTrajectory, spec["trajectory"],
                                     self._keep(self.trajectories[g], self.trajectory_sources[g]), 10)
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


LATE_S = 0.5  # how much later than the node read its clock a chunk may be published, on a loaded machine


def _node_clock_at(full: list, sources: np.ndarray, sent: dict) -> np.ndarray:
    """When the node read its clock (ChunkFlow.publish's ``now``) for each of the whole chunks ``full`` (source, msg),
    as [earliest, latest] rows: exactly from the velocity group's trajectory published with it (velocity_trajectory
    times its first step still ahead from then; ``sent``: each group's (source, msg)); else between LATE_S before its
    publication and its publication."""
    bounds = np.stack([sources - LATE_S, sources], axis=1)
    velocity = [g for g, spec in GROUPS.items() if spec.get("interface") == "velocity"]
    for source, msg in (pair for g in velocity for pair in sent[g]):
        i = int(np.searchsorted(sources, source, side="right")) - 1
        if i >= 0 and len(msg.points):
            bounds[i] = _clock_reading(full[i][1], msg)
    return bounds


def _clock_reading(whole, msg) -> float:
    """The node's clock reading that the velocity trajectory ``msg``, published with the chunk ``whole``, is timed
    from (action_outputs.velocity_trajectory): its first step still ahead, then the stop; the step's time after the
    observation less its time in ``msg``."""
    first = len(whole.points) + 2 - len(msg.points)  # that step, 1-based
    return stamp_of(whole) + first / RATE - trajectory_times(msg)[0]


def _with_their_chunks(feeder, recorder: Recorder, g: str) -> list:
    """Group ``g``'s trajectories as (the node's publish time, msg, the whole chunk published with it, the ones before
    it blended from): the node publishes ~/action_chunk, then each group's, so a group trajectory's chunk is the last
    one published before it (rmw source timestamps); it fades from the one before that, and while that one was still
    fading in when the node read its clock for this one (set less than blend_s before), from the ones before it too
    (ChunkSchedule: Fade.settled). The node's clock readings come from _node_clock_at: where one is known only within
    bounds, a chunk that may have been in the fade is counted in. Those published before the second chunk recorded
    here are left out."""
    blend_s = float(PARAMS["blend_s"])
    # The trajectories first, then the chunks: the node publishes a chunk before its groups' trajectories, so a
    # chunk and its trajectories that arrive between the two reads leave no trajectory without its chunk (it would
    # be paired with the chunk before).
    with recorder.lock:
        sent = {h: [(source, m) for (_, m), (_, source) in zip(recorder.trajectories[h],
                                                               recorder.trajectory_sources[h])] for h in GROUPS}
    with feeder.lock:
        full = [(source, m) for _, source, m in feeder.chunks_info]
    sources = np.array([source for source, _ in full])
    clock = _node_clock_at(full, sources, sent)
    paired = []
    for source, msg in sent[g]:
        i = int(np.searchsorted(sources, source, side="right")) - 1
        if i >= 1:
            j = i - 1
            while j >= 1 and clock[i, 0] - clock[j, 1] < blend_s:
                j -= 1
            paired.append((source, msg, full[i][1], [m for _, m in full[j:i]]))
    return paired


def _within_the_blend(values: np.ndarray, raw: np.ndarray, olds: List[np.ndarray], times: np.ndarray,
                      source: float, what: str) -> int:
    """``values`` [k, n] at the chunk's point ``times`` (node clock), published at ``source``: the blended chunk
    (ChunkSchedule.blended): from blend_s after the publication (the node read its clock before that) the chunk's own
    ``raw``; before, between the old chunks' ``olds`` (nan where one had ended) and the new one's, element by element.
    Returns how many values were blended (not the raw chunk's)."""
    blend_s = float(PARAMS["blend_s"])
    after = times >= source + blend_s
    assert np.array_equal(values[after], raw[after]), what
    olds = [np.where(np.isnan(old), raw, old) for old in olds]
    low, high = np.minimum.reduce([raw, *olds]), np.maximum.reduce([raw, *olds])
    assert np.all((values >= low - 1e-9) & (values <= high + 1e-9)), (what, values, low, high)
    return int(np.sum(values != raw))


def _old_at(old_msg, times: np.ndarray, cols) -> np.ndarray:
    """The chunk ``old_msg`` (~/action_chunk) where the commands had it at ``times``: policy.chunking's Chunk.at, nan
    past its end."""
    from turbopi_ros.policy.chunking import Chunk

    chunk = Chunk(np.array([p.positions for p in old_msg.points])[:, cols], stamp_of(old_msg), RATE)
    rows = [chunk.at(t) for t in times]
    return np.array([r if r is not None else np.full(len(cols), np.nan) for r in rows])


def check_group_trajectories(feeder, recorder: Recorder, min_common: int = 2) -> dict:
    """Each group's trajectories against the whole chunks (~/action_chunk) published with them: only the group's
    joints in its order. A position group's: the chunk's stamp, point times and columns, blended from the chunk
    published before it for blend_s (_within_the_blend). The velocity group's: the
    columns scaled and clamped, no positions, stamped 0, the steps still ahead when it was published timed from then,
    then a stop a control step after the last (action_outputs.velocity_trajectory). Each is what a
    joint_trajectory_controller takes and can follow (jtc_rules, with allow_integration_in_goal_trajectories for the
    velocity group). Returns how many velocity values were clamped and how many values blended."""
    counts = {"clamped": 0, "blended": 0}
    for g, spec in GROUPS.items():
        velocity = spec.get("interface") == "velocity"
        controller = Controller(spec["joints"], allow_integration_in_goal_trajectories=velocity)
        paired = _with_their_chunks(feeder, recorder, g)
        assert len(paired) >= min_common, (g, len(paired))
        for source, msg, whole, earlier in paired:
            assert list(msg.joint_names) == spec["joints"], g
            assert problem(msg, controller, arrival=source) is None, (g, problem(msg, controller, arrival=source))
            expected = np.array([p.positions for p in whole.points])[:, columns(spec["joints"])]
            chunk_times = stamp_of(whole) + trajectory_times(whole)
            olds = [_old_at(before, chunk_times, columns(spec["joints"])) for before in earlier]
            times = trajectory_times(msg)
            if velocity:
                assert stamp_of(msg) == 0.0 and all(len(p.positions) == 0 for p in msg.points), g
                velocities = np.array([p.velocities for p in msg.points])
                ahead = len(msg.points) - 1  # the steps still ahead, then the stop
                rows = slice(len(expected) - ahead, None)
                scaled = [np.clip(x * SCALE, -LIMIT, LIMIT)[rows] for x in (expected, *olds)]
                counts["blended"] += _within_the_blend(velocities[:-1], scaled[0], scaled[1:], chunk_times[rows],
                                                       source, g)
                assert not np.any(velocities[-1]), g
                counts["clamped"] += int(np.sum(np.abs(expected[rows] * SCALE) > LIMIT))
                assert np.allclose(np.diff(times), 1.0 / RATE, atol=2e-9), g
                # timed from its publication: the node's clock, read just before it published the whole chunk and
                # the groups before this one, so earlier by that much; up to LATE_S on a loaded machine
                # (test_action_outputs checks the timing exactly)
                late = source - _clock_reading(whole, msg)
                assert -2e-3 <= late < LATE_S, (g, late)
                continue
            assert stamp_of(msg) == stamp_of(whole) and np.array_equal(times, trajectory_times(whole)), g
            assert times[0] == pytest.approx(1.0 / RATE)
            positions = np.array([p.positions for p in msg.points])
            counts["blended"] += _within_the_blend(positions, expected, olds, chunk_times, source, g)
            velocities = np.array([p.velocities for p in msg.points])
            assert np.allclose(velocities[:-1], np.gradient(positions, 1.0 / RATE, axis=0, edge_order=2)[:-1])
            assert np.all(velocities[-1] == 0)
    return counts


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
