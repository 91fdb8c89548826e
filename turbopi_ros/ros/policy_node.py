"""TurbopiNode, the policy node: cameras + joint states + prompt in, action chunks and a streamed joint command out.
(Its entry point is node.py, which sets up signal handling before this module imports torch.)

The node only wires things up: InputBuffer keeps the newest message of each input and builds observations,
FramePreparer prepares each camera frame as it arrives, ProblemLog reports what is wrong, Policy turns an observation
into an action chunk, ChunkSchedule says which action applies now. One engine thread runs one inference at a time on
the newest complete observation, taken when it is free (or prepared just in time by a second thread, pipeline.py);
a thread streams the action for "now" on ~/joint_command at command_rate_hz (0: the rate the robot publishes joint
states at, measured).
Bad input is logged, reported on /diagnostics and never acted on.
"""
from __future__ import annotations

import threading
import time
from typing import Dict, Optional

import numpy as np
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool

from ..policy.chunking import ChunkSchedule
from ..policy.policy import RANDOM_WEIGHTS, Policy
from ..policy.rtc_target import guidance_arguments
from . import faults
from .action_outputs import ActionOutputs, declare_groups
from .chunk_gate import ChunkGate
from .command_stream import CommandStream
from .conversions import stamp_to_sec
from .engine_worker import EngineHooks, EngineWorker, yield_cpu
from .frames import FramePreparer
from .inputs import JOINT_STATES, InputBuffer
from .node_params import PARAMETERS, check_lengths, policy_from_params
from .node_status import NodeStats, StatusReporter
from .parameters import declare_parameters, on_parameters_set
from .pauses import PauseWatch
from .problems import ProblemLog
from .robot_params import camera_slots_for, check_robot
from .ros_compat import subscription_event_callbacks
from .ros_logging import forward_python_logging, stop_forwarding

DIAGNOSTICS_PERIOD_S = 1.0


