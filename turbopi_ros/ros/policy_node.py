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

import dataclasses
import logging
import math
import os
import threading
import time
from typing import Dict, Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool

from . import faults
from .action_outputs import ActionOutputs, declare_groups
from .conversions import InputError
from .frames import FramePreparer
from .inputs import JOINT_STATES, InputBuffer, WaitingForInput
from ..logs import get_logger
from .parameters import Param, declare_parameters, on_parameters_set
from ..policy.chunking import ChunkSchedule
from ..policy.policy import IMAGE_KEYS, RANDOM_WEIGHTS, STAGES, ObservationError, Policy, PreparedObservation
from ..policy.rtc import PreviousChunk
from ..model.rtc import DEFAULT_MAX_GUIDANCE
from .pauses import PauseWatch
from .pipeline import JustInTime, LatestSlot
from .problems import ProblemLog
from .rates import EventRate
from .robot_params import ROBOT_PARAMETERS, camera_slots_for, check_robot, policy_kwargs
from .ros_compat import subscription_event_callbacks

PARAMETERS: Dict[str, Param] = {
    "model.checkpoint": Param("", "openpi PyTorch checkpoint directory or .safetensors file, or 'random' for seeded "
                                  "random weights of model.preset (demos and tests only: the actions are meaningless)",
                              required=True),
    "model.preset": Param("tiny", "model config preset (pi0, pi05, tiny, tiny_pi05) or a model config JSON path"),
    "model.device": Param("cpu", "torch device", pattern=r"cpu|cuda(:\d+)?", pattern_text="cpu, cuda or cuda:N"),
    "model.dtype": Param("float32", "compute dtype (bfloat16 pays on GPU)", choices=("float32", "bfloat16")),
    "model.num_steps": Param(10, "flow-matching Euler steps", min=1, max=1000),
    "model.seed": Param(0, "seed of the random weights (if any) and of the noise", min=0, max=2**31 - 1),
    "model.tokenizer": Param("", "PaliGemma SentencePiece model file; '' only with random weights"),
    "model.norm_stats": Param("", "norm_stats.json; '' = the checkpoint's assets/*/norm_stats.json, or none"),
    "model.cuda_graph": Param(True, "on CUDA, replay the denoise as one CUDA graph per prompt length"),
    "model.num_threads": Param(0, "torch CPU threads for inference (0 = torch's default)", min=0, max=1024),
    **ROBOT_PARAMETERS,  # robot.adapter, robot.adapt_to_pi, model.action_horizon / max_token_len / discrete_state_input
    "cameras.names": Param([], "model image slots fed by the camera topics, in the same order (with robot.adapter "
                               "also openpi's robot camera names)", required=True, items=str, choices=None),
    "cameras.topics": Param([], "camera topics, one per cameras.names entry", required=True, items=str),
    "cameras.compressed": Param([], "per camera: sensor_msgs/CompressedImage instead of Image ([] = all raw)",
                                items=bool),
    "cameras.preprocess": Param("exact", "exact: openpi's resize, bit for bit; fast: reduced JPEG decoding and "
                                         "OpenCV's resize (not bit-exact: docs/preprocessing.md)",
                                choices=("exact", "fast")),
    "cameras.prepare_on_arrival": Param(True, "prepare each camera frame as it arrives (a thread per camera), so an "
                                              "observation's images are ready when it is taken: lower latency, CPU "
                                              "per frame; false = when the observation is taken"),
    "joint_states.topic": Param("/joint_states", "sensor_msgs/JointState topic", required=True),
    "state.joints": Param([], "joint names, in the order of the model's state vector", required=True, items=str),
    "action.joints": Param([], "joint names of the first N action dims (published chunks and commands)",
                           required=True, items=str),
    "action.lower_limits": Param([], "per action joint lower limit (one per action.joints entry)", required=True,
                                 items=float),
    "action.upper_limits": Param([], "per action joint upper limit (one per action.joints entry)", required=True,
                                 items=float),
    "action.delta_mask": Param([], "per action joint: true where the model outputs deltas from the state (the state "
                                   "of the same index is added); [] = all absolute", items=bool),
    "action.groups": Param([], "action groups, one per controller, each with its own trajectory and command topics "
                               "(parameters action.group.<name>.*, action_outputs.py); [] = one ~/action_chunk and "
                               "~/joint_command for all action joints", items=str),
    "prompt": Param("", "task instruction (also settable by publishing on ~/prompt)", runtime=True),
    "control_rate_hz": Param(50.0, "the model's action rate: spacing of chunk points (a property of the "
                                   "checkpoint's training data)", min=0.1, max=1000.0),
    "command_rate_hz": Param(0.0, "rate of ~/joint_command, sampling the chunk by interpolation; 0 = the rate the "
                                  "robot publishes joint states at, measured", min=0.0, max=1000.0),
    "inference_period_s": Param(0.0, "0 = infer back to back; > 0 = start an inference at most this often",
                                runtime=True, min=0.0, max=3600.0),
    "blend_s": Param(0.1, "seconds over which a new chunk takes over from the old one", runtime=True, min=0.0,
                     max=10.0),
    "rtc.enabled": Param(False, "real-time chunking: guide each denoise towards the chunk being executed",
                         runtime=True),
    "rtc.max_guidance": Param(DEFAULT_MAX_GUIDANCE, "real-time chunking's guidance clip (the paper's beta)",
                              runtime=True, min=0.01, max=100.0),
    "max_observation_age_s": Param(0.5, "inputs older than this are stale: no inference on them", min=0.001,
                                   max=3600.0),
    "on_stale": Param("stop", "when inputs go stale or inference fails: stop the commands or hold the last one",
                      choices=("stop", "hold")),
    "autostart": Param(True, "publish right away; false = wait for ~/enable"),
    "status_log_period_s": Param(5.0, "seconds between one-line status logs (0 = off)", min=0.0, max=3600.0),
}
DIAGNOSTICS_PERIOD_S = 1.0
# An inference is stalled once it runs longer than max(STALL_MIN_S, STALL_FACTOR x the median of the last 20) (before a
# first chunk: FIRST_INFERENCE_STALL_S, which covers warm-up: lazy initialisation, a CUDA graph capture).
STALL_MIN_S, STALL_FACTOR, FIRST_INFERENCE_STALL_S = 1.0, 5.0, 60.0
PACING_POLL_S = 0.1  # on demand, the engine thread looks again at least this often while pacing holds it


