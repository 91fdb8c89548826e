"""By-hand check (README.md): every JointTrajectory the node's ActionOutputs sends, fed to ros2_controllers' own
Trajectory code (build/harness, built by build.sh), published 0 to 0.9 s after the observation.

    .venv/bin/python scripts/jtc_check/check.py

Each trajectory must sample cleanly from its arrival to its end under AddressSanitizer, UBSan and libstdc++'s
assertions (harness), and the release build (harness_release) must not crash. A velocity group's sampled velocity at
each point's time must be the point's. As a control, a velocity-only trajectory stamped at its observation, as the
node sent them before, must fail once it arrives past its first point: the harness sees the fault. And a chunk
switch: over the blend, the controller on the blended trajectory the node sends stays within half the raw chunk's
distance from the node's command stream. Exit 1 if any of it does not hold."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from trajectory_msgs.msg import JointTrajectory

from turbopi_ros.policy.chunking import ChunkSchedule
from turbopi_ros.ros.action_outputs import ActionOutputs, groups_from_parameters

HERE = Path(__file__).resolve().parent
JOINTS = ["a1", "a2", "a3", "b1", "b2", "g"]
GROUPS = {"action.groups": ["arm", "base"],
          "action.group.arm.joints": ["a2", "a1"], "action.group.arm.interface": "position",
          "action.group.arm.trajectory_topic": "/arm_controller/joint_trajectory",
          "action.group.arm.command_topic": "/arm_controller/commands",
          "action.group.arm.velocity_scale": 1.0, "action.group.arm.velocity_limits": [],
          "action.group.base.joints": ["b1", "b2"], "action.group.base.interface": "velocity",
          "action.group.base.trajectory_topic": "/base_controller/joint_trajectory",
          "action.group.base.command_topic": "/base_controller/commands",
          "action.group.base.velocity_scale": 1.0, "action.group.base.velocity_limits": [0.5, 0.5]}
RATE_HZ, STAMP, PERIOD_S = 15.0, 100.0, 0.01  # DROID's 15 Hz; a 100 Hz controller
LATENCIES = (0.0, 0.03, 0.07, 0.2, 0.5, 0.9)


class Publishers:
    """A node's create_publisher for ActionOutputs: each topic's messages, without DDS."""

    def __init__(self):
        self.sent = {}

    def create_publisher(self, msg_type, topic, depth):
        sent = self.sent.setdefault(topic, [])
        return type("Publisher", (), {"publish": lambda _, msg: sent.append(msg)})()


def _ns(t) -> int:
    return t.sec * 1_000_000_000 + t.nanosec


def sample(msg: JointTrajectory, arrival: float, release: bool = False, state=None):
    """(return code, samples: [(seconds since arrival, values or None)], stderr) of the harness on ``msg``; ``state``:
    the joints' positions when it arrives (zero by default)."""
    n = len(msg.joint_names)
    has_positions, has_velocities = int(len(msg.points[0].positions) > 0), int(len(msg.points[0].velocities) > 0)
    state = np.zeros(n) if state is None else np.asarray(state, dtype=np.float64)
    lines = [f"{n} {len(msg.points)} {has_positions} {has_velocities} {_ns(msg.header.stamp)} "
             f"{round(arrival * 1e9)} {round(PERIOD_S * 1e9)}", " ".join(msg.joint_names),
             " ".join(repr(float(v)) for v in state), " ".join(["0.0"] * n)]
    lines += [" ".join([str(_ns(p.time_from_start))] + [repr(v) for v in [*p.positions, *p.velocities]])
              for p in msg.points]
    exe = HERE / "build" / ("harness_release" if release else "harness")
    run = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True,
                         env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0"))
    samples = []
    for line in run.stdout.splitlines():
        t, *rest = line.split()
        samples.append((float(t), None if rest == ["nosample"] else np.array(rest, dtype=np.float64)))
    return run.returncode, samples, run.stderr.strip()


def velocity_errors(msg: JointTrajectory, samples) -> list:
    """|sampled velocity - the point's| at each point whose time falls on a sample (stamp 0: from arrival)."""
    n, at = len(msg.joint_names), {round(t, 6): v for t, v in samples if v is not None}
    errors = []
    for p in msg.points:
        t = _ns(p.time_from_start) * 1e-9
        key = round(round(t / PERIOD_S) * PERIOD_S, 6)
        if abs(key - t) < 1e-6 and key in at:
            errors.append(float(np.abs(at[key][n:] - np.asarray(p.velocities)).max()))
    return errors


def node_trajectories(latency: float):
    """(topic, msg) of everything ActionOutputs sends for a 15-action chunk published ``latency`` after its
    observation, then stopped with action.halt_on_stop."""
    node = Publishers()
    outputs = ActionOutputs(node, JOINTS, groups_from_parameters(GROUPS, JOINTS), RATE_HZ, halt_on_stop=True)
    chunk = np.random.default_rng(0).uniform(-1, 1, (15, len(JOINTS)))
    now = STAMP + latency
    outputs.publish_chunk(chunk, STAMP, now)
    schedule = ChunkSchedule(RATE_HZ, blend_s=0.0)
    schedule.set_chunk(chunk, STAMP, now)
    outputs.halt(schedule, now)
    return [(topic, m) for topic, msgs in node.sent.items() for m in msgs if isinstance(m, JointTrajectory)], now