class TurbopiNode(Node):
    def __init__(self, **kwargs):
        super().__init__("turbopi_node", **kwargs)
        try:
            self._build()
        except Exception:
            # refused to start: its rcl handles go now, before spin.py logs why, rather than after rclpy's shutdown
            # (the garbage collector's time), and the error is not published on /rosout through a half-built node
            self.destroy_node()
            raise

    def _build(self) -> None:
        p = declare_parameters(self, PARAMETERS)
        check_lengths(p)
        check_robot(p)
        cameras = camera_slots_for(p)
        groups = declare_groups(self, p, p["action.joints"])
        self.action_joints = list(p["action.joints"])
        self.rate_hz = float(p["control_rate_hz"])
        self.command_rate_hz = float(p["command_rate_hz"])
        self.hold_on_stale = p["on_stale"] == "hold"
        self.rtc_enabled, self.rtc_max_guidance = bool(p["rtc.enabled"]), float(p["rtc.max_guidance"])
        if int(p["model.num_threads"]) > 0:
            import torch

            torch.set_num_threads(int(p["model.num_threads"]))
        self._log_handler = forward_python_logging(self.get_logger())
        self.policy = self._load_policy(p)
        if faults.enabled():
            self.get_logger().warning(f"test-only fault injection is on ({faults.ENV}): never on a robot")
        self._build_state(p, cameras)
        self._build_interfaces(p, cameras, groups)
        c = self.policy.config
        commands = f"{self.command_rate_hz:g} Hz" if self.command_rate_hz else "the joint_states rate"
        self.get_logger().info(
            f"ready: {c.variant} on {p['model.device']} ({p['model.dtype']}), {self.policy.num_steps} steps, "
            f"cameras {cameras}, {len(self.action_joints)} action joints, actions at {self.rate_hz:g} Hz, commands "
            f"at {commands}, {self._start_state()}; outputs: {self.outputs.describe()}")

    def _build_state(self, p, cameras) -> None:
        """The parts: the inputs' buffer, the frames' preparer, problems, the schedule, statistics, the engine."""
        compressed = list(p["cameras.compressed"]) or [False] * len(cameras)
        self._topics = dict(zip(cameras, p["cameras.topics"]), **{JOINT_STATES: p["joint_states.topic"]})
        self._compressed = dict(zip(cameras, compressed))
        self._sim_time = bool(self.get_parameter("use_sim_time").value)
        self.inputs = InputBuffer(cameras, self._topics, p["state.joints"], p["max_observation_age_s"],
                                  use_sim_time_hint=self._sim_time, reduce_for=self.policy.reduced_decode_size)
        self.frames: Optional[FramePreparer] = None  # cameras.prepare_on_arrival (frames.py)
        if p["cameras.prepare_on_arrival"]:
            self.frames = FramePreparer(cameras, self._prepare_frame, thread_init=yield_cpu)
        self.problems = ProblemLog(self.get_logger().error, self.get_logger().warning)
        self.schedule = ChunkSchedule(self.rate_hz, float(p["blend_s"]))
        self.stats = NodeStats()
        # the command thread's heartbeat tells a pause of the whole node (no such thread under use_sim_time)
        self.pauses = PauseWatch(float(p["max_observation_age_s"]), enabled=not self._sim_time)
        self.gate = ChunkGate(self.inputs, self.pauses)
        self._lock = threading.Lock()
        self._prompt = p["prompt"]
        self._enabled = bool(p["autostart"])
        self._last_command: Optional[np.ndarray] = None
        self._stale_reported = False
        hooks = EngineHooks(now=self.now, prompt=self._current_prompt, enabled=lambda: self._enabled,
                            fail=self._fail, guidance=self._guidance, publish=self._publish_chunk,
                            worker_failed=self._worker_failed, alive=self.context.ok)
        # the engine runs the policy; faults.wrap only where a test injects faults
        self.engine = EngineWorker(self.policy, faults.wrap(self.policy.run), self.inputs, self.frames, hooks,
                                   float(p["inference_period_s"]))
        self.problems.report(self.inputs.waiting_message(self.inputs.inputs), waiting=True)

    def _build_interfaces(self, p, cameras, groups) -> None:
        """Subscriptions, publishers, the service, the parameter callback, the command stream and the timers."""
        # Sensor-data QoS (best effort, volatile: matches both best-effort and reliable publishers) with a queue of
        # one: when the executor is busy, only the newest frame is waiting, never a backlog to deserialize.
        newest = QoSProfile(depth=1, reliability=qos_profile_sensor_data.reliability,
                            durability=qos_profile_sensor_data.durability, history=qos_profile_sensor_data.history)
        for name in cameras:
            self.create_subscription(CompressedImage if self._compressed[name] else Image, self._topics[name],
                                     lambda msg, name=name: self._store(name, msg), newest)
        self.create_subscription(JointState, self._topics[JOINT_STATES], self._on_joint_states, newest)
        # Prompts from a latched (transient local) publisher and from a plain one (`ros2 topic pub`): a transient
        # local subscription is incompatible with a volatile publisher, a volatile one misses what was latched
        # before it started, so there is one of each (a repeated prompt is ignored). The transient local one does
        # not log the expected mismatch with plain publishers (the volatile one receives those).
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(String, "~/prompt", self._on_prompt, latched,
                                 event_callbacks=subscription_event_callbacks(incompatible_qos=lambda event: None))
        self.create_subscription(String, "~/prompt", self._on_prompt,
                                 QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                            durability=DurabilityPolicy.VOLATILE))
        self.outputs = ActionOutputs(self, self.action_joints, groups, self.rate_hz)
        self.status = StatusReporter(self, self.stats, self.problems, self.engine, self.frames,
                                     lambda: (self.now(), self._command_period, self.rtc_enabled, self._enabled))
        self.create_service(SetBool, "~/enable", self._on_enable)
        self._param_callbacks = on_parameters_set(self, PARAMETERS, self._apply_parameters)
        # In real time the command stream is a thread at absolute deadlines (command_stream.py); under use_sim_time,
        # a timer on the ROS clock (simulated time has no wall-clock deadlines).
        self._command_period = 1.0 / (self.command_rate_hz or self.rate_hz)
        self._command_timer = None
        self._commands: Optional[CommandStream] = None
        if self._sim_time:
            self._command_timer = self.create_timer(self._command_period, self._on_command_tick)
        else:
            self._commands = CommandStream(self._on_command_tick, self._command_period, self.pauses,
                                           self._node_paused, self.get_logger().error, self.engine.stop_event,
                                           self.context.ok)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._on_housekeeping)
        if float(p["status_log_period_s"]) > 0:
            self.create_timer(float(p["status_log_period_s"]), self.status.log)

    def _start_state(self) -> str:
        return "enabled" if self._enabled else "waiting for ~/enable"

    def start(self) -> None:
        """Start the engine and the command stream (spin.py calls this once the node is whole)."""
        self.engine.start()
        if self._commands is not None:
            self._commands.start()

    def _load_policy(self, p) -> Policy:
        checkpoint = p["model.checkpoint"]
        what = f"random weights of {p['model.preset']}" if checkpoint == RANDOM_WEIGHTS else checkpoint
        self.get_logger().info(f"loading {what} on {p['model.device']}")
        return policy_from_params(p)

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # --- callbacks: store only --------------------------------------------------------------------------------------
    def _store(self, name: str, msg) -> None:
        self.inputs.store(name, msg)
        if self.frames is not None and name != JOINT_STATES:
            self.frames.submit(name, msg)
        self.engine.wake()

    def _prepare_frame(self, name: str, msg):
        """A camera frame converted and preprocessed for the model (on its camera's thread, as it arrives)."""
        return self.policy.prepare_image(name, self.inputs.converted(name, msg))

    def _on_joint_states(self, msg: JointState) -> None:
        self.stats.joint_state(self.now(), stamp_to_sec(msg.header.stamp))
        self._store(JOINT_STATES, msg)

    def _current_prompt(self) -> str:
        with self._lock:
            return self._prompt

    def _set_prompt(self, text: str, source: str) -> None:
        with self._lock:
            if text == self._prompt:
                return
            self._prompt = text
        self.engine.wake()
        self.get_logger().info(f"prompt set from {source}: {_shorten(text)}")

    def _on_prompt(self, msg: String) -> None:
        self._set_prompt(msg.data, "~/prompt")

    def _apply_parameters(self, changes: Dict[str, object]) -> None:
        """Run-time parameter changes, already validated (see parameters.on_parameters_set)."""
        if "prompt" in changes:
            self._set_prompt(str(changes["prompt"]), "the 'prompt' parameter")
        if "blend_s" in changes:
            self.schedule.blend_s = float(changes["blend_s"])
        if "inference_period_s" in changes:
            self.engine.inference_period_s = float(changes["inference_period_s"])
            self.engine.wake()
        if "rtc.enabled" in changes:
            self.rtc_enabled = bool(changes["rtc.enabled"])
        if "rtc.max_guidance" in changes:
            self.rtc_max_guidance = float(changes["rtc.max_guidance"])

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        self._enabled = bool(request.data)
        if not self._enabled:
            self.schedule.clear()
            self._last_command = None
        else:
            self.engine.wake()
        response.success = True
        response.message = "enabled" if self._enabled else "disabled: no chunks, no commands"
        self.get_logger().info(response.message)
        return response

    # --- the engine's hooks (engine_worker.py) ----------------------------------------------------------------------
    def _guidance(self, stamp: float) -> Dict[str, object]:
        """Real-time chunking's arguments (rtc_target.guidance_arguments), while it is on."""
        current = self.schedule.current if self.rtc_enabled else None
        latencies = [ms * 1e-3 for ms in self.stats.recent_ms("latency", 5)]
        return guidance_arguments(current, stamp, latencies, self.rate_hz, self.rtc_max_guidance)

    def _publish_chunk(self, chunk, run_start: float, pipeline_s: float, wait_s: float) -> None:
        engine_s, now = time.monotonic() - run_start, self.now()
        refused = self.gate.refuse(chunk.stamp, run_start, now)
        if refused:
            self._fail(refused)
            return
        self.outputs.publish_chunk(chunk.actions, chunk.stamp)
        self.schedule.set_chunk(chunk.actions, chunk.stamp, now)
        if self.stats.chunks == 0:
            self.get_logger().info(f"first chunk: {len(chunk.actions)} actions in "
                                   f"{chunk.timings['total'] * 1e3:.0f} ms")
        ended = self.problems.clear()
        if ended:
            self.get_logger().info(f"recovered: chunks flowing again (was: {ended})")
        self.stats.chunk_published(dict(chunk.timings, latency=now - chunk.stamp, engine=engine_s,
                                        observation_to_chunk=pipeline_s, observation_wait=wait_s),
                                   chunk.guidance_error)

    def _fail(self, message: str, waiting: bool = False) -> None:
        """Record a problem (diagnostics show the newest), stop the stream unless on_stale is 'hold', log it
        (throttled by ProblemLog)."""
        if not self.hold_on_stale:
            self.schedule.clear()
        if self.context.ok():  # shutting down: the log's rosout publisher is gone
            self.problems.report(message, waiting)
        self.engine.wake()

    def _worker_failed(self, message: str) -> None:
        self.get_logger().error(message)
        self.schedule.clear()

    # --- the command stream (command_stream.py) ---------------------------------------------------------------------
    def _node_paused(self, seconds: float) -> None:
        """The command thread woke ``seconds`` after its deadline: the whole process was not scheduled (pauses.py).
        Named as such, since every input now looks stale and would otherwise be blamed."""
        self._stale_reported = True  # the stale inputs that follow are this pause, reported here
        self._fail(f"the node did not run for {seconds:.2f} s (its threads were not scheduled: the machine is "
                   "overloaded or was paused); no chunk or command until fresh inputs arrive")

    def _on_command_tick(self) -> None:
        if not self._enabled:
            self.outputs.stop()
            return
        now = self.now()
        snapshot = self.inputs.snapshot()
        # Inputs that went stale between observations stop (or hold) the commands now, not when the chunk ends.
        stale = self.inputs.stale(snapshot, now) if snapshot else ""
        if stale and not self._stale_reported:
            self._fail(stale)
        self._stale_reported = bool(stale)
        command = None if stale else self.schedule.command(now)
        held = command is None and self.hold_on_stale and self._last_command is not None
        if held:
            command = self._last_command
        elif command is None:
            self.outputs.stop()
            return
        self._last_command = command
        self.outputs.publish_command(command, held=held)
        self.stats.command_times.add(time.monotonic())

    def _command_period_s(self) -> float:
        """The command stream's period: command_rate_hz, or the measured joint_states rate (the control rate until
        joint states arrive)."""
        if self.command_rate_hz > 0:
            return 1.0 / self.command_rate_hz
        return 1.0 / (self.stats.joint_rate(self.now()) or self.rate_hz)

    # --- reporting --------------------------------------------------------------------------------------------------
    def _on_housekeeping(self) -> None:
        period = self._command_period_s()
        if abs(period - self._command_period) > 0.01 * period:  # follow the measured rate (1 % hysteresis)
            self._command_period = period
            if self._commands is not None:
                self._commands.period_s = period
            if self._command_timer is not None:
                self._command_timer.timer_period_ns = int(round(period * 1e9))
        stalled = self.engine.stall(self.stats.recent_ms("engine"), self.pauses.paused_since)
        if stalled:  # reported only: the commands follow the current chunk to its end and stop (or hold) there
            self.problems.report(stalled)
        self.status.publish(str(self.policy.device))

    def destroy_node(self, join_timeout_s: float = 3.0) -> bool:
        """Stop the engine and the command stream and destroy the node. Returns False when the engine was still busy
        after ``join_timeout_s`` (a long inference): the caller then exits without waiting for it (see spin.py).
        Under `ros2 launch`, SIGTERM follows SIGINT after 5 s: finish well before."""
        stopped = self._release(join_timeout_s)
        super().destroy_node()
        return stopped

    def _release(self, join_timeout_s: float = 3.0) -> bool:
        """Everything destroy_node frees but the ROS node itself: the engine, the command stream, the camera threads,
        the log forwarding, the policy (kept while the engine is still busy in it: then False)."""
        stopped = True
        if hasattr(self, "engine"):
            stopped = self.engine.stop(join_timeout_s)
        if getattr(self, "_commands", None) is not None:
            self._commands.join(1.0)
        if hasattr(self, "outputs") and self.context.ok():
            self.outputs.stop()  # velocity groups: zero velocity, not the last one held by a forward controller
        if getattr(self, "frames", None) is not None:
            self.frames.close()
        if getattr(self, "_log_handler", None) is not None:
            stop_forwarding(self._log_handler)
        if stopped and hasattr(self, "policy"):
            self.policy.close()
        return stopped


def _shorten(text: str, limit: int = 200) -> str:
    """repr of ``text`` for a log line, cut to ``limit`` characters with its length said."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"