@dataclasses.dataclass
class _Prepared:
    prepared: PreparedObservation  # the policy's inputs, ready for the engine
    snapshot: Dict[str, object]  # the messages it came from (staleness is checked again before the engine runs)
    taken_at: float  # monotonic time the snapshot was taken


def policy_from_params(p: Dict[str, object]) -> Policy:
    """The Policy that the node's checked parameters ask for; turbopi-replay builds it here too, so that what
    replays is what would run."""
    policy = Policy.from_params(
        checkpoint=p["model.checkpoint"], preset=p["model.preset"], device=p["model.device"], dtype=p["model.dtype"],
        tokenizer=p["model.tokenizer"], norm_stats=p["model.norm_stats"], seed=int(p["model.seed"]),
        num_steps=int(p["model.num_steps"]), action_dims=len(p["action.joints"]), image_keys=IMAGE_KEYS,
        delta_mask=list(p["action.delta_mask"]) or None, lower_limits=list(p["action.lower_limits"]),
        upper_limits=list(p["action.upper_limits"]), cuda_graph=bool(p["model.cuda_graph"]),
        preprocess_mode=p["cameras.preprocess"], **policy_kwargs(p))
    if len(p["state.joints"]) > policy.config.action_dim:
        raise ValueError(f"{len(p['state.joints'])} state.joints exceed the model's {policy.config.action_dim} "
                         "state dims")
    return policy


