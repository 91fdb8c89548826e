"""What the node measures and reports: per-stage latencies of the last chunks, the chunk, command and joint-state
rates, real-time chunking's guidance error; as /diagnostics values (``diagnostic_status``) and as the one-line status
log (``status_line``)."""
from __future__ import annotations

import threading
import time
from typing import Callable, Dict, List, Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from ..model.fused import backend
from ..policy.policy import STAGES
from .problems import ProblemLog
from .rates import EventRate

STATUS_NAME = "turbopi_node: policy"  # the node as launched (status_name: a renamed or namespaced one's differs)
WARMING_UP = "warming up (first inference, graph captures): not ready yet"
DISABLED = "disabled (call ~/enable)"
KEPT = 20  # chunks whose stage times the medians are over
# per chunk, besides the policy's stages: latency (observation stamp -> publish), engine (the run), observation_to_chunk
# (inputs taken -> publish), observation_wait (inputs taken -> the engine starts on them), prepared_wait (the
# observation prepared -> the engine starts on it: how long it sat ready, waiting for the engine)
TIMES = STAGES + ("total", "latency", "engine", "observation_to_chunk", "observation_wait", "prepared_wait")


class NodeStats:
    def __init__(self):
        self._lock = threading.Lock()
        self._stage_ms: Dict[str, List[float]] = {s: [] for s in TIMES}
        self._guidance_errors: List[float] = []
        self.chunks = 0
        self.chunk_times, self.command_times = EventRate(KEPT), EventRate(200)  # monotonic
        # joint states: when they arrived (the node's clock) and their header stamps (when the robot sampled them)
        self.joint_times, self.joint_stamps = EventRate(100), EventRate(100)

    def chunk_published(self, seconds: Dict[str, float], guidance_error: Optional[float]) -> None:
        """A chunk went out; ``seconds``: its time per entry of TIMES."""
        with self._lock:
            self.chunks += 1
            for stage, s in seconds.items():
                self._stage_ms[stage] = (self._stage_ms[stage] + [s * 1e3])[-KEPT:]
            if guidance_error is not None:
                self._guidance_errors = (self._guidance_errors + [guidance_error])[-KEPT:]
        self.chunk_times.add(time.monotonic())

    def recent_ms(self, stage: str, count: int = KEPT) -> List[float]:
        """The last ``count`` times (ms) of one entry of TIMES."""
        with self._lock:
            return self._stage_ms[stage][-count:]

    def joint_state(self, received: float, stamp: float) -> None:
        """A joint state arrived at ``received`` (the node's clock), stamped ``stamp`` by the robot."""
        self.joint_times.add(received)
        self.joint_stamps.add(stamp)

    def joint_rate(self, now: float) -> Optional[float]:
        """The rate (Hz) the robot publishes joint states at, at ``now`` on the node's clock; None before there is one
        or when none came in the last 2 s. Measured from the messages' stamps: the intervals between the stamps of
        consecutive messages are the robot's own periods, whereas arrival times also hold this process's scheduling
        delays, and a message that the depth-1 queue replaced before this node took it (a busy machine) would stretch
        them. A drop doubles one interval only, which the median ignores. Without usable stamps (all equal: a driver
        repeating its last measurement) it falls back on the arrival times."""
        received = self.joint_times.median_rate(now, idle_s=2.0)
        if received is None:
            return None
        return self.joint_stamps.median_rate_of_window() or received

    def values(self, now: float, command_period_s: float, rtc: bool, engine, frames) -> Dict[str, float]:
        """Medians of the stage times (ms), the longest observation wait, the rates (``now`` on the node's clock), the
        engine's (engine_worker.EngineWorker) dropped observations and the frames' (frames.FramePreparer, or None)
        preparation."""
        mono = time.monotonic()
        with self._lock:
            values = {f"{s}_ms": float(np.median(v)) for s, v in self._stage_ms.items() if v}
            if self._stage_ms["observation_wait"]:  # a median hides observations that waited a whole run
                values["observation_wait_max_ms"] = float(max(self._stage_ms["observation_wait"]))
            if self._stage_ms["engine"]:  # the longest run: an observation prepared for its expected end waited
                values["engine_max_ms"] = float(max(self._stage_ms["engine"]))  # as long as it overran
            if rtc and self._guidance_errors:
                values["rtc_guidance_error"] = float(np.median(self._guidance_errors))
        values["chunk_rate_hz"] = self.chunk_times.rate(mono, idle_s=2.0)
        values["command_rate_hz"] = self.command_times.rate(mono, idle_s=1.0)
        values["command_period_target_ms"] = command_period_s * 1e3
        values["joint_states_rate_hz"] = self.joint_rate(now) or 0.0
        values["superseded"], values["dropped_stale"] = float(engine.superseded), float(engine.dropped_stale)
        if frames is not None:
            frame_ms = frames.median_ms()
            if frame_ms is not None:
                values["frame_prepare_ms"] = frame_ms
            values["frames_skipped"], values["frames_late"] = float(frames.skipped), float(frames.late)
        return values


def status_name(node) -> str:
    """The /diagnostics status name of ``node``: its fully qualified name without the leading '/' (STATUS_NAME for
    /turbopi_node; ``left_arm/turbopi_node: policy`` in a namespace, ``right_policy: policy`` renamed), so the
    statuses of two policy nodes (one per arm) stay apart on the global /diagnostics topic, which a
    diagnostic_aggregator or rqt_robot_monitor keys by name."""
    return f"{node.get_fully_qualified_name().lstrip('/')}: policy"


