"""turbopi_node: cameras + joint states + prompt in, action chunks and a streamed joint command out.

Subscriptions only store the newest message of each input (old frames are dropped, never queued). One worker thread
runs one inference at a time on the newest complete observation: snapshot -> validate (ages, encodings, sizes,
joints, finite values, prompt) -> Policy.infer -> ~/action_chunk. A timer at control_rate_hz streams the action for
"now" from the newest chunk on ~/joint_command. Bad input is logged, reported on /diagnostics and never acted on.
"""
from __future__ import annotations

import collections
import re
import sys
import threading
import time
from typing import Dict, Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory

from .conversions import (InputError, chunk_to_trajectory, compressed_to_rgb, image_to_rgb, joint_state_to_vector,
                          stamp_to_sec)
from .policy.chunking import ChunkSchedule
from .spin import declare_parameters, spin_node
from .policy.policy import IMAGE_KEYS, STAGES, Observation, ObservationError, Policy, camera_slots

# name -> (default, description). Declared up front; see config/*.yaml for commented examples.
PARAMETERS = {
    "model.checkpoint": ("", "openpi PyTorch checkpoint directory or .safetensors file; '' = random weights of "
                             "model.preset"),
    "model.preset": ("tiny", "model config preset (pi0, pi05, tiny, tiny_pi05) or a model config JSON path"),
    "model.device": ("cpu", "cpu, cuda or cuda:N"),
    "model.dtype": ("float32", "float32 or bfloat16 (bfloat16 pays on GPU)"),
    "model.num_steps": (10, "flow-matching Euler steps"),
    "model.seed": (0, "seed of the random weights (if any) and of the noise"),
    "model.tokenizer": ("", "PaliGemma SentencePiece model file; '' only for random-weight models"),
    "model.norm_stats": ("", "norm_stats.json; '' = the checkpoint's assets/*/norm_stats.json, or none"),
    "model.cuda_graph": (True, "on CUDA, replay the denoise as one CUDA graph per prompt length"),
    "model.num_threads": (0, "torch CPU threads for inference (0 = torch's default)"),
    "cameras.names": (["base_0_rgb"], "model image slots fed by the camera topics, in the same order"),
    "cameras.topics": (["/camera/image_raw"], "camera topics, one per cameras.names entry"),
    "cameras.compressed": ([False], "per camera: sensor_msgs/CompressedImage instead of Image"),
    "joint_states.topic": ("/joint_states", "sensor_msgs/JointState topic"),
    "state.joints": (["joint_1"], "joint names, in the order of the model's state vector"),
    "action.joints": (["joint_1"], "joint names of the first N action dims (published chunks and commands)"),
    "action.lower_limits": ([-1e9], "per action joint lower limit (one entry per action.joints)"),
    "action.upper_limits": ([1e9], "per action joint upper limit (one entry per action.joints)"),
    "action.delta_mask": ([False], "per action joint: true where the model outputs deltas from the state (the "
                                   "state of the same index is added); all false = absolute targets"),
    "prompt": ("", "task instruction; changeable at run time (also via ~/prompt)"),
    "control_rate_hz": (50.0, "spacing of chunk points and rate of ~/joint_command"),
    "blend_s": (0.1, "seconds over which a new chunk takes over from the old one"),
    "max_observation_age_s": (0.5, "inputs older than this are stale: no inference on them"),
    "on_stale": ("stop", "when inputs go stale or inference fails: 'stop' commands or 'hold' the last one"),
    "autostart": (True, "publish right away; false = wait for ~/enable"),
    "status_log_period_s": (5.0, "seconds between one-line status logs (0 = off)"),
}
RUNTIME_PARAMETERS = {"prompt", "use_sim_time"}
LOG_REPEAT_S = 5.0  # a problem that persists is logged again this often


def _kind(message: str) -> str:
    """A problem without its numbers: "newest message is 0.52 s old" and "... 0.54 s old" are one problem, logged
    once and then throttled."""
    return re.sub(r"\d+(\.\d+)?", "#", message)