class TurbopiNode(Node):
    def __init__(self, **kwargs):
        super().__init__("turbopi_node", **kwargs)
        try:
            self._build()
        except Exception:
            # refused to start: its rcl handles go now, before spin.py logs why. Left to the garbage collector, they
            # were finalized after rclpy's shutdown (once in a full test run such a process died with SIGSEGV after
            # its error), and the error was also published on /rosout through the half-built node's publisher (on
            # Jazzy, once, that publish spun inside Fast DDS for good: ten nodes refusing to start at once in CI)
            self.destroy_node()
            raise

    def _build(self) -> None:
        p = declare_parameters(self, PARAMETERS)
        self._check_lengths(p)
        check_robot(p)
        cameras = camera_slots_for(p)
        groups = declare_groups(self, p, p["action.joints"])
        self.action_joints = list(p["action.joints"])
        self.rate_hz = float(p["control_rate_hz"])
        self.command_rate_hz = float(p["command_rate_hz"])
        self.inference_period_s = float(p["inference_period_s"])
        self.hold_on_stale = p["on_stale"] == "hold"
        self.rtc_enabled, self.rtc_max_guidance = bool(p["rtc.enabled"]), float(p["rtc.max_guidance"])
        if int(p["model.num_threads"]) > 0:
            import torch

            torch.set_num_threads(int(p["model.num_threads"]))
        self._log_handler = _forward_python_logging(self.get_logger())
        self.policy = self._load_policy(p)
        self._inference_started: Optional[float] = None  # monotonic start of the inference in progress (stalls)
        # the command thread's heartbeat tells a pause of the whole node (no such thread under use_sim_time)
        sim_time = bool(self.get_parameter("use_sim_time").value)
        self.pauses = PauseWatch(float(p["max_observation_age_s"]), enabled=not sim_time)
        self._run = self._watched(faults.wrap(self.policy.run))  # the engine; faults only where a test injects them
        if faults.enabled():
            self.get_logger().warning(f"test-only fault injection is on ({faults.ENV}): never on a robot")

        compressed = list(p["cameras.compressed"]) or [False] * len(cameras)
        topics = dict(zip(cameras, p["cameras.topics"]), **{JOINT_STATES: p["joint_states.topic"]})
        self.inputs = InputBuffer(cameras, topics, p["state.joints"], p["max_observation_age_s"],
                                  use_sim_time_hint=bool(self.get_parameter("use_sim_time").value),
                                  reduce_for=self.policy.reduced_decode_size)
        self.frames: Optional[FramePreparer] = None  # cameras.prepare_on_arrival (frames.py)
        if p["cameras.prepare_on_arrival"]:
            self.frames = FramePreparer(cameras, self._prepare_frame, thread_init=_yield_cpu)
        self.problems = ProblemLog(self.get_logger().error, self.get_logger().warning)
        self.schedule = ChunkSchedule(self.rate_hz, float(p["blend_s"]))
        self._lock = threading.Lock()
        self._new_data = threading.Event()
        self._stop = threading.Event()
        self._prompt = p["prompt"]
        self._enabled = bool(p["autostart"])
        self._last_command: Optional[np.ndarray] = None
        self._stale_reported = False
        self._chunk_count = 0
        self._ages: Dict[str, float] = {}
        # seconds of the last 20 chunks per stage; observation_wait: inputs taken -> the engine starts on them
        self._stage_ms: Dict[str, list] = {s: [] for s in STAGES + ("total", "latency", "engine",
                                                                     "observation_to_chunk", "observation_wait")}
        self._guidance_errors: list = []  # real-time chunking: the new chunks' first-d distance to their target
        self._chunk_times, self._command_times = EventRate(20), EventRate(200)
        self._joint_times = EventRate(100)  # on the node's clock: the command timer runs on it
        self.problems.report(self.inputs.waiting_message(self.inputs.inputs), waiting=True)

        # Sensor-data QoS (best effort, volatile: matches both best-effort and reliable publishers) with a queue of
        # one: when the executor is busy, only the newest frame is waiting, never a backlog to deserialize.
        newest = QoSProfile(depth=1, reliability=qos_profile_sensor_data.reliability,
                            durability=qos_profile_sensor_data.durability, history=qos_profile_sensor_data.history)
        for name, is_compressed in zip(cameras, compressed):
            self.create_subscription(CompressedImage if is_compressed else Image, topics[name],
                                     lambda msg, name=name: self._store(name, msg), newest)
        self.create_subscription(JointState, topics[JOINT_STATES], self._on_joint_states, newest)
        # Prompts from a latched (transient local) publisher and from a plain one (`ros2 topic pub`): a transient
        # local subscription is incompatible with a volatile publisher, a volatile one misses what was latched
        # before it started, so there is one of each (a repeated prompt is ignored). The transient local one does
        # not log the expected mismatch with plain publishers (the volatile one receives those).
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(String, "~/prompt", self._on_prompt, latched,
                                 event_callbacks=subscription_event_callbacks(incompatible_qos=lambda event: None))
        self.create_subscription(String, "~/prompt", self._on_prompt,
                                 QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                            durability=DurabilityPolicy.VOLATILE))
        self.outputs = ActionOutputs(self, self.action_joints, groups, self.rate_hz)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(SetBool, "~/enable", self._on_enable)
        on_parameters_set(self, PARAMETERS, self._apply_parameters)
        # The command stream: in real time, a thread of its own at absolute deadlines (an executor timer that also
        # serves every joint state and camera callback falls behind at a few hundred Hz, and rcl drops the ticks it
        # missed); under use_sim_time, a timer on the ROS clock (simulated time has no wall-clock deadlines).
        self._command_period = 1.0 / (self.command_rate_hz or self.rate_hz)
        self._command_timer = None
        self._command_thread = None
        if self.get_parameter("use_sim_time").value:
            self._command_timer = self.create_timer(self._command_period, self._on_command_tick)
        else:
            self._command_thread = threading.Thread(target=self._command_loop, name="turbopi_commands", daemon=True)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._on_housekeeping)
        if float(p["status_log_period_s"]) > 0:
            self.create_timer(float(p["status_log_period_s"]), self._log_status)
        self._slot: LatestSlot = LatestSlot()  # the prepared observation the engine takes next
        self._jit = JustInTime()  # when the just-in-time preparer prepares (claimed by the engine as it takes one)
        self._engine_waiting = threading.Event()  # the engine waits for a prepared observation
        self._last_key: Optional[tuple] = None  # (newest input stamp, prompt) of the last observation prepared
        self._last_run_start = -math.inf
        self._dropped_stale = 0
        self._preparer = threading.Thread(target=self._prepare_loop, name="turbopi_observations", daemon=True)
        self._worker = threading.Thread(target=self._engine_loop, name="turbopi_inference", daemon=True)
        c = self.policy.config
        commands = f"{self.command_rate_hz:g} Hz" if self.command_rate_hz else "the joint_states rate"
        self.get_logger().info(
            f"ready: {c.variant} on {p['model.device']} ({p['model.dtype']}), {self.policy.num_steps} steps, "
            f"cameras {cameras}, {len(self.action_joints)} action joints, actions at {self.rate_hz:g} Hz, commands "
            f"at {commands}, {self._start_state()}; outputs: "
            f"{self.outputs.describe()}")

    def _start_state(self) -> str:
        return "enabled" if self._enabled else "waiting for ~/enable"

    def start(self) -> None:
        """Start the workers and the command stream (spin.py calls this once the node is whole)."""
        if self.frames is not None:  # the engine thread prepares each observation itself (_prepared_on_demand)
            self.frames.start()
        else:  # a preparing thread, just in time (_prepare_iterations)
            self._preparer.start()
        self._worker.start()
        if self._command_thread is not None:
            self._command_thread.start()

    @staticmethod
    def _check_lengths(p) -> None:
        n_cam, n_act = len(p["cameras.names"]), len(p["action.joints"])
        for name, want, what in (("cameras.topics", n_cam, "cameras.names"),
                                 ("action.lower_limits", n_act, "action.joints"),
                                 ("action.upper_limits", n_act, "action.joints")):
            if len(p[name]) != want:
                raise ValueError(f"parameter {name} has {len(p[name])} entries for {want} {what}: one per entry "
                                 f"of {what} is required")
        for name, want, what in (("cameras.compressed", n_cam, "cameras.names"),
                                 ("action.delta_mask", n_act, "action.joints")):
            if p[name] and len(p[name]) != want:
                raise ValueError(f"parameter {name} has {len(p[name])} entries for {want} {what} (or leave it [])")
        lower, upper = np.array(p["action.lower_limits"]), np.array(p["action.upper_limits"])
        bad = [j for j, lo, hi in zip(p["action.joints"], lower, upper) if not lo <= hi]
        if bad:
            raise ValueError(f"action limits: lower > upper (or NaN) for {bad}")

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
        self._new_data.set()

    def _prepare_frame(self, name: str, msg):
        """A camera frame converted and preprocessed for the model (on its camera's thread, as it arrives)."""
        return self.policy.prepare_image(name, self.inputs.converted(name, msg))

    def _on_joint_states(self, msg: JointState) -> None:
        self._joint_times.add(self.now())
        self._store(JOINT_STATES, msg)

    def _set_prompt(self, text: str, source: str) -> None:
        with self._lock:
            if text == self._prompt:
                return
            self._prompt = text
        self._new_data.set()
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
            self.inference_period_s = float(changes["inference_period_s"])
            self._new_data.set()
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
            self._new_data.set()
        response.success = True
        response.message = "enabled" if self._enabled else "disabled: no chunks, no commands"
        self.get_logger().info(response.message)
        return response

    # --- the two workers: preparing observations, running the engine (pipeline.py) ---------------------------------
    def _prepare_loop(self) -> None:
        _yield_cpu()
        self._restarting(self._prepare_iterations, "observation worker")

    def _engine_loop(self) -> None:
        _yield_cpu()
        self._restarting(self._engine_iterations, "inference worker")

    def _restarting(self, iterations, name: str) -> None:
        while not self._stop.is_set():
            try:
                iterations()
            except Exception as e:  # noqa: BLE001 - last resort: a worker must outlive any bug
                if self._stop.is_set() or not self.context.ok():
                    return  # shutting down
                self.get_logger().error(f"{name}: {type(e).__name__}: {e}; restarting it")
                self.schedule.clear()
                time.sleep(0.5)

    def _prepare_iterations(self) -> None:
        """Pipelined (frames not prepared on arrival): prepare the newest inputs into the slot once per engine run,
        just in time for the engine's end (or at once while it is idle)."""
        while not self._stop.is_set():
            if not self._new_data.wait(timeout=0.1):
                continue
            self._new_data.clear()
            if not self._enabled:
                continue
            not_before = self._last_run_start + self.inference_period_s
            delay = self._jit.prepare_delay(not_before)
            if delay > 0:  # just in time; but at once if the engine turns idle meanwhile (a run shorter than usual)
                self._engine_waiting.wait(delay)
                if self._stop.is_set():
                    return
            # read together with the engine's claim (see _prepared_in_slot): an observation the engine is taking is
            # seen either waiting or as the run in progress, never as neither (which looks like an idle engine)
            waiting, point = self._slot.peek(also=lambda: self._jit.jit_point(not_before))
            if waiting is not None and waiting.taken_at >= point:
                continue  # prepared as late as the engine's next start allows already: the engine takes it
            if point > time.monotonic():  # the engine took the last one since the delay was computed: not due yet
                self._new_data.set()
                continue
            item = self._prepare_newest()
            if item is not None:
                self._slot.put(item)

    def _prepare_newest(self) -> Optional[_Prepared]:
        """Take the newest inputs, check them, convert and preprocess them (Policy.prepare). None when they are no
        newer than the last observation prepared, or bad (reported)."""
        snapshot = self.inputs.snapshot()
        with self._lock:
            prompt = self._prompt
        key = (self.inputs.newest_stamp(snapshot), prompt)
        if key == self._last_key:
            return None  # nothing newer than the last observation: never infer twice on one (chunk stamps are unique)
        taken_at, now = time.monotonic(), self.now()
        try:
            with self._lock:
                self._ages = self.inputs.ages(snapshot, now)
            obs = self.inputs.observation(snapshot, prompt, now,
                                          image_source=self.frames.source if self.frames else None)
            t0 = time.perf_counter()
            prepared = self.policy.prepare(obs)
            self._jit.prepared(time.perf_counter() - t0)
        except WaitingForInput as e:
            self._fail(str(e), waiting=True)
            self._stop.wait(0.05)
            return None
        except (InputError, ObservationError, ValueError) as e:
            self._fail(str(e))
            self._stop.wait(0.02)  # bad input may keep coming as fast as good input: do not spin on it
            return None
        self._last_key = key
        return _Prepared(prepared, snapshot, taken_at)

    def _prepared_on_demand(self) -> Optional[_Prepared]:
        """Frames prepared on arrival: preparing an observation is a copy, so the engine thread prepares the newest
        inputs itself once it is free (and pacing allows): it idles for that copy, and never runs an observation
        that waited for it."""
        if not self._new_data.wait(timeout=0.1):
            return None
        self._new_data.clear()
        if not self._enabled:
            return None
        wait = self._last_run_start + self.inference_period_s - time.monotonic()
        if wait > 0:  # pacing: at most one inference per inference_period_s, on the newest inputs after it
            self._stop.wait(min(wait, PACING_POLL_S))
            self._new_data.set()  # look again then
            return None
        return self._prepare_newest()

    def _prepared_in_slot(self) -> Optional[_Prepared]:
        """Pipelined: the observation the preparing thread put in the slot, once pacing allows. Taking it claims the
        engine (JustInTime.run_started), atomically, so the preparer's next one is timed for this run's end."""
        wait = self._last_run_start + self.inference_period_s - time.monotonic()
        if wait > 0:  # pacing: at most one inference per inference_period_s (the preparer aims at its end)
            self._stop.wait(min(wait, PACING_POLL_S))
            return None
        item = self._slot.take(timeout=0.0, claim=self._jit.run_started)
        if item is None:  # idle: let the preparer prepare at once (it also wakes on every new input)
            self._engine_waiting.set()
            self._new_data.set()
            item = self._slot.take(timeout=0.1, claim=self._jit.run_started)
        self._engine_waiting.clear()
        if item is not None and not self._enabled:
            self._jit.run_abandoned()
            return None
        return item

    def _engine_iterations(self) -> None:
        """Run the engine on each prepared observation that is still fresh, publish the chunk."""
        while not self._stop.is_set():
            item = self._prepared_on_demand() if self.frames is not None else self._prepared_in_slot()
            if item is None:
                continue
            stale = self.inputs.stale(item.snapshot, self.now())
            if stale:  # went stale while it waited: dropped, never acted on
                self._jit.run_abandoned()
                self._dropped_stale += 1
                self._fail(f"observation went stale before inference: {stale}")
                continue
            self._last_run_start = time.monotonic()
            try:
                chunk = self._run(item.prepared, **self._guidance(item.prepared.stamp))
            except (InputError, ObservationError, ValueError) as e:
                self._fail(str(e))
                continue
            except Exception as e:  # noqa: BLE001 - an engine failure must not kill the node
                self._fail(f"inference failed: {type(e).__name__}: {e}")
                self._stop.wait(0.02)
                continue
            finally:
                self._jit.run_ended()
            if self._enabled and not self._stop.is_set():
                self._publish_chunk(chunk, run_start=self._last_run_start, pipeline_s=time.monotonic() - item.taken_at,
                                    wait_s=self._last_run_start - item.taken_at)

    def _guidance(self, stamp: float) -> Dict[str, object]:
        """Real-time chunking's arguments for an observation at ``stamp`` (none when it is off or nothing is being
        executed): the chunk being executed is the target; d = actions that will have been executed from it before
        the new chunk can take over (the worst of the last 5 observation-to-chunk latencies, in actions, rounded
        up); s = actions between the two observations (where the target's overlap ends)."""
        current = self.schedule.current if self.rtc_enabled else None
        if current is None or current.end <= stamp:
            return {}
        with self._lock:
            recent = self._stage_ms["latency"][-5:]
        delay = math.ceil(max(recent) * 1e-3 * self.rate_hz) if recent else 0
        shift = max(int(round((stamp - current.stamp) * self.rate_hz)), 0)
        return {"previous": PreviousChunk(current.actions, current.stamp, self.rate_hz), "delay_steps": delay,
                "execution_horizon": shift, "max_guidance": self.rtc_max_guidance}

    def _publish_chunk(self, chunk, run_start: float, pipeline_s: float, wait_s: float) -> None:
        engine_s, now = time.monotonic() - run_start, self.now()
        if self._from_the_future(chunk, now) or self._inputs_went_stale(now) or self._paused_during(run_start):
            return
        self.outputs.publish_chunk(chunk.actions, chunk.stamp)
        self.schedule.set_chunk(chunk.actions, chunk.stamp, now)
        if self._chunk_count == 0:
            self.get_logger().info(f"first chunk: {len(chunk.actions)} actions in {chunk.timings['total'] * 1e3:.0f} ms")
        ended = self.problems.clear()
        if ended:
            self.get_logger().info(f"recovered: chunks flowing again (was: {ended})")
        with self._lock:
            self._chunk_count += 1
            for stage, seconds in dict(chunk.timings, latency=now - chunk.stamp, engine=engine_s,
                                       observation_to_chunk=pipeline_s, observation_wait=wait_s).items():
                self._stage_ms[stage] = (self._stage_ms[stage] + [seconds * 1e3])[-20:]
            if chunk.guidance_error is not None:
                self._guidance_errors = (self._guidance_errors + [chunk.guidance_error])[-20:]
        self._chunk_times.add(time.monotonic())

    def _fail(self, message: str, waiting: bool = False) -> None:
        """Record a problem (diagnostics show the newest), stop the stream unless on_stale is 'hold', log it
        (throttled by ProblemLog)."""
        if not self.hold_on_stale:
            self.schedule.clear()
        if self.context.ok():  # shutting down: the log's rosout publisher is gone
            self.problems.report(message, waiting)
        self._new_data.set()

    def _watched(self, run):
        """``run`` that records when it started, for _check_stall."""
        def watched(*args, **kwargs):
            self._inference_started = time.monotonic()
            try:
                return run(*args, **kwargs)
            finally:
                self._inference_started = None
        return watched

    def _stall_bound_s(self) -> float:
        with self._lock:
            runs = list(self._stage_ms["engine"])
        if not runs:
            return FIRST_INFERENCE_STALL_S
        return max(STALL_MIN_S, STALL_FACTOR * float(np.median(runs)) * 1e-3)

    def _check_stall(self) -> None:
        """An inference running far longer than usual (a hung engine, a driver stall) is an error on /diagnostics while
        it lasts. The commands are left alone: they follow the current chunk to its end and stop (or hold) there."""
        started = self._inference_started
        if started is None:
            return
        if self.pauses.paused_since(started):
            return  # the node itself paused, not the inference: reported as such (_node_paused)
        running, bound = time.monotonic() - started, self._stall_bound_s()
        if running > bound:
            self.problems.report(f"inference stalled: running for {running:.1f} s (more than {bound:.1f} s = "
                                 f"max({STALL_MIN_S:g} s, {STALL_FACTOR:g} x the median inference time))")

    def _paused_during(self, run_start: float) -> bool:
        """The node paused while the chunk was computed: its observation is as old as the pause (pauses.py), so the
        chunk is dropped, whether or not fresh inputs arrived first after the pause."""
        if self.pauses.paused_since(run_start):
            self._fail("chunk dropped: the node paused while it was computed, its observation is stale")
            return True
        return False

    def _inputs_went_stale(self, now: float) -> bool:
        """The inputs went stale while the chunk was computed (a sensor stopped, the node was paused): the chunk is
        dropped, as the command stream stops, rather than published with a stamp far in the past."""
        stale = self.inputs.stale(self.inputs.snapshot(), now)
        if stale:
            self._fail(f"chunk dropped: its inputs went stale while it was computed: {stale}")
        return bool(stale)

    def _from_the_future(self, chunk, now: float) -> bool:
        """A chunk whose observation is stamped ahead of the clock by more than max_observation_age_s: the clock
        jumped back (use_sim_time: a simulation or bag restarted) while it was computed. Dropped: a trajectory stamped
        in the future would wait that long to start."""
        ahead = chunk.stamp - now
        if ahead <= self.inputs.max_age_s:
            return False
        self._fail(f"chunk dropped: its observation is stamped {ahead:.2f} s ahead of the node's clock (the clock "
                   "jumped back while it was computed)")
        return True

    # --- the command stream -----------------------------------------------------------------------------------------
    def _command_loop(self) -> None:
        """Commands at absolute deadlines on the monotonic clock; a stall of over two periods restarts the grid
        instead of sending a burst of late commands."""
        deadline = time.monotonic()
        while not self._stop.is_set():
            period = self._command_period
            deadline += period
            delay = deadline - time.monotonic()
            if delay > 0:
                if self._stop.wait(delay):
                    return
            elif delay < -2 * period:
                deadline = time.monotonic()
            paused = self.pauses.beat(-delay, period)
            if paused:
                self._node_paused(paused)
            try:
                self._on_command_tick()
            except Exception as e:  # noqa: BLE001 - the stream must outlive any bug; shutting down ends it
                if self._stop.is_set() or not self.context.ok():
                    return
                self.get_logger().error(f"command stream: {type(e).__name__}: {e}")
                self._stop.wait(0.1)

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
        self._command_times.add(time.monotonic())

    def _command_period_s(self) -> float:
        """The command timer's period: command_rate_hz, or the measured joint_states rate (the control rate until
        joint states arrive)."""
        if self.command_rate_hz > 0:
            return 1.0 / self.command_rate_hz
        measured = self._joint_times.median_rate(self.now(), idle_s=2.0)
        return 1.0 / (measured or self.rate_hz)

    # --- reporting --------------------------------------------------------------------------------------------------
    def _on_housekeeping(self) -> None:
        period = self._command_period_s()
        if abs(period - self._command_period) > 0.01 * period:  # follow the measured rate (1 % hysteresis)
            self._command_period = period
            if self._command_timer is not None:
                self._command_timer.timer_period_ns = int(round(period * 1e9))
        self._check_stall()
        self._publish_diagnostics()

    def _stats(self) -> Dict[str, float]:
        mono = time.monotonic()
        with self._lock:
            stats = {f"{s}_ms": float(np.median(v)) for s, v in self._stage_ms.items() if v}
            if self._stage_ms["observation_wait"]:  # a median hides observations that waited a whole run
                stats["observation_wait_max_ms"] = float(max(self._stage_ms["observation_wait"]))
        stats["chunk_rate_hz"] = self._chunk_times.rate(mono, idle_s=2.0)
        stats["command_rate_hz"] = self._command_times.rate(mono, idle_s=1.0)
        stats["command_period_target_ms"] = self._command_period * 1e3
        stats["joint_states_rate_hz"] = self._joint_times.median_rate(self.now(), idle_s=2.0) or 0.0
        stats["superseded"] = float(self._slot.superseded)
        stats["dropped_stale"] = float(self._dropped_stale)
        if self.frames is not None:
            frame_ms = self.frames.median_ms()
            if frame_ms is not None:
                stats["frame_prepare_ms"] = frame_ms
            stats["frames_skipped"], stats["frames_late"] = float(self.frames.skipped), float(self.frames.late)
        with self._lock:
            if self.rtc_enabled and self._guidance_errors:
                stats["rtc_guidance_error"] = float(np.median(self._guidance_errors))
        return stats

    def _publish_diagnostics(self) -> None:
        stats = self._stats()
        with self._lock:
            ages, count = dict(self._ages), self._chunk_count
        problem, level = self.problems.message, self.problems.level
        status = DiagnosticStatus(name="turbopi_node: policy", hardware_id=str(self.policy.device))
        if level == "error":
            status.level, status.message = DiagnosticStatus.ERROR, problem
        elif not self._enabled:
            status.level, status.message = DiagnosticStatus.OK, "disabled (call ~/enable)"
        elif level == "warn":
            status.level, status.message = DiagnosticStatus.WARN, problem
        elif stats["chunk_rate_hz"] == 0.0:
            status.level, status.message = DiagnosticStatus.WARN, "no chunks yet"
        else:
            status.level, status.message = DiagnosticStatus.OK, f"{stats['chunk_rate_hz']:.1f} chunks/s"
        values = {"enabled": str(self._enabled), "chunks": str(count), "errors": str(self.problems.count),
                  "last_error": problem if level == "error" else ""}
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
        level, problem = self.problems.level, self.problems.message
        line = (f"{stats['chunk_rate_hz']:.1f} chunks/s, commands {stats['command_rate_hz']:.0f}/s | ms: "
                f"{stages or '-'} | ages: {ages or '-'}")
        if level == "error":
            self.get_logger().error(line + f" | ERROR {problem}")
        elif level == "warn":
            self.get_logger().warning(line + f" | {problem}")
        else:
            self.get_logger().info(line)

    def destroy_node(self, join_timeout_s: float = 3.0) -> bool:
        """Stop the inference worker and destroy the node. Returns False when the worker was still busy after
        ``join_timeout_s`` (a long inference): the caller then exits without waiting for it (see spin.py). Under
        `ros2 launch`, SIGTERM follows SIGINT after 5 s: finish well before."""
        stopped = self._release(join_timeout_s)
        super().destroy_node()
        return stopped

    def _release(self, join_timeout_s: float = 3.0) -> bool:
        """Everything destroy_node frees but the ROS node itself: the workers, the camera threads, the log forwarding,
        the policy (kept while a worker is still busy in it: then False)."""
        stopped = True
        if hasattr(self, "_worker") and self._worker.ident is not None:
            self._stop.set()
            self._new_data.set()
            self._engine_waiting.set()
            self._worker.join(timeout=join_timeout_s)
            stopped = not self._worker.is_alive()
            if self._preparer.ident is not None:
                self._preparer.join(timeout=1.0)
                stopped = stopped and not self._preparer.is_alive()
            if self._command_thread is not None:
                self._command_thread.join(timeout=1.0)
            if self.context.ok():
                self.outputs.stop()  # velocity groups: zero velocity, not the last one held by a forward controller
        if getattr(self, "frames", None) is not None:
            self.frames.close()
        if getattr(self, "_log_handler", None) is not None:
            _stop_forwarding(self._log_handler)
        if stopped and hasattr(self, "policy"):
            self.policy.close()
        return stopped