def diagnostic_status(values: Dict[str, float], ages: Dict[str, float], problems: ProblemLog, enabled: bool,
                      chunks: int, hardware_id: str, warming_up: bool = False,
                      disabled: str = DISABLED, name: str = STATUS_NAME) -> DiagnosticStatus:
    """The node's DiagnosticStatus: ERROR naming the newest problem, WARN "warming up" until the node is ready (no
    chunk can come yet), OK ``disabled`` (what to do) while not publishing, WARN while waiting for input or for a
    first chunk, OK with the chunk rate; every measured value and input age as key/values."""
    problem, level = problems.message, problems.level
    status = DiagnosticStatus(name=name, hardware_id=hardware_id)
    if level == "error":
        status.level, status.message = DiagnosticStatus.ERROR, problem
    elif warming_up:
        status.level, status.message = DiagnosticStatus.WARN, WARMING_UP
    elif not enabled:
        status.level, status.message = DiagnosticStatus.OK, disabled
    elif level == "warn":
        status.level, status.message = DiagnosticStatus.WARN, problem
    elif values["chunk_rate_hz"] == 0.0:
        status.level, status.message = DiagnosticStatus.WARN, "no chunks yet"
    else:
        status.level, status.message = DiagnosticStatus.OK, f"{values['chunk_rate_hz']:.1f} chunks/s"
    texts = {"ready": str(not warming_up), "enabled": str(enabled), "chunks": str(chunks),
             "errors": str(problems.count), "last_error": problem if level == "error" else ""}
    texts.update({k: f"{v:.3f}" for k, v in values.items()})
    texts.update({f"age_{k}_s": f"{v:.3f}" for k, v in ages.items()})
    status.values = [KeyValue(key=k, value=v) for k, v in texts.items()]
    return status


def status_line(values: Dict[str, float], ages: Dict[str, float]) -> str:
    stages = " ".join(f"{s} {values[s + '_ms']:.1f}" for s in STAGES if s + "_ms" in values)
    age_text = " ".join(f"{k} {v:.2f}s" for k, v in ages.items())
    return (f"{values['chunk_rate_hz']:.1f} chunks/s, commands {values['command_rate_hz']:.0f}/s | ms: "
            f"{stages or '-'} | ages: {age_text or '-'}")


def ready_message(config, policy, outputs: str, start_state: str) -> str:
    """The node's "ready: ..." log line: model, device, steps, cameras, joints, rates, whether it publishes, and its
    outputs (``config``: node_config.NodeConfig; ``outputs``: action_outputs.ActionOutputs.describe())."""
    c = config
    commands = f"{c.command_rate_hz:g} Hz" if c.command_rate_hz else "the joint_states rate"
    return (f"ready: {policy.config.variant} on {c.model.device} ({c.model.dtype}){_fused_kernels(c, policy)}, "
            f"{policy.num_steps} steps, cameras {list(c.cameras.names)}, {len(c.action.joints)} action joints, "
            f"actions at {c.control_rate_hz:g} Hz, commands at {commands}, {start_state}; outputs: {outputs}")


def _fused_kernels(config, policy) -> str:
    """With model.fused: what runs the fused ops (model/fused.py's backend): Triton's kernels, or their torch twins,
    which on a GPU (Triton missing: a Jetson's torch wheel may come without it) are no faster than the plain path."""
    if not config.model.fused:
        return ""
    device = policy.model.device
    runs = backend(device)
    if runs != "triton" and device.type == "cuda":
        runs += ": Triton is not installed, so no faster than model.fused: false"
    return f", fused kernels ({runs})"


class StatusReporter:
    """The node's /diagnostics and its status log line: what ``values()`` measures (the statistics, the engine's and
    the frames' counters, the node's command period and RTC switch), the problems, the input ages."""

    def __init__(self, node, stats: NodeStats, problems: ProblemLog, engine, frames, values: Callable[[], tuple],
                 warm_up=None, disabled: Callable[[], str] = lambda: DISABLED):
        """``values()`` -> (now on the node's clock, the command period in s, RTC on, commands enabled);
        ``warm_up``: warm_up.WarmUp (its ``ready`` event and ``values()``), or None; ``disabled()``: the status
        message while commands are not enabled (what would enable them)."""
        self.node, self.stats, self.problems, self.engine, self.frames = node, stats, problems, engine, frames
        self._state, self.warm_up, self._disabled = values, warm_up, disabled
        self._pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.name = status_name(node)

    def values(self) -> Dict[str, float]:
        now, period_s, rtc, _ = self._state()
        values = self.stats.values(now, period_s, rtc, self.engine, self.frames)
        if self.warm_up is not None:
            values.update(self.warm_up.values())
        return values

    def publish(self, hardware_id: str) -> None:
        warming_up = self.warm_up is not None and not self.warm_up.ready.is_set()
        status = diagnostic_status(self.values(), self.engine.ages, self.problems, self._state()[3],
                                   self.stats.chunks, hardware_id, warming_up, self._disabled(), self.name)
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self._pub.publish(msg)

    def log(self) -> None:
        line = status_line(self.values(), self.engine.ages)
        level, problem, logger = self.problems.level, self.problems.message, self.node.get_logger()
        if level == "error":
            logger.error(line + f" | ERROR {problem}")
        elif level == "warn":
            logger.warning(line + f" | {problem}")
        else:
            logger.info(line)