def _input_name(name: str) -> str:
    return name if name == "joint_states" else f"camera '{name}'"


def _rate(times, idle_s: float) -> float:
    """Events per second over the monotonic ``times``; 0 with fewer than two, or none in the last ``idle_s``."""
    if len(times) < 2 or time.monotonic() - times[-1] > idle_s:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])


class WaitingForInput(InputError):
    """Not an error of the input, just none yet: reported as a warning."""


class TurbopiNode(Node):
    def __init__(self, **kwargs):
        super().__init__("turbopi_node", **kwargs)
        p = declare_parameters(self, PARAMETERS)
        self.camera_names = camera_slots(p["cameras.names"])
        topics, compressed = list(p["cameras.topics"]), list(p["cameras.compressed"])
        if len(topics) != len(self.camera_names) or len(compressed) != len(self.camera_names):
            raise ValueError(f"cameras.names ({len(self.camera_names)}), cameras.topics ({len(topics)}) and "
                             f"cameras.compressed ({len(compressed)}) must have the same length")
        self.state_joints = list(p["state.joints"])
        self.action_joints = list(p["action.joints"])
        self.rate_hz = float(p["control_rate_hz"])
        self.max_age = float(p["max_observation_age_s"])
        if p["on_stale"] not in ("stop", "hold"):
            raise ValueError(f"on_stale must be 'stop' or 'hold', got {p['on_stale']!r}")
        self.hold_on_stale = p["on_stale"] == "hold"
        self.num_steps = int(p["model.num_steps"])
        if int(p["model.num_threads"]) > 0:
            import torch

            torch.set_num_threads(int(p["model.num_threads"]))

        self.policy = Policy.from_params(
            checkpoint=p["model.checkpoint"], preset=p["model.preset"], device=p["model.device"],
            dtype=p["model.dtype"], tokenizer=p["model.tokenizer"], norm_stats=p["model.norm_stats"],
            seed=int(p["model.seed"]), num_steps=self.num_steps, action_dims=len(self.action_joints),
            image_keys=IMAGE_KEYS, delta_mask=list(p["action.delta_mask"]) or None,
            lower_limits=list(p["action.lower_limits"]), upper_limits=list(p["action.upper_limits"]),
            cuda_graph=bool(p["model.cuda_graph"]))
        if len(self.state_joints) > self.policy.config.action_dim:
            raise ValueError(f"{len(self.state_joints)} state.joints exceed the model's {self.policy.config.action_dim}"
                             " state dims")
        self.schedule = ChunkSchedule(self.rate_hz, float(p["blend_s"]))

        self._lock = threading.Lock()
        self._latest: Dict[str, object] = {}  # input name -> newest message
        self._new_data = threading.Event()
        self._prompt = p["prompt"]
        self._enabled = bool(p["autostart"])
        self._last_command: Optional[np.ndarray] = None
        self._last_error = ""
        self._waiting = False  # the last problem was only missing input (no message yet)
        self._error_count = 0
        self._chunk_count = 0
        self._chunk_times: collections.deque = collections.deque(maxlen=20)
        self._stage_ms: Dict[str, collections.deque] = {s: collections.deque(maxlen=20) for s in STAGES + ("total",)}
        self._ages: Dict[str, float] = {}
        self._stop = threading.Event()
        self._stale_reported = False
        self._logged: Dict[str, float] = {}  # kind of problem -> when it was last logged (monotonic)
        self._command_times: collections.deque = collections.deque(maxlen=100)

        # Sensor-data QoS (best effort, volatile: matches both best-effort and reliable publishers) with a queue of
        # one: when the executor is busy, only the newest frame is waiting, never a backlog to deserialize.
        newest = QoSProfile(depth=1, reliability=qos_profile_sensor_data.reliability,
                            durability=qos_profile_sensor_data.durability, history=qos_profile_sensor_data.history)
        for name, topic, is_compressed in zip(self.camera_names, topics, compressed):
            self.create_subscription(CompressedImage if is_compressed else Image, topic,
                                     lambda msg, name=name: self._store(name, msg), newest)
        self.create_subscription(JointState, p["joint_states.topic"], lambda msg: self._store("joint_states", msg),
                                 newest)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(String, "~/prompt", self._on_prompt, latched)
        self.chunk_pub = self.create_publisher(JointTrajectory, "~/action_chunk", 10)
        self.command_pub = self.create_publisher(Float64MultiArray, "~/joint_command", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(SetBool, "~/enable", self._on_enable)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_timer(1.0 / self.rate_hz, self._on_control_tick)
        self.create_timer(1.0, self._publish_diagnostics)
        if float(p["status_log_period_s"]) > 0:
            self.create_timer(float(p["status_log_period_s"]), self._log_status)
        self._worker = threading.Thread(target=self._worker_loop, name="turbopi_inference", daemon=True)
        self._worker.start()
        c = self.policy.config
        self.get_logger().info(
            f"ready: {c.variant} on {p['model.device']} ({p['model.dtype']}), {self.num_steps} steps, cameras "
            f"{self.camera_names}, {len(self.action_joints)} action joints at {self.rate_hz:g} Hz, "
            f"{'enabled' if self._enabled else 'waiting for ~/enable'}")

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # --- callbacks: store only --------------------------------------------------------------------------------------
    def _store(self, name: str, msg) -> None:
        with self._lock:
            self._latest[name] = msg
        self._new_data.set()

    def _on_prompt(self, msg: String) -> None:
        with self._lock:
            self._prompt = msg.data
        self._new_data.set()
        self.get_logger().info(f"prompt set from ~/prompt: {msg.data!r}")

    def _on_set_parameters(self, params) -> SetParametersResult:
        for param in params:
            if param.name not in RUNTIME_PARAMETERS:
                return SetParametersResult(successful=False,
                                           reason=f"{param.name} is read-only at run time (restart the node)")
        for param in params:
            if param.name == "prompt":
                with self._lock:
                    self._prompt = str(param.value)
                self._new_data.set()
                self.get_logger().info(f"prompt set from the 'prompt' parameter: {param.value!r}")
        return SetParametersResult(successful=True)

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        self._enabled = bool(request.data)
        if not self._enabled:
            self.schedule.clear()
            self._last_command = None
        else:
            self._new_data.set()
        response.success = True
        response.message = "enabled" if self._enabled else "disabled: no chunks, no commands"
        self.get_logger().info(response.message)
        return response

    # --- the inference worker -----------------------------------------------------------------------------------------
    def _worker_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._worker_iterations()
            except Exception as e:  # noqa: BLE001 - last resort: the worker must outlive any bug
                if self._stop.is_set() or not self.context.ok():
                    return  # shutting down (e.g. Ctrl-C shut the context while a chunk was in flight)
                self.get_logger().error(f"inference worker: {type(e).__name__}: {e}; restarting it")
                self.schedule.clear()
                time.sleep(0.5)

    def _worker_iterations(self) -> None:
        seen: Dict[str, object] = {}
        while not self._stop.is_set():
            if not self._new_data.wait(timeout=0.1):
                continue
            self._new_data.clear()
            if not self._enabled:
                continue
            with self._lock:
                latest = dict(self._latest)
                prompt = self._prompt
            if latest and all(seen.get(k) is v for k, v in latest.items()) and not self._last_error:
                continue  # nothing new since the last chunk
            try:
                obs = self._observation(latest, prompt)
                chunk = self.policy.infer(obs)
            except WaitingForInput as e:
                self._fail(str(e), waiting=True)
                time.sleep(0.05)
                continue
            except (InputError, ObservationError, ValueError) as e:
                self._fail(str(e))
                time.sleep(0.02)  # bad input may keep coming as fast as good input: do not spin on it
                continue
            except Exception as e:  # noqa: BLE001 - an engine failure must not kill the node
                self._fail(f"inference failed: {type(e).__name__}: {e}")
                time.sleep(0.02)
                continue
            seen = latest
            if not self._enabled:
                continue
            now = self.now()
            self.chunk_pub.publish(chunk_to_trajectory(chunk.actions, self.action_joints, chunk.stamp, self.rate_hz))
            self.schedule.set_chunk(chunk.actions, chunk.stamp, now)
            with self._lock:
                if self._chunk_count == 0:
                    self.get_logger().info(f"first chunk: {len(chunk.actions)} actions in "
                                           f"{chunk.timings['total'] * 1e3:.0f} ms")
                elif self._last_error and not self._waiting:
                    self.get_logger().info(f"recovered: chunks flowing again (was: {self._last_error})")
                self._last_error = ""
                self._logged.clear()  # a problem that comes back is logged again at once
                self._chunk_count += 1
                self._chunk_times.append(time.monotonic())
                for stage, seconds in chunk.timings.items():
                    self._stage_ms[stage].append(seconds * 1e3)
            self._new_data.set()  # run again on the newest data as soon as it differs

    def _observation(self, latest: Dict[str, object], prompt: str) -> Observation:
        now = self.now()
        missing = [n for n in self.camera_names + ["joint_states"] if n not in latest]
        if missing:
            raise WaitingForInput(f"waiting for inputs: no message yet on {missing}")
        stale = self._stale_inputs(latest, now)
        if stale:
            raise InputError(stale)
        images = {}
        for name in self.camera_names:
            msg = latest[name]
            images[name] = compressed_to_rgb(msg, name) if isinstance(msg, CompressedImage) else image_to_rgb(msg, name)
        state = joint_state_to_vector(latest["joint_states"], self.state_joints)
        if not prompt or not prompt.strip():
            raise InputError("prompt is empty: set the 'prompt' parameter or publish on ~/prompt")
        stamp = max(stamp_to_sec(latest[n].header.stamp) for n in self.camera_names + ["joint_states"])
        return Observation(images=images, state=state, prompt=prompt, stamp=stamp)

    def _stale_inputs(self, latest: Dict[str, object], now: float) -> str:
        """'' if every input is fresh, else a message naming the oldest stale one (or one stamped in the future).
        Ages come from header stamps and the node's clock (ROS time: /clock with use_sim_time)."""
        unstamped = [n for n, m in latest.items() if m.header.stamp.sec == 0 and m.header.stamp.nanosec == 0]
        if unstamped:
            return (f"{_input_name(unstamped[0])}: header.stamp is zero (expected the sensor time, on the node's clock"
                    f"{' (use_sim_time)' if self.get_parameter('use_sim_time').value else ''})")
        ages = {n: now - stamp_to_sec(m.header.stamp) for n, m in latest.items()}
        with self._lock:
            self._ages = ages
        ahead = {n: -a for n, a in ages.items() if a < -self.max_age}
        if ahead:
            first = max(ahead, key=ahead.get)
            return (f"{_input_name(first)}: header.stamp is {ahead[first]:.2f} s ahead of the node's clock (more than "
                    f"max_observation_age_s {self.max_age:g}): the clocks differ; sync them, or check use_sim_time")
        stale = {n: a for n, a in ages.items() if a > self.max_age}
        if not stale:
            return ""
        worst = max(stale, key=stale.get)
        what = _input_name(worst)
        also = f"; also stale: {sorted(set(stale) - {worst})}" if len(stale) > 1 else ""
        hint = " (over a day: do the clocks differ? check use_sim_time)" if stale[worst] > 86400 else ""
        return (f"{what}: newest message is {stale[worst]:.2f} s old (max_observation_age_s {self.max_age:g})"
                + hint + also)

    def _fail(self, message: str, waiting: bool = False) -> None:
        """Record a problem (diagnostics show the newest), stop the stream unless on_stale is 'hold', and log it:
        each kind of problem once, then at most every LOG_REPEAT_S while it lasts."""
        kind, t = _kind(message), time.monotonic()
        with self._lock:
            self._last_error = message
            self._waiting = waiting
            self._error_count += 0 if waiting else 1
            log = t - self._logged.get(kind, -np.inf) >= LOG_REPEAT_S
            if log:
                if len(self._logged) > 100:
                    self._logged.clear()
                self._logged[kind] = t
        if not self.hold_on_stale:
            self.schedule.clear()
        if log and not self.context.ok():
            pass  # shutting down: the log's rosout publisher is gone
        elif log and waiting:
            self.get_logger().warning(f"no chunk: {message}")
        elif log:
            self.get_logger().error(f"no chunk: {message}")
        self._new_data.set()

    # --- control stream ---------------------------------------------------------------------------------------------
    def _on_control_tick(self) -> None:
        if not self._enabled:
            return
        now = self.now()
        with self._lock:
            latest = dict(self._latest)
        # Inputs that went stale between observations stop (or hold) the commands now, not when the chunk ends.
        stale = self._stale_inputs(latest, now) if latest else ""
        if stale and not self._stale_reported:
            self._fail(stale)
        self._stale_reported = bool(stale)
        command = None if stale else self.schedule.command(now)
        if command is None:
            if self.hold_on_stale and self._last_command is not None:
                command = self._last_command
            else:
                return
        self._last_command = command
        self.command_pub.publish(Float64MultiArray(data=command.tolist()))
        self._command_times.append(time.monotonic())

    # --- reporting --------------------------------------------------------------------------------------------------
    def _stats(self) -> Dict[str, float]:
        with self._lock:
            stats = {f"{s}_ms": float(np.median(v)) for s, v in self._stage_ms.items() if v}
            stats["chunk_rate_hz"] = _rate(self._chunk_times, idle_s=2.0)
            stats["command_rate_hz"] = _rate(self._command_times, idle_s=1.0)
        return stats

    def _publish_diagnostics(self) -> None:
        stats = self._stats()
        with self._lock:
            error, ages, count, errors = self._last_error, dict(self._ages), self._chunk_count, self._error_count
        status = DiagnosticStatus(name="turbopi_node: policy", hardware_id=str(self.policy.device))
        if error:
            status.level, status.message = DiagnosticStatus.ERROR, error
        elif not self._enabled:
            status.level, status.message = DiagnosticStatus.OK, "disabled (call ~/enable)"
        elif stats["chunk_rate_hz"] == 0.0:
            status.level, status.message = DiagnosticStatus.WARN, "no chunks yet"
        else:
            status.level, status.message = DiagnosticStatus.OK, f"{stats['chunk_rate_hz']:.1f} chunks/s"
        values = {"enabled": str(self._enabled), "chunks": str(count), "errors": str(errors), "last_error": error}
        values.update({k: f"{v:.3f}" for k, v in stats.items()})
        values.update({f"age_{k}_s": f"{v:.3f}" for k, v in ages.items()})
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(msg)

    def _log_status(self) -> None:
        stats = self._stats()
        stages = " ".join(f"{s} {stats[s + '_ms']:.1f}" for s in STAGES if s + "_ms" in stats)
        with self._lock:
            ages = " ".join(f"{k} {v:.2f}s" for k, v in self._ages.items())
            error = self._last_error
        self.get_logger().info(f"{stats['chunk_rate_hz']:.1f} chunks/s | ms: {stages or '-'} | ages: {ages or '-'}"
                               + (f" | ERROR {error}" if error else ""))

    def destroy_node(self):
        if hasattr(self, "_worker"):
            self._stop.set()
            self._new_data.set()
            self._worker.join(timeout=5.0)
        return super().destroy_node()


def main(args=None) -> None:
    # The inference worker is Python-heavy between kernels; a short GIL switch interval keeps the executor's
    # subscriptions and the control timer on time while it runs.
    sys.setswitchinterval(0.0005)
    spin_node(TurbopiNode, "turbopi_node", args)


if __name__ == "__main__":
    main()