def _shorten(text: str, limit: int = 200) -> str:
    """repr of ``text`` for a log line, cut to ``limit`` characters with its length said."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


WORKER_NICENESS = 10


def _yield_cpu() -> None:
    """Lower this thread's CPU priority (Linux: niceness is per thread, and threads it starts inherit it: the camera
    pool, torch's workers). The heavy work (preparation, inference) then yields the cores to the command stream and
    the executor when the machine is busy, so commands keep their deadlines; raising a priority needs privileges,
    lowering one does not."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not allowed: the default priority
        pass


class _RosLogHandler(logging.Handler):
    """Python logging of the package (the policy's warnings: random weights, no norm stats) to the node's logger, so
    it reaches the console and /rosout like the node's own messages."""

    def __init__(self, ros_logger):
        super().__init__(logging.INFO)
        self.ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.levelno >= logging.ERROR:
                self.ros_logger.error(message)
            elif record.levelno >= logging.WARNING:
                self.ros_logger.warning(message)
            else:
                self.ros_logger.info(message)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def _forward_python_logging(ros_logger) -> logging.Handler:
    """Attach a _RosLogHandler to the package's Python logger (INFO and up); remove it with
    _stop_forwarding. With a handler in the hierarchy, Python's last-resort stderr output stays silent, so each
    message appears once."""
    handler = _RosLogHandler(ros_logger)
    package = get_logger("turbopi_ros")
    handler.previous_level = package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    return handler


def _stop_forwarding(handler: logging.Handler) -> None:
    package = get_logger("turbopi_ros")
    package.removeHandler(handler)
    package.setLevel(handler.previous_level)
