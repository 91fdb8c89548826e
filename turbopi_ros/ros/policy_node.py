"""TurbopiNode, the policy node: cameras + joint states + prompt in, action chunks and a streamed joint command out.
(Its entry point is node.py, which sets up signal handling before this module imports torch.)

The node only wires things up: InputBuffer keeps the newest message of each input and builds observations,
FramePreparer prepares each camera frame as it arrives, ProblemLog reports what is wrong, Policy turns an observation
into an action chunk, ChunkSchedule says which action applies now. One engine thread (EngineWorker) runs one inference
at a time on the newest complete observation, taken when it is free (or prepared just in time by a second thread,
pipeline.py); ChunkFlow publishes each chunk or reports why not. A thread (CommandStream) streams the action for "now"
(CommandSource) on ~/joint_command at command_rate_hz (CommandPeriod; 0: the rate the robot publishes joint states at,
measured). StatusReporter publishes /diagnostics.
Bad input is logged, reported on /diagnostics and never acted on.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Dict, Optional

from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool

from ..policy.chunking import ChunkSchedule
from ..policy.jump_limit import JumpLimit
from . import faults
from .action_outputs import ActionOutputs, unpublished_command_remap
from .chunk_flow import ChunkFlow, RealTimeChunking
from .chunk_gate import ChunkGate
from .command_stream import CommandPeriod, CommandSource, CommandStream
from .conversions import stamp_to_sec
from .engine_worker import EngineHooks, EngineWorker, yield_cpu
from .frames import FramePreparer
from .inputs import JOINT_STATES, InputBuffer, PromptSlot, shorten
from .node_config import NodeConfig, declare_node_parameters
from .node_params import PARAMETERS, loading_message, policy_from_config
from .node_status import DISABLED, NodeStats, StatusReporter, ready_message
from .parameters import ignored_qos_overrides, on_parameters_set
from .pauses import PauseWatch
from .problems import ProblemLog, failure
from .ros_logging import forward_python_logging, stop_forwarding
from .subscriptions import resolved_input_topics, subscribe_prompt, subscribe_sensors
from .warm_up import WarmUp

DIAGNOSTICS_PERIOD_S = 1.0


class TurbopiNode(Node):
    def __init__(self, **kwargs):
        super().__init__("turbopi_node", **kwargs)
        self._make_gates()
        try:
            self._build()
        except Exception:
            # refused to start: its rcl handles go now, before spin.py logs why, rather than after rclpy's shutdown
            # (the garbage collector's time), and the error is not published on /rosout through a half-built node
            self.destroy_node()
            raise

    def _make_gates(self) -> None:
        """A command tick and a chunk's publication each hold a gate, and ``~/enable`` false (the managed node's
        deactivate too) takes both: nothing is published after it returns (one in progress finishes first)."""
        self._command_gate, self._chunk_gate = threading.Lock(), threading.Lock()
        self._stopped_at = -math.inf  # monotonic time of the last stop: a chunk observed before it is dropped

    def _build(self) -> None:
        self.config, groups = declare_node_parameters(self)
        c = self.config
        self.rate_hz = c.control_rate_hz
        self._topics = dict(zip(c.cameras.names, c.cameras.topics), **{JOINT_STATES: c.joint_states.topic})
        self._topic_names = resolved_input_topics(self, self._topics, JOINT_STATES)  # a bad one: before the load
        if c.model.num_threads > 0:
            import torch

            torch.set_num_threads(c.model.num_threads)
        self._log_handler = forward_python_logging(self.get_logger())
        self.get_logger().info(loading_message(c))
        self.policy = faults.cpu_graphs(policy_from_config(c))  # test-only: graphs on CPU
        if faults.enabled():
            self.get_logger().warning(faults.WARNING)
        self._build_state(c)
        self._build_interfaces(c, groups)
        # logged once warmed up (on the engine thread: start)
        self._ready_message = ready_message(c, self.policy, self.outputs.describe(), self._start_state())

    def _build_state(self, c: NodeConfig) -> None:
        """The parts: the inputs' buffer, the frames' preparer, problems, the schedule, statistics, the engine."""
        cameras = list(c.cameras.names)
        self._compressed = dict(zip(cameras, c.cameras.compressed))
        self._sim_time = bool(self.get_parameter("use_sim_time").value)
        self.inputs = InputBuffer(cameras, self._topic_names, list(c.state.joints), c.max_observation_age_s,
                                  use_sim_time_hint=self._sim_time, reduce_for=self.policy.reduced_decode_size)
        self.frames: Optional[FramePreparer] = None  # cameras.prepare_on_arrival (frames.py)
        if c.cameras.prepare_on_arrival:
            self.frames = FramePreparer(cameras, self._prepare_frame,
                                        thread_init=lambda: yield_cpu(c.worker_niceness))
        self.problems = ProblemLog(self.get_logger().error, self.get_logger().warning)
        self.schedule = ChunkSchedule(self.rate_hz, c.blend_s)
        self.stats = NodeStats()
        self.rtc = RealTimeChunking(self.schedule, self.stats, self.rate_hz, c.rtc.enabled, c.rtc.max_guidance)
        # the command thread's heartbeat tells a pause of the whole node (no such thread under use_sim_time)
        self.pauses = PauseWatch(c.max_observation_age_s, enabled=not self._sim_time)
        self.prompt = PromptSlot(c.prompt)
        self._enabled = c.autostart
        hooks = EngineHooks(now=self.now, prompt=self.prompt.get, enabled=lambda: self._enabled,
                            fail=lambda *a, **k: self.flow.fail(*a, **k), guidance=self.rtc.arguments,
                            publish=self._publish_chunk, worker_failed=lambda m: self.flow.worker_failed(m),
                            alive=self.context.ok, new_prompt=self._capture_prompt)
        run = faults.wrap(self.policy.run)  # the policy's run; faults.wrap only where a test injects faults
        self.engine = EngineWorker(self.policy, run, self.inputs, self.frames, hooks, c.inference_period_s,
                                   c.worker_niceness)
        self.warm_up = WarmUp(self.policy, cameras, c.state.joints, self.prompt.get, run, c.model.warm_up_prompts,
                              c.rtc.enabled)
        self.problems.report(self.inputs.waiting_message(self.inputs.inputs), waiting=True)

    def _build_interfaces(self, c: NodeConfig, groups) -> None:
        """Subscriptions, publishers, the service, the parameter callback, the command stream and the timers."""
        subscribe_sensors(self, c.cameras.names, self._topics, self._compressed, c.joint_states.topic, self._store,
                          self._on_joint_states)
        subscribe_prompt(self, self._on_prompt)
        self.outputs = ActionOutputs(self, list(c.action.joints), groups, self.rate_hz, c.action.halt_on_stop,
                                     c.action.halt_time_s)
        hold = c.on_stale == "hold"
        gate = ChunkGate(self.inputs, self.pauses, JumpLimit(c.action.joints, c.state.joints, c.action.max_jump))
        self.flow = ChunkFlow(self.schedule, gate, self.outputs, self.stats,
                              self.problems, self.get_logger(), hold, self.now, self.engine.wake, self.context.ok)
        self.commands = CommandSource(self.schedule, self.inputs, self.outputs, self.stats, self.now, self.flow.fail,
                                      lambda: self._enabled, hold)
        self.period = CommandPeriod(c.command_rate_hz, self.rate_hz)
        self.status = StatusReporter(self, self.stats, self.problems, self.engine, self.frames,
                                     lambda: (self.now(), self.period.period_s, self.rtc.enabled, self._enabled),
                                     self.warm_up, self._disabled_message)
        self.create_service(SetBool, "~/enable", self._on_enable)
        self._param_callbacks = on_parameters_set(self, PARAMETERS, self._apply_parameters,
                                                  fixed={"use_sim_time": self._sim_time})
        for ignored in filter(None, (ignored_qos_overrides(self), unpublished_command_remap(self, groups))):
            self.get_logger().warning(ignored)
        # In real time the command stream is a thread at absolute deadlines (command_stream.py); under use_sim_time,
        # a timer on the ROS clock (simulated time has no wall-clock deadlines).
        self._command_timer = None
        self._stream: Optional[CommandStream] = None
        if self._sim_time:
            self._command_timer = self.create_timer(self.period.period_s, self._on_command_tick)
        else:
            self._stream = CommandStream(self._on_command_tick, self.period.period_s, self.pauses,
                                         self.commands.paused, self.get_logger().error, self.engine.stop_event,
                                         self.context.ok)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._on_housekeeping)
        if c.status_log_period_s > 0:
            self.create_timer(c.status_log_period_s, self.status.log)

    def _start_state(self) -> str:
        return "enabled" if self._enabled else "waiting for ~/enable"

    def _disabled_message(self) -> str:
        """/diagnostics while not publishing: what would publish."""
        return DISABLED

    def start(self) -> None:
        """Start the engine (it warms up first: /diagnostics says "warming up" meanwhile) and the command stream
        (spin.py calls this once the node is whole)."""
        self.engine.start(None if self.warm_up.ready.is_set() else self._warm_up)
        if self._stream is not None:
            self._stream.start()

    def _warm_up(self) -> None:
        try:
            self.get_logger().info(self.warm_up.run())
        except Exception as e:  # noqa: BLE001 - reported: the engine goes on (a capture then happens on demand)
            self.warm_up.ready.set()
            self.flow.fail(failure("warm-up", e))
        self.get_logger().info(self._ready_message)

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # --- callbacks: store only --------------------------------------------------------------------------------------
    def _store(self, name: str, msg) -> bool:
        counts = self.inputs.store(name, msg)
        if self.frames is not None and name != JOINT_STATES:
            self.frames.submit(name, msg)
        self.engine.wake()
        return counts

    def _prepare_frame(self, name: str, msg):
        """A camera frame converted and preprocessed for the model (on its camera's thread, as it arrives)."""
        return self.policy.prepare_image(name, self.inputs.converted(name, msg))

    def _on_joint_states(self, msg: JointState) -> None:
        received = self.now()
        if self._store(JOINT_STATES, msg):  # not another publisher's part of the joints: its stamps are no period
            self.stats.joint_state(received, stamp_to_sec(msg.header.stamp))

    def _set_prompt(self, text: str, source: str) -> None:
        if self.prompt.set(text):
            self.engine.wake()
            self.get_logger().info(f"prompt set from {source}: {shorten(text)}")
            unforeseen = self.warm_up.unforeseen(text, self.rtc.enabled)
            if unforeseen:
                self.get_logger().warning(unforeseen)

    def _capture_prompt(self, text: str) -> bool:
        """The engine's hook before the first inference with a prompt (warm_up.WarmUp.capture_before_inferring)."""
        return self.warm_up.capture_before_inferring(text, self.rtc.enabled,
                                                     lambda m: self.problems.report(m, waiting=True),
                                                     self.get_logger().info, self.flow.fail)

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
        self.rtc.apply(changes)
        if any(name.startswith("rtc.") for name in changes):  # a new beta, or guidance on: the guided graphs
            self.engine.recheck_prompt()

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        with self._command_gate, self._chunk_gate:
            self._enabled = bool(request.data)
            if not self._enabled:
                self._stop_publishing()
        if self._enabled:
            self.engine.wake()
        response.success = True
        response.message = "enabled" if self._enabled else "disabled: no chunks, no commands"
        self.get_logger().info(response.message)
        return response

    def _stop_publishing(self) -> None:
        """~/enable false (deactivate), under both gates: the chunk being followed halted (action.halt_on_stop; before
        the schedule is cleared), the schedule cleared, a velocity group's zero command sent."""
        self._stopped_at = time.monotonic()  # an inference in flight: its chunk is dropped, also after enabling again
        self.outputs.halt(self.schedule, self.now())
        self.commands.stop()
        self.outputs.stop()

    # --- the engine's hooks (engine_worker.py) and the command tick (command_stream.py) ------------------------------
    def _publish_chunk(self, chunk, run_start: float, taken_at: float, ready_at: float) -> None:
        with self._chunk_gate:  # the engine checked before; a disable since then drops the chunk here
            if self._publishing() and taken_at > self._stopped_at:  # nor one observed before a disable
                self.flow.publish(chunk, run_start, taken_at, ready_at)

    def _publishing(self) -> bool:
        """Chunks go out (the managed node: only while active too)."""
        return self._enabled

    def _on_command_tick(self) -> None:
        with self._command_gate:
            self.commands.tick()

    # --- reporting --------------------------------------------------------------------------------------------------
    def _on_housekeeping(self) -> None:
        period = self.period.follow(self.stats.joint_rate(self.now()))
        if period is not None:  # follow the measured joint_states rate
            if self._stream is not None:
                self._stream.period_s = period
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
        stopped = self.engine.stop(join_timeout_s) if hasattr(self, "engine") else True
        if getattr(self, "_stream", None) is not None:
            self._stream.join(1.0)
        if hasattr(self, "outputs") and self.context.ok():
            self.outputs.halt(self.schedule, self.now())
            self.outputs.stop()  # velocity groups: zero velocity, not the last one held by a forward controller
        if getattr(self, "frames", None) is not None:
            self.frames.close()
        if getattr(self, "_log_handler", None) is not None:
            stop_forwarding(self._log_handler)
        if stopped and hasattr(self, "policy"):
            self.policy.close()
        return stopped
