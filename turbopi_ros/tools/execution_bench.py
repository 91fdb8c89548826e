"""turbopi-exec-bench: how chunks become motion, measured in a closed loop with fake_robot.

For each smoothing mode (none, blend, rtc) it starts fake_robot and turbopi_node as processes (the demo's YAML with
the mode's parameters; fake_robot's joints follow ~/joint_command, so what the node sees depends on what it sent),
records ~/joint_command and ~/action_chunk for --duration seconds, and reports:

- jumps: the change of the command across each chunk switch against the per-period step inside chunks (L2 over the
  action joints; mean, p99, max);
- first-d error: RMS distance between each new chunk's first d actions (d = its observation-to-arrival latency in
  actions, rounded up: the actions the robot executed from the previous chunk meanwhile) and the previous chunk at
  the same times;
- command period error: arrival intervals against the nominal period (p50, p99 of the absolute error);
- the RTC denoise's cost against the plain denoise: measured on the same model in this process, interleaved, and as
  the nodes report it.
Writes --json and --png (one joint's commands over a few switches, each mode). A benchmark, not a test.

    turbopi-exec-bench [--duration 20] [--modes none,blend,rtc] [--json F] [--png F]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import processes
from .machine import cpu_model
from ..ros.node_status import STATUS_NAME
from ..policy.chunking import Chunk

MODES: Dict[str, Dict[str, object]] = {
    "none": {"blend_s": 0.0, "rtc.enabled": False},
    "blend": {"blend_s": 0.1, "rtc.enabled": False},
    "rtc": {"blend_s": 0.0, "rtc.enabled": True},
}


@dataclasses.dataclass
class Recording:
    mode: str
    rate_hz: float  # the model's action rate (chunk point spacing)
    commands: List[Tuple[float, np.ndarray]]  # (arrival, ROS time s; values)
    chunks: List[Tuple[float, Chunk]]  # (arrival, chunk with its observation stamp)
    diagnostics: List[Dict[str, str]]


# --- recording ----------------------------------------------------------------------------------------------------
class _Recorder:
    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from std_msgs.msg import Float64MultiArray
        from trajectory_msgs.msg import JointTrajectory

        self.node = rclpy.create_node("turbopi_exec_bench")
        self.lock = threading.Lock()
        self.commands: list = []
        self.chunks: list = []
        self.diagnostics: list = []
        self.node.create_subscription(Float64MultiArray, processes.COMMAND_TOPIC, self._on_command, 100)
        self.node.create_subscription(JointTrajectory, processes.CHUNK_TOPIC, self._on_chunk, 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def _on_command(self, msg) -> None:
        with self.lock:
            self.commands.append((self.now(), np.array(msg.data)))

    def _on_chunk(self, msg) -> None:
        t = self.now()
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        positions = np.array([p.positions for p in msg.points])
        with self.lock:
            self.chunks.append((t, stamp, positions))

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name == STATUS_NAME:
                with self.lock:
                    self.diagnostics.append({kv.key: kv.value for kv in status.values})


def record(mode: str, params_file: Path, duration_s: float, warmup_s: float = 3.0,
           overrides: Optional[Dict[str, object]] = None) -> Recording:
    """Run fake_robot + turbopi_node in ``mode`` and record them for ``duration_s`` after the first chunk and
    ``warmup_s``. rclpy must be initialised by the caller."""
    from rclpy.executors import SingleThreadedExecutor

    params = node_parameters(params_file)
    rate = float(params["control_rate_hz"])
    values = dict(MODES[mode], **(overrides or {}))
    args = [a for name, value in values.items() for a in ("-p", f"{name}:={_ros_value(value)}")]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = [processes.start(processes.NODE, params_file, env, args),
             processes.start(processes.FAKE_ROBOT, params_file, env)]
    recorder = _Recorder()
    executor = SingleThreadedExecutor()
    executor.add_node(recorder.node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        deadline = time.monotonic() + 120
        while not recorder.chunks:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{mode}: no chunk from turbopi_node (exited: "
                                   f"{[p.returncode for p in procs if p.poll() is not None]})")
            time.sleep(0.1)
        time.sleep(warmup_s)
        with recorder.lock:
            recorder.commands.clear()
            recorder.chunks.clear()
            recorder.diagnostics.clear()
        time.sleep(duration_s)
        with recorder.lock:
            commands, raw_chunks = list(recorder.commands), list(recorder.chunks)
            diagnostics = list(recorder.diagnostics)
    finally:
        processes.stop(procs)
        executor.shutdown()
        recorder.node.destroy_node()
    chunks = [(t, Chunk(positions, stamp, rate)) for t, stamp, positions in raw_chunks]
    return Recording(mode=mode, rate_hz=rate, commands=commands, chunks=chunks, diagnostics=diagnostics)


def node_parameters(params_file: Path) -> Dict[str, object]:
    """turbopi_node's parameters as the node reads them from the YAML (every section rcl applies, nested names
    dotted), the defaults where unset. ValueError naming --params-file for a file the node could not read."""
    from ..ros.node_params import PARAMETERS
    from ..ros.params_file import read_sections

    return {**{name: p.default for name, p in PARAMETERS.items()}, **read_sections(Path(params_file))}


def _ros_value(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


# --- metrics --------------------------------------------------------------------------------------------------------
def _summary(values) -> Dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return {"n": 0}
    return {"n": int(len(values)), "mean": float(values.mean()), "p50": float(np.percentile(values, 50)),
            "p99": float(np.percentile(values, 99)), "max": float(values.max())}


def switch_jumps(rec: Recording) -> Dict[str, Dict[str, float]]:
    """Command change across each chunk arrival vs the change between other consecutive commands (L2, joint units)."""
    if len(rec.commands) < 3:
        return {"switch": {"n": 0}, "inside": {"n": 0}}
    times = np.array([t for t, _ in rec.commands])
    values = np.stack([v for _, v in rec.commands])
    steps = np.linalg.norm(np.diff(values, axis=0), axis=1)  # step j: command j -> j + 1
    straddling = set()
    for arrival, _ in rec.chunks:
        j = int(np.searchsorted(times, arrival)) - 1  # last command before the chunk arrived
        if 0 <= j < len(steps):
            straddling.add(j)
    at_switch = [steps[j] for j in sorted(straddling)]
    inside = [s for j, s in enumerate(steps) if j not in straddling]
    return {"switch": _summary(at_switch), "inside": _summary(inside)}


def first_d_errors(rec: Recording) -> Tuple[np.ndarray, np.ndarray]:
    """Per new chunk: (RMS distance of its first d actions to the previous chunk at the same times, d)."""
    errors, ds = [], []
    for (_, prev), (arrival, new) in zip(rec.chunks, rec.chunks[1:]):
        d = max(int(math.ceil((arrival - new.stamp) * rec.rate_hz)), 1)
        diffs = []
        for k in range(min(d, len(new.actions))):
            old = prev.at(new.stamp + (k + 1) / rec.rate_hz)
            if old is not None:
                diffs.append(new.actions[k] - old)
        if diffs:
            errors.append(float(np.sqrt(np.mean(np.square(diffs)))))
            ds.append(d)
    return np.array(errors), np.array(ds)


def period_errors(rec: Recording, nominal_s: float) -> Dict[str, float]:
    """|arrival interval - nominal period| in ms (p50, p99, max) and the largest gap in periods."""
    times = np.array([t for t, _ in rec.commands])
    if len(times) < 3:
        return {"n": 0}
    intervals = np.diff(times)
    errors = np.abs(intervals - nominal_s) * 1e3
    return {"n": int(len(intervals)), "nominal_ms": nominal_s * 1e3, "p50_ms": float(np.percentile(errors, 50)),
            "p99_ms": float(np.percentile(errors, 99)), "max_ms": float(errors.max()),
            "max_gap_periods": float(intervals.max() / nominal_s)}


def reported_ms(rec: Recording, key: str) -> Optional[float]:
    values = [float(d[key]) for d in rec.diagnostics if key in d]
    return float(np.median(values)) if values else None


def rtc_denoise_cost(params: Dict[str, object], repeats: int = 10) -> Dict[str, float]:
    """Plain vs guided denoise of the node's model (its preset, seed, steps) on one observation, interleaved:
    median seconds of the denoise stage of Policy.infer, and their ratio."""
    from .fake_robot import pattern
    from ..policy.loading import load_policy
    from ..policy.policy import Observation
    from ..policy.rtc_target import PreviousChunk

    n = len(params["action.joints"])
    policy = load_policy(checkpoint=str(params["model.checkpoint"]), preset=str(params["model.preset"]),
                                seed=int(params["model.seed"]), num_steps=int(params["model.num_steps"]),
                                action_dims=n)
    images = {name: pattern(320, 240, 1.0, i) for i, name in enumerate(params["cameras.names"])}
    obs = Observation(images=images, state=np.zeros(len(params["state.joints"])), prompt=str(params["prompt"]),
                      stamp=100.0)
    rate = float(params["control_rate_hz"])
    previous = PreviousChunk(policy.infer(obs).actions, 100.0 - 0.1, rate)
    plain, guided = [], []
    for _ in range(repeats):
        plain.append(policy.infer(obs).timings["denoise"])
        guided.append(policy.infer(obs, previous, delay_steps=5, execution_horizon=5).timings["denoise"])
    p, g = float(np.median(plain)), float(np.median(guided))
    return {"plain_denoise_ms": p * 1e3, "rtc_denoise_ms": g * 1e3, "ratio": g / p, "repeats": repeats}


def analyse(rec: Recording) -> Dict[str, object]:
    errors, ds = first_d_errors(rec)
    rates = [float(d["joint_states_rate_hz"]) for d in rec.diagnostics if "joint_states_rate_hz" in d]
    nominal = 1.0 / (float(np.median(rates)) if rates else rec.rate_hz)
    jumps = switch_jumps(rec)
    return {
        "chunks": len(rec.chunks), "commands": len(rec.commands),
        "jump_at_switch": jumps["switch"], "step_inside_chunk": jumps["inside"],
        "jump_ratio_p50": (jumps["switch"]["p50"] / jumps["inside"]["p50"]
                           if jumps["switch"].get("n") and jumps["inside"].get("n") else None),
        "first_d_error": _summary(errors), "d": _summary(ds),
        "command_period": period_errors(rec, nominal),
        "denoise_ms_reported": reported_ms(rec, "denoise_ms"), "latency_ms_reported": reported_ms(rec, "latency_ms"),
        "rtc_guidance_error_reported": reported_ms(rec, "rtc_guidance_error"),
    }


# --- plot -----------------------------------------------------------------------------------------------------------
def plot(recordings: List[Recording], path: Path, joint: int = 0, seconds: float = 2.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(recordings), 1, figsize=(10, 2.6 * len(recordings)), sharex=True, squeeze=False)
    for ax, rec in zip(axes[:, 0], recordings):
        if not rec.commands:
            continue
        t0 = rec.commands[len(rec.commands) // 2][0]
        times = np.array([t for t, _ in rec.commands]) - t0
        keep = (times >= 0) & (times <= seconds)
        ax.plot(times[keep], [v[joint] for (_, v), k in zip(rec.commands, keep) if k], ".-", ms=3, lw=0.8,
                label="~/joint_command")
        for arrival, chunk in rec.chunks:
            if 0 <= arrival - t0 <= seconds:
                ax.axvline(arrival - t0, color="tab:red", lw=0.6, alpha=0.6)
                ts = chunk.stamp + (np.arange(len(chunk.actions)) + 1) / rec.rate_hz - t0
                inside = (ts >= 0) & (ts <= seconds)
                ax.plot(ts[inside], chunk.actions[inside, joint], lw=0.6, alpha=0.5, color="gray")
        ax.set_title(f"{rec.mode}: joint {joint} command (red: chunk arrivals, gray: chunks)", fontsize=9)
        ax.set_ylabel("position")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- command line ---------------------------------------------------------------------------------------------------
def _check_outputs(parser: argparse.ArgumentParser, args) -> None:
    """Refuse before anything starts what would fail after every mode has run."""
    if args.duration <= 0:
        parser.error(f"--duration {args.duration:g}: expected seconds > 0")
    for flag, path in (("--json", args.json), ("--png", args.png)):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            parser.error(f"{flag} {path}: its folder does not exist")


def main(argv=None) -> int:
    from .processes import config_file

    parser = argparse.ArgumentParser(prog="turbopi-exec-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds recorded per mode")
    parser.add_argument("--modes", default="none,blend,rtc", help=f"comma-separated, of {list(MODES)}")
    parser.add_argument("--params-file", default=None, help="both nodes' parameters (default: demo_tiny.yaml)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--png", default=None, help="plot one joint's commands over a few switches here")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown modes {unknown}; known: {list(MODES)}")
    _check_outputs(parser, args)
    params_file = Path(args.params_file) if args.params_file else config_file("demo_tiny.yaml")
    try:
        params = node_parameters(params_file)
    except ValueError as e:
        parser.error(str(e))
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

    import rclpy
    import torch

    if int(params.get("model.num_threads", 0)) > 0:
        torch.set_num_threads(int(params["model.num_threads"]))
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(),
               "load_avg": os.getloadavg(), "torch": torch.__version__, "python": platform.python_version()}
    print(f"turbopi-exec-bench: {params_file}, modes {modes}, {args.duration:g} s each; machine {machine}",
          flush=True)
    cost = rtc_denoise_cost(params)
    print(f"RTC denoise cost (this process, interleaved): plain {cost['plain_denoise_ms']:.1f} ms, guided "
          f"{cost['rtc_denoise_ms']:.1f} ms, {cost['ratio']:.2f}x", flush=True)
    rclpy.init()
    recordings, results = [], {}
    try:
        for mode in modes:
            rec = record(mode, params_file, args.duration)
            recordings.append(rec)
            results[mode] = analyse(rec)
            print(_line(mode, results[mode]), flush=True)
    finally:
        rclpy.try_shutdown()
    none_err = results.get("none", {}).get("first_d_error", {}).get("p50")
    rtc_err = results.get("rtc", {}).get("first_d_error", {}).get("p50")
    summary = {"machine": machine, "params_file": str(params_file), "duration_s": args.duration,
               "rtc_denoise_cost": cost, "modes": results,
               "first_d_error_none_over_rtc": (none_err / rtc_err) if none_err and rtc_err else None}
    if summary["first_d_error_none_over_rtc"]:
        print(f"first-d error, none / rtc (medians): {summary['first_d_error_none_over_rtc']:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    if args.png:
        plot(recordings, Path(args.png))
    return 0


def _line(mode: str, r: Dict[str, object]) -> str:
    def f(d: dict, key: str, scale: float = 1.0) -> str:
        return f"{d[key] * scale:.4f}" if d.get("n") else "-"

    j, s, e, p = r["jump_at_switch"], r["step_inside_chunk"], r["first_d_error"], r["command_period"]
    return (f"{mode:>5}: {r['chunks']} chunks, {r['commands']} commands | jump at switch mean {f(j, 'mean')} p99 "
            f"{f(j, 'p99')} max {f(j, 'max')} vs step inside p50 {f(s, 'p50')} p99 {f(s, 'p99')} | first-d error "
            f"p50 {f(e, 'p50')} mean {f(e, 'mean')} | period error p50 {p.get('p50_ms', float('nan')):.2f} ms "
            f"p99 {p.get('p99_ms', float('nan')):.2f} ms (of {p.get('nominal_ms', float('nan')):.1f}) | denoise "
            f"{r['denoise_ms_reported'] or float('nan'):.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