def switch_jumps(latency: float, blend_s: float = 0.1):
    """A new chunk 0.5 away from the one the arm group's controller is following, published ``latency`` after its
    observation at DROID's 15 Hz: how far the controller's samples over the blend put the arm from the node's command
    stream (ChunkSchedule.command: the old chunk fading into the new one), for the raw chunk and for the blended one
    the node sends (ChunkSchedule.blended). Returns {kind: (largest distance at arrival, over the blend, return
    code)}."""
    t = np.arange(1, 16)[:, None] / RATE_HZ
    old_stamp = STAMP - 0.4
    old = 0.3 * np.sin(2.0 * t + np.arange(len(JOINTS)))
    new = 0.3 * np.sin(2.0 * (t + 0.4) + np.arange(len(JOINTS))) + 0.5
    schedule = ChunkSchedule(RATE_HZ, blend_s)
    schedule.set_chunk(old, old_stamp, old_stamp + 0.05)
    now = STAMP + latency
    arrival = now + 0.002
    state = schedule.command(arrival)
    blended = schedule.blended(new, STAMP, now)
    schedule.set_chunk(new, STAMP, now)
    arm = [JOINTS.index(j) for j in GROUPS["action.group.arm.joints"]]
    # the command stream over the blend, in time order (command() forgets the old chunk once its blend is over)
    steps = np.arange(0, round(blend_s / PERIOD_S) + 1)
    path = {round(k * PERIOD_S, 6): schedule.command(arrival + k * PERIOD_S)[arm] for k in steps}
    result = {}
    for kind, chunk in (("raw", None), ("blended", blended)):
        node = Publishers()
        outputs = ActionOutputs(node, JOINTS, groups_from_parameters(GROUPS, JOINTS), RATE_HZ)
        outputs.publish_chunk(new, STAMP, now, chunk)
        (msg,) = node.sent["/arm_controller/joint_trajectory"]
        rc, samples, _ = sample(msg, arrival, state=state[arm])
        away = [np.abs(v[:len(arm)] - path[round(dt, 6)]).max() for dt, v in samples
                if v is not None and round(dt, 6) in path]
        result[kind] = (away[0], max(away), rc) if away else (float("nan"), float("nan"), rc)
    return result


def main() -> int:
    if not (HERE / "build" / "harness").exists():
        print(f"no {HERE / 'build' / 'harness'}: run scripts/jtc_check/build.sh first", file=sys.stderr)
        return 2
    failures = 0
    for latency in LATENCIES:
        trajectories, now = node_trajectories(latency)
        for topic, msg in trajectories:
            rc, samples, err = sample(msg, now + 0.002)
            rc_release, _, _ = sample(msg, now + 0.002, release=True)
            missing = sum(v is None for _, v in samples)
            errors = velocity_errors(msg, samples) if not len(msg.points[0].positions) else []
            ok = rc == 0 and rc_release == 0 and missing == 0 and all(e < 1e-6 for e in errors)
            failures += not ok
            detail = f", velocity at {len(errors)} points within {max(errors):.1e}" if errors else ""
            why = "" if ok else " " + err[:200]
            print(f"latency {latency:.2f} s {topic:34s} {len(msg.points):2d} points, stamp "
                  f"{_ns(msg.header.stamp) * 1e-9:7.3f}: {'ok' if ok else 'FAILED'} (rc {rc}, release rc "
                  f"{rc_release}, {len(samples)} samples, {missing} not sampled{detail}){why}")
    # the control: velocity-only, stamped at the observation (before 2026-12-06): faults past the first point
    for latency, should_fault in ((0.03, False), (0.2, True)):
        trajectories, now = node_trajectories(0.0)
        msg = next(m for topic, m in trajectories if topic == "/base_controller/joint_trajectory")
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(STAMP), 0
        rc, _, err = sample(msg, STAMP + latency)
        faulted = rc != 0
        failures += faulted != should_fault
        print(f"control: velocity-only stamped at the observation, arriving {latency:.2f} s later: "
              f"{'fault' if faulted else 'no fault'} (rc {rc}), expected {'a fault' if should_fault else 'none'}"
              f"{': ' + err.splitlines()[0][:120] if faulted and err else ''}")
    # a chunk switch: over the blend the controller follows the blended trajectory near the node's command stream
    # (which fades from the old chunk to the new), where the raw chunk makes it jump to the new one on arrival
    for latency in (0.03, 0.07, 0.2):
        jumps = switch_jumps(latency)
        (raw0, raw, rc_raw), (smooth0, smooth, rc_smooth) = jumps["raw"], jumps["blended"]
        ok = rc_raw == 0 and rc_smooth == 0 and smooth < 0.5 * raw and smooth0 <= raw0 + 1e-3
        failures += not ok
        print(f"chunk switch {latency:.2f} s after the observation, 0.5 apart, blend_s 0.1, 15 Hz: the controller "
              f"from the command stream on arrival / over the blend: blended {smooth0:.3f} / {smooth:.3f}, raw "
              f"{raw0:.3f} / {raw:.3f}: {'ok' if ok else 'FAILED'}")
    print("jtc_check:", "every trajectory followed" if not failures else f"{failures} FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
