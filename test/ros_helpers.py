"""Helpers for the rclpy integration tests: the node as a subprocess, a feeder of sensor data, a collector of outputs.

Each test module uses a ROS_DOMAIN_ID of its own (free_ros_domain) and localhost-only discovery, so neither modules nor
parallel runs cross-talk.
"""
from __future__ import annotations

import collections
import contextlib
import fcntl
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO_PARAMS = REPO / "config" / "demo_tiny.yaml"
LAUNCH_SIGTERM_AFTER_S = 5.0  # ros2 launch: SIGTERM this long after its SIGINT (and SIGKILL as long after that)
BAD_SIGNS = ("Traceback", "terminate called", "Aborted", "core dumped", "KeyboardInterrupt")  # in an exit's output


def assert_clean_exit(returncode: int, output: str, elapsed: float) -> None:
    """A process stopped by signals exited well: exit 0, none of BAD_SIGNS in its output, ``elapsed`` (seconds from
    the first signal to the exit) within the time ros2 launch allows before SIGTERM."""
    assert returncode == 0, f"exit {returncode}:\n{output}"
    assert not any(s in output for s in BAD_SIGNS), output
    assert elapsed < LAUNCH_SIGTERM_AFTER_S, f"took {elapsed:.1f} s to exit:\n{output}"


class DemoProcess:
    """``python -m turbopi_ros.tools.demo ARGS`` in a session of its own, its output collected line by line
    (``lines``)."""

    def __init__(self, args: List[str], env: dict):
        self.proc = subprocess.Popen([sys.executable, "-m", "turbopi_ros.tools.demo", *args], cwd=str(REPO), env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: List[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")),
                                        daemon=True)
        self._reader.start()

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 40.0) -> str:
        """SIGTERM, as a process manager stops it (Ctrl-C takes the same path): a clean exit is asserted. Returns
        the whole output."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=timeout) == 0, self.output()
        self._reader.join(timeout=5)
        return self.output()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._reader.join(timeout=5)


@contextlib.contextmanager
def demo_process(args: List[str], env: dict):
    """A DemoProcess, killed with its session on the way out if the test did not stop it."""
    demo = DemoProcess(args, env)
    try:
        yield demo
    finally:
        demo.kill()


def run_node_starts(args_by_case: Dict[str, List[str]], at_once: int = 3, timeout: float = 120.0) -> Dict[str, tuple]:
    """``python -m turbopi_ros.node ARGS`` for each case, each a process expected to exit at start, at most at_once of
    them alive together: case -> (exit code, output). Many DDS participants starting at the same instant have crashed
    Fast DDS itself (SIGSEGV before the node printed anything, ros2/rmw_fastrtps#860), which a test of the node's own
    start-up must not depend on. A process still running after timeout is killed and reported with its output."""
    pending = list(args_by_case.items())
    running: Dict[str, tuple] = {}  # case -> (process, its output lines, the thread reading them, start time)
    results: Dict[str, tuple] = {}
    try:
        while pending or running:
            while pending and len(running) < at_once:
                case, args = pending.pop(0)
                proc = subprocess.Popen([sys.executable, "-m", "turbopi_ros.node", *args], cwd=str(REPO),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=dict(os.environ, PYTHONUNBUFFERED="1"))
                lines: List[str] = []
                reader = threading.Thread(target=lines.extend, args=(proc.stdout,), daemon=True)
                reader.start()
                running[case] = (proc, lines, reader, time.monotonic())
            for case, (proc, lines, reader, started) in list(running.items()):
                if proc.poll() is None and time.monotonic() - started > timeout:
                    proc.kill()
                    proc.wait()
                if proc.poll() is not None:
                    reader.join(timeout=10)
                    results[case] = (proc.returncode, "".join(lines))
                    del running[case]
            time.sleep(0.05)
    finally:  # a node that hangs must not outlive the test (spinning on a core and a ROS domain of the suite's)
        for proc, *_ in running.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def assert_published_at(sources: List[tuple], t0: float, seconds: float, hz: float, rel: float, what: str = "",
                        chunks: Optional[List[tuple]] = None) -> None:
    """The messages that arrived in [t0, t0 + seconds), given as (arrival monotonic, rmw source time) pairs (the
    feeder's ``commands_info``, a group Recorder's ``command_sources``: a copy taken under their lock), were published
    at ``hz``: their median period within ``rel``, from the node's publish times (what the test process's own
    scheduling on a loaded machine does to arrivals is not the node's; missed wake-ups lowering the mean rate are
    turbopi-exec-bench's business); and they kept coming, at least half of ``hz`` on average. With ``chunks`` (the
    feeder's (arrival, chunk) pairs), on average over the time a chunk had an action for now (chunk_cover): a machine
    whose inferences outlast what is left of a chunk when it comes leaves the commands nothing to send between
    chunks, and the node rightly stops them."""
    sent = np.array([s for t, s in sources if t0 <= t < t0 + seconds])
    span = seconds if chunks is None else chunk_cover(chunks, t0, t0 + seconds)
    assert span >= min(1.0, seconds), f"{what}a chunk had actions for only {span:.2f} s of {seconds:.2f} s"
    assert len(sent) > 0.5 * hz * span, f"{what}{len(sent) / span:.1f} Hz over the {span:.2f} s the chunks covered"
    period = float(np.median(np.diff(sent)))
    assert abs(period * hz - 1.0) <= rel, f"{what}median period {period * 1e3:.1f} ms, expected {1e3 / hz:.1f} ms"


def chunk_cover(chunks: List[tuple], t0: float, t1: float) -> float:
    """Seconds of [t0, t1) (this process's monotonic clock) during which one of ``chunks`` ((arrival monotonic,
    JointTrajectory) pairs) had an action for now: from its arrival here to its last point's time (its stamp plus the
    point's time_from_start, on the node's clock: this machine's wall clock, without sim time)."""
    offset = time.time() - time.monotonic()
    spans = sorted((arrived, stamp_of(msg) + trajectory_times(msg)[-1] - offset) for arrived, msg in chunks)
    covered, reached = 0.0, t0
    for start, end in spans:
        start, end = max(start, reached), min(end, t1)
        if end > start:
            covered += end - start
            reached = end
    return covered


def wait_for_chunk_cover(chunks: Callable[[], List[tuple]], t0: float, seconds: float, timeout: float = 60.0) -> float:
    """Waits until the chunks (``chunks()``: (arrival, chunk) pairs) have covered ``seconds`` since ``t0`` (chunk_cover:
    ``seconds`` after t0 on an idle machine, longer where inferences outlast the chunks), then returns how long
    after t0 that was."""
    assert wait_for(lambda: time.monotonic() >= t0 + seconds and chunk_cover(chunks(), t0, time.monotonic()) >= seconds,
                    timeout=timeout), f"chunks covered {chunk_cover(chunks(), t0, time.monotonic()):.2f} s"
    return time.monotonic() - t0


def assert_reported_command_rate(feeder, rel: float = 0.05) -> None:
    """/diagnostics' command_rate_hz is the rate of the last 200 commands the node published before the status
    (node_status: their count over their span, all of them while fewer; 0 with none in the last second), judged from
    the commands' rmw source times up to the status's stamp, not from the configured rate: on a loaded machine the
    command thread misses wake-ups, or the chunks run out between inferences, and the report must say what really
    happened. The node takes its figure a moment before it stamps the status, and a loaded machine may publish a few
    commands in between: the figure must match the window ending at one of the last 10 commands before the stamp. A
    status stamped over 0.5 s ago, so that the commands before it that reach this process have arrived. Some may not:
    at 500 Hz a busy test process drops some (seen on Jazzy: 365/s received of the 498/s reported), which lowers the
    rate of the ones received, never raises it. So the received windows' mean rate is a floor, and a ceiling is the
    rate the stream ran at while it ran (1 / their median interval: on its grid of deadlines no stretch runs faster)."""
    assert wait_for(lambda: any(t < time.time() - 0.5 for t, _ in feeder.statuses()), timeout=5)
    stamp, status = [(t, st) for t, st in feeder.statuses() if t < time.time() - 0.5][-1]
    reported = float(status_values(status)["command_rate_hz"])
    with feeder.lock:
        sources = np.array([s for _, s in feeder.commands_info])
    sources = sources[sources <= stamp]
    if reported == 0.0:
        assert len(sources) < 2 or stamp - sources[-1] > 0.9, (stamp - sources[-1], len(sources))
        return
    ends = [len(sources) - k for k in range(10) if len(sources) - k >= 2]
    windows = [sources[max(0, end - 200):end] for end in ends]  # the node keeps the last 200 (all, if fewer)
    assert windows, f"/diagnostics reports {reported} commands/s from {len(sources)} published commands"
    floors = [(len(w) - 1) / (w[-1] - w[0]) for w in windows]
    ceilings = [1.0 / float(np.median(np.diff(w))) for w in windows]
    assert min(floors) * (1 - rel) <= reported <= max(ceilings) * (1 + rel), (reported, floors, ceilings)


def jpeg_claiming(height: int, width: int) -> bytes:
    """A small valid JPEG whose frame header (SOF0) claims ``height`` x ``width``: a corrupt header."""
    from turbopi_ros.ros.conversions import rgb_to_compressed
    from turbopi_ros.tools.fake_robot import pattern

    data = bytearray(rgb_to_compressed(pattern(16, 16, 0.0, 0), "jpeg").data)
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 7] = height.to_bytes(2, "big")
    data[sof + 7:sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


def node_params(path: Path = DEMO_PARAMS, node: str = "turbopi_node") -> dict:
    return yaml.safe_load(path.read_text())[f"/**/{node}"]["ros__parameters"]


# ROS domains this process holds: each is claimed with a lock file kept until the process exits, so no other test
# process on the machine (a parallel run, a flake_check) takes it meanwhile, and this process never reuses one.
_DOMAIN_LOCKS: Dict[int, object] = {}
# Fast DDS's ports for domain d start at 7400 + 250 d: 1-101 and 215-232 stay clear of Linux's ephemeral ports
TEST_DOMAINS = tuple(range(1, 102)) + tuple(range(215, 233))


def free_ros_domain() -> int:
    """A ROS_DOMAIN_ID that no other test process holds and this one has not used yet (see _DOMAIN_LOCKS)."""
    folder = Path(tempfile.gettempdir()) / "turbopi_ros_test_domains"
    folder.mkdir(exist_ok=True)
    for domain in random.sample(TEST_DOMAINS, len(TEST_DOMAINS)):
        if domain in _DOMAIN_LOCKS:
            continue
        lock = open(folder / f"{domain}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another test process holds it
            lock.close()
            continue
        _DOMAIN_LOCKS[domain] = lock
        return domain
    raise RuntimeError("no free ROS domain in 1-101 or 215-232: too many test processes at once on this machine")


def processes_with_env(name: str, value: str) -> Dict[int, str]:
    """pid -> command line of the live processes (not this one, not zombies) whose environment has name=value."""
    found = {}
    marker = f"{name}={value}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


@contextlib.contextmanager
def rclpy_in_this_process():
    """rclpy initialised in this process on a ROS domain of its own (a module's in-process node tests), shut down
    after."""
    import rclpy

    isolate_ros_domain()
    rclpy.init()
    try:
        yield
    finally:
        rclpy.try_shutdown()


def isolate_ros_domain() -> int:
    """A domain of its own (free_ros_domain) for this test module, localhost-only discovery; set before rclpy.init and
    inherited by subprocesses."""
    domain = free_ros_domain()
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    return domain


class NodeProcess:
    """``python -m turbopi_ros.node --ros-args --params-file ...`` with its output kept in a log file."""

    def __init__(self, params_file: Path, log_path: Path, extra_args: Optional[List[str]] = None,
                 env: Optional[Dict[str, str]] = None):
        self.log_path = log_path
        self._log = open(log_path, "w")
        cmd = [sys.executable, "-m", "turbopi_ros.node", "--ros-args", "--params-file", str(params_file)]
        self.proc = subprocess.Popen(cmd + (extra_args or []), stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=str(REPO), env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def interrupt(self, signals=(signal.SIGINT, signal.SIGINT), gap_s: float = 0.05) -> float:
        """Send ``signals`` ``gap_s`` apart (a Ctrl-C under ros2 launch: the terminal's SIGINT, then launch's), wait
        for the exit; returns the seconds from the first signal to the exit (a test failure after 30 s)."""
        import pytest

        t0 = time.monotonic()
        for i, sig in enumerate(signals):
            if i:
                time.sleep(gap_s)
            if self.alive():
                self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail("the node did not exit within 30 s of the signals:\n" + self.log())
        return time.monotonic() - t0

    def assert_clean_exit(self, elapsed: float) -> None:
        """assert_clean_exit() of this node's exit and log."""
        assert_clean_exit(self.proc.returncode, self.log(), elapsed)

    def stop(self) -> int:
        if self.alive():
            self.proc.send_signal(2)  # SIGINT: the node's clean shutdown path
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@contextlib.contextmanager
def node_session(log_dir: Path, min_chunks: int = 2, timeout: float = 90.0, sim_clock: Optional[tuple] = None,
                 latched_prompt: Optional[str] = None, overrides: Optional[dict] = None, joint_rate_hz: float = 50.0,
                 env: Optional[Dict[str, str]] = None):
    """rclpy up in this process, a feeder/collector node spinning, turbopi_node started as a subprocess with the
    demo YAML; yields (feeder, node) once ``min_chunks`` chunks arrived (0: at once); on exit checks the node ends
    cleanly. ``sim_clock=(start_s, rate)``: the feeder publishes /clock from ``start_s`` at ``rate`` x real time and
    stamps its messages with it; both it and the node run with use_sim_time. ``latched_prompt``: published on ~/prompt
    (transient local) before the node starts. ``overrides``: node parameters over the demo YAML (``-p name:=value``);
    ``joint_rate_hz``: how often the feeder publishes joint states; ``env``: extra environment of the node."""
    import pytest
    import rclpy

    from turbopi_ros.ros import ros_compat

    isolate_ros_domain()
    rclpy.init()
    feeder = make_test_node(node_params(), sim_clock, joint_rate_hz)
    executor, spinner = spin_in_background(feeder)
    if latched_prompt is not None:
        feeder.publish_prompt(latched_prompt)
    extra = ["-p", "use_sim_time:=true"] if sim_clock else []
    for name, value in (overrides or {}).items():
        extra += ["-p", f"{name}:={value}"]
    node = NodeProcess(DEMO_PARAMS, log_dir / "turbopi_node.log", extra, env)
    try:
        if not wait_for(lambda: feeder.count(feeder.chunks) >= min_chunks or not node.alive(), timeout=timeout):
            pytest.fail(f"no action chunks within {timeout:g} s; node log:\n" + node.log())
        assert node.alive(), node.log()
        yield feeder, node
    finally:
        rc = node.stop()
        executor.shutdown()
        spinner.join(timeout=5)  # a timer callback still publishing would meet destroyed publishers
        feeder.destroy_node()
        ros_compat.try_shutdown()  # as rclpy 9 does: SIGTERM ends this process again (rclpy 7)
    assert rc == 0, f"node exited with {rc}:\n{node.log()}"


def wait_for(predicate: Callable[[], bool], timeout: float, period: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return predicate()


def make_test_node(params: dict, sim_clock: Optional[tuple] = None, joint_rate_hz: float = 50.0, feed: bool = True):
    """A node that feeds the demo's inputs (two cameras, joint states) and records the turbopi_node outputs
    (``feed=False``: records only, e.g. beside fake_robot). With ``sim_clock=(start_s, rate)`` it also publishes /clock
    (see ``node_session``) and runs on it. ``commands_info`` holds each command's (arrival monotonic, rmw source
    timestamp in s); ``last_stamp`` the stamp (s) last published per input ("joints" or a camera slot).

    ``feeder.faults`` switches inputs bad, e.g. {"base_0_rgb_encoding": "16UC1"}; the keys (``<camera>_...`` per
    camera slot, ``joints_...`` / ``..._joint`` for the joint states):
        <camera>_encoding  <camera>_truncate (bytes cut)  <camera>_size (w, h)  <camera>_step  <camera>_data (bytes)
        <camera>_format ("png": a PNG CompressedImage)  <camera>_silent (publishes nothing)
        <input>_age (s; negative: ahead)  <input>_zero_stamp      (input: a camera slot or "joints")
        moving_joints (not a fault: every joint position sweeps [-1, 1], a sine over time)
        frozen_stamps (every input republished with the stamp it last had: a driver repeating its last measurement)
        drop_joint  nan_joint  inf_joint  duplicate_joint  joints_no_names  joints_extra_position  joints_silent
        joint_at ((name, position): that joint's position, instead of 0.1 x its index)
        split_joint (a joint's name: published in a message of its own after the others', as a gripper's driver beside
        an arm's; not a fault)  split_joint_silent (that message no longer sent)
    ``feeder.jump_clock(s)`` moves the simulated clock (``sim_clock`` sessions) by ``s`` seconds, e.g. back.
    """
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.clock import Clock, ClockType
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rosgraph_msgs.msg import Clock as ClockMsg
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image, JointState
    from std_msgs.msg import Float64MultiArray, String
    from trajectory_msgs.msg import JointTrajectory

    from turbopi_ros.ros.conversions import rgb_to_compressed, rgb_to_image
    from turbopi_ros.tools.fake_robot import pattern

    class Feeder(Node):
        def __init__(self):
            overrides = [Parameter("use_sim_time", Parameter.Type.BOOL, True)] if sim_clock else []
            super().__init__("test_feeder", parameter_overrides=overrides)
            if sim_clock:
                self.sim_start, self.sim_rate = sim_clock
                self.wall_start = time.monotonic()
                self.clock_pub = self.create_publisher(ClockMsg, "/clock", 10)
                self.create_timer(0.005, self._publish_clock, clock=Clock(clock_type=ClockType.STEADY_TIME))
            self.params = params
            self.faults: Dict[str, object] = {}
            self._large: Dict[tuple, object] = {}
            self.lock = threading.Lock()
            self.chunks: List[tuple] = []  # (receive monotonic, msg)
            self.commands: List[tuple] = []
            self.diagnostics: List[tuple] = []
            self.joint_times: List[float] = []  # monotonic time of each joint state published: the rate really sent
            self.joint_stamps: List[float] = []  # and its header stamp (s): a split joint's message not counted
            self.commands_info: List[tuple] = []
            self.chunks_info: List[tuple] = []  # (arrival monotonic, rmw source timestamp in s: when published, msg)
            self.last_stamp: Dict[str, float] = {}
            self.sent_stamps: Dict[str, collections.deque] = {}  # per input: the stamps (s) of what was sent
            self._last_msg_stamp: Dict[str, object] = {}
            topics, compressed = params["cameras.topics"], params["cameras.compressed"]
            self.cameras = [(name, self.create_publisher(CompressedImage if c else Image, t, qos_profile_sensor_data),
                             c) for name, t, c in zip(params["cameras.names"], topics, compressed)]
            self.joint_pub = self.create_publisher(JointState, params["joint_states.topic"], qos_profile_sensor_data)
            latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
            self.prompt_pub = self.create_publisher(String, "/turbopi_node/prompt", latched)
            self.create_subscription(JointTrajectory, "/turbopi_node/action_chunk", self._on_chunk, 10)
            self.create_subscription(Float64MultiArray, "/turbopi_node/joint_command", self._on_command, 50)
            self.create_subscription(DiagnosticArray, "/diagnostics", self._record(self.diagnostics), 10)
            # Joint states from their own thread at absolute deadlines: an executor timer in this busy process (it
            # also takes every command and chunk) falls behind at a few hundred Hz.
            self.joint_period = 1.0 / joint_rate_hz / (sim_clock[1] if sim_clock else 1.0)  # joint_rate_hz on its clock
            self.running = feed
            self.joint_thread = threading.Thread(target=self._joint_loop, daemon=True)
            if feed:
                self.create_timer(1 / 10.0, self._publish_images)
                self.joint_thread.start()

        def sim_now(self) -> float:
            return self.sim_start + self.sim_rate * (time.monotonic() - self.wall_start)

        def _publish_clock(self):
            t = self.sim_now()
            msg = ClockMsg()
            msg.clock.sec = int(t)
            msg.clock.nanosec = int((t - int(t)) * 1e9)
            self.clock_pub.publish(msg)

        def _record(self, store):
            def callback(msg):
                with self.lock:
                    store.append((time.monotonic(), msg))
            return callback

        def _on_chunk(self, msg, info):
            t = time.monotonic()
            with self.lock:
                self.chunks.append((t, msg))
                self.chunks_info.append((t, info["source_timestamp"] * 1e-9, msg))

        def _on_command(self, msg, info):
            t = time.monotonic()
            with self.lock:
                self.commands.append((t, msg))
                self.commands_info.append((t, info["source_timestamp"] * 1e-9))

        def _stamp(self, name: str):
            """Now, or ``faults[name + "_age"]`` seconds ago, or zero with ``faults[name + "_zero_stamp"]``."""
            from builtin_interfaces.msg import Time

            if self.faults.get(f"{name}_zero_stamp"):
                return Time()
            if self.faults.get("frozen_stamps") and name in self._last_msg_stamp:
                return self._last_msg_stamp[name]
            now = self.get_clock().now()
            age = float(self.faults.get(f"{name}_age", 0.0))
            stamp = (now - rclpy_duration(age)).to_msg() if age else now.to_msg()
            self.last_stamp[name] = stamp.sec + stamp.nanosec * 1e-9
            self._last_msg_stamp[name] = stamp
            with self.lock:
                self.sent_stamps.setdefault(name, collections.deque(maxlen=5000)).append(self.last_stamp[name])
            return stamp

        def longest_gap(self, name: str, t0: float, t1: float) -> float:
            """The longest time (s) in [t0, t1] (stamps, the system clock) in which this feeder sent no ``name`` input
            ("joints" or a camera slot): what a loaded machine did to the inputs themselves."""
            with self.lock:
                stamps = [s for s in self.sent_stamps.get(name, ()) if t0 <= s <= t1]
            points = [t0] + stamps + [t1]
            return max(b - a for a, b in zip(points, points[1:]))

        def _publish_images(self):
            t = time.monotonic()
            for i, (name, pub, is_compressed) in enumerate(self.cameras):
                if self.faults.get(f"{name}_silent"):
                    continue
                msg = self._image(name, i, is_compressed, t)
                msg.header.stamp = self._stamp(name)
                pub.publish(msg)

        def _joint_loop(self):
            """Joint states on a fixed grid of ``joint_period``, as a robot's fixed-rate driver publishes them: a slot
            this thread wakes too late for (more than half a period) is skipped, never made up in a burst, so the
            intervals sent are whole periods and their median the period (bursts of catch-up messages would make the
            median interval sent shorter than the period, and the node's newest-only queue would drop them)."""
            next_t = time.monotonic()
            while self.running:
                next_t += self.joint_period
                now = time.monotonic()
                if now - next_t > 0.5 * self.joint_period:
                    next_t += math.ceil((now - next_t) / self.joint_period) * self.joint_period
                delay = next_t - now
                if delay > 0:
                    time.sleep(delay)
                try:
                    self._publish_joints()
                except Exception:  # noqa: BLE001 - the node is being destroyed
                    return

        def destroy_node(self):
            self.running = False
            if self.joint_thread.ident is not None:
                self.joint_thread.join(timeout=5)
            super().destroy_node()

        def _image(self, name: str, i: int, is_compressed: bool, t: float):
            """A 160x120 frame of the moving pattern (raw rgb8 or JPEG), with this camera's faults applied."""
            f = {k[len(name) + 1:]: v for k, v in self.faults.items() if k.startswith(name + "_")}
            width, height = f.get("size", (160, 120))
            if width * height == 0:
                msg = CompressedImage(format="jpeg") if is_compressed else Image(encoding="rgb8")
            elif (width, height) != (160, 120):
                msg = self.large_image((width, height), is_compressed)
            else:
                rgb = pattern(160, 120, t, i)
                msg = rgb_to_compressed(rgb, f.get("format", "jpeg")) if is_compressed else rgb_to_image(rgb, "rgb8")
            if f.get("encoding"):
                msg.encoding = str(f["encoding"])
            if f.get("step") is not None:
                msg.step = int(f["step"])
            if f.get("truncate"):
                msg.data = bytes(msg.data)[:-int(f["truncate"])]
            if f.get("data") is not None:
                msg.data = bytes(f["data"])
            return msg

        def large_image(self, size, is_compressed):
            """The same still frame of ``size`` each time (making a 4K frame takes longer than the publish period)."""
            if self._large.get((size, is_compressed)) is None:
                rgb = pattern(size[0], size[1], 0.0, 0)
                self._large[(size, is_compressed)] = rgb_to_compressed(rgb) if is_compressed else rgb_to_image(rgb)
            cached = self._large[(size, is_compressed)]
            if is_compressed:
                return CompressedImage(format=cached.format, data=cached.data)
            return Image(height=cached.height, width=cached.width, encoding=cached.encoding, step=cached.step,
                         data=cached.data)

        def _publish_joints(self):
            if self.faults.get("joints_silent"):
                return
            names = list(self.params["state.joints"]) + ["conveyor"]
            positions = [0.1 * i for i in range(len(names))]
            if self.faults.get("moving_joints"):  # every joint sweeps [-1, 1] (pi0.5's state text changes length)
                positions = [float(np.sin(1.3 * time.monotonic() + i)) for i in range(len(names))]
            if self.faults.get("drop_joint"):
                idx = names.index(self.faults["drop_joint"])
                names.pop(idx)
                positions.pop(idx)
            if self.faults.get("joint_at"):  # (name, position): that joint observed elsewhere
                name, value = self.faults["joint_at"]
                positions[names.index(name)] = float(value)
            for key, value in (("nan_joint", float("nan")), ("inf_joint", float("inf"))):
                if self.faults.get(key):
                    positions[names.index(self.faults[key])] = value
            if self.faults.get("duplicate_joint"):  # the joint again, with another position, at the end
                names.append(self.faults["duplicate_joint"])
                positions.append(-1.0)
            if self.faults.get("joints_no_names"):
                names = []
            if self.faults.get("joints_extra_position"):
                positions.append(0.5)
            split = self.faults.get("split_joint")
            if split:  # that joint alone, after the others, at -0.3
                positions.pop(names.index(split))
                names.remove(split)
            msg = JointState(name=names, position=positions)
            msg.header.stamp = self._stamp("joints")
            self.joint_pub.publish(msg)
            if split and not self.faults.get("split_joint_silent"):
                part = JointState(name=[split], position=[-0.3])
                part.header.stamp = self._stamp("joints")
                self.joint_pub.publish(part)
            with self.lock:
                self.joint_times.append(time.monotonic())
                self.joint_stamps.append(stamp_of(msg))

        def jump_clock(self, seconds: float) -> None:
            """Move the simulated clock by ``seconds`` (negative: back in time) from now on."""
            self.sim_start += seconds

        def publish_prompt(self, text: str):
            self.prompt_pub.publish(String(data=text))

        def count(self, store) -> int:
            with self.lock:
                return len(store)

        def since(self, store, t0: float) -> list:
            with self.lock:
                return [(t, m) for t, m in store if t >= t0]

        def statuses(self, name: str = "turbopi_node: policy") -> list:
            """(header stamp in s, status) of every status named ``name`` received, in order."""
            with self.lock:
                return [(stamp_of(msg), s) for _, msg in self.diagnostics for s in msg.status if s.name == name]

        def latest_status(self, name: str = "turbopi_node: policy"):
            with self.lock:
                for _, msg in reversed(self.diagnostics):
                    for status in msg.status:
                        if status.name == name:
                            return status
            return None

    return Feeder()


def rclpy_duration(seconds: float):
    from rclpy.duration import Duration

    return Duration(nanoseconds=int(seconds * 1e9))


def level(status) -> int:
    """DiagnosticStatus.level as an int (rclpy gives a one-byte bytes object)."""
    return status.level[0] if isinstance(status.level, (bytes, bytearray)) else int(status.level)


def reported(feeder, key: str) -> tuple:
    """(the status's stamp, ``key``'s value) from the newest /diagnostics policy status that has ``key``."""
    def newest():
        found = [(stamp, status_values(s)) for stamp, s in feeder.statuses()]
        found = [(stamp, v[key]) for stamp, v in found if key in v]
        return found[-1] if found else None
    assert wait_for(lambda: newest() is not None, timeout=5), f"no /diagnostics status with {key}"
    stamp, value = newest()
    return stamp, float(value)


def joint_states_rate_sent(feeder, until: float, count: int = 100) -> float:
    """1 / the median interval of the last ``count`` joint states the feeder stamped by ``until`` (the system clock):
    the window a node measured over (its last 100 stamps, turbopi_ros/ros/node_status.py) when it reported at
    ``until``. Not the newest ``count``: the feeder's rate drifts on a loaded machine (one run reported 231 Hz over
    the window before its report, and the newest 100 came at 250 Hz)."""
    with feeder.lock:
        stamps = [s for s in feeder.joint_stamps if s <= until][-count:]
    return median_rate(stamps)


def median_rate(times) -> float:
    """1 / the median positive interval of ``times``, as the node measures a rate (turbopi_ros/ros/rates.py)."""
    intervals = np.diff(np.asarray(times))
    return 1.0 / float(np.median(intervals[intervals > 0]))


def status_values(status) -> Dict[str, str]:
    """A status's values by key; {} for None (no status received yet), so wait_for predicates keep waiting."""
    return {} if status is None else {kv.key: kv.value for kv in status.values}


def spin_in_background(node):
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor()  # see turbopi_ros/ros/spin.py for why not the MultiThreadedExecutor
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    return executor, thread


def trajectory_times(msg) -> np.ndarray:
    return np.array([p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points])


def stamp_of(msg) -> float:
    """A message's header stamp in seconds."""
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def expect_rejected_then_recovered(feeder, node, faults: dict, expected, restore=None, bad_since=None):
    """Switch ``faults`` on: no chunk computed from an observation after the switch may arrive; the problem
    (``expected``: a string, or a compiled regex) must be named in the log and on /diagnostics. Then switch them off
    (and ``restore()``, also when the test fails, so the next test starts from good input) and expect chunks and an OK
    status again. ``bad_since``: when the input turned bad (the system clock, as the feeder stamps), if not now. The
    bad-input contract of test_node_bad_input.py and test_node_max_jump.py."""
    def named(text: str) -> bool:
        return bool(expected.search(text)) if isinstance(expected, re.Pattern) else expected in text

    assert wait_for(lambda: feeder.count(feeder.chunks) > 0, timeout=30)
    bad_since = time.time() if bad_since is None else bad_since
    feeder.faults.update(faults)
    t_bad = time.monotonic()
    try:
        assert wait_for(lambda: named(node.log()), timeout=10), node.log()[-3000:]
        time.sleep(1.0)
        t_settled = time.monotonic()
        assert wait_for(lambda: (feeder.latest_status() is not None and level(feeder.latest_status()) == 2  # ERROR
                                 and named(feeder.latest_status().message)), timeout=5), \
            feeder.latest_status()
        time.sleep(1.5)
        # a chunk is named by its observation's stamp (its newest input's): one stamped after the switch came from
        # bad input. An inference that started on good input before the switch may still finish (on a loaded
        # machine, seconds later): its chunk is stamped before the switch.
        leaked = [(t, msg) for t, msg in feeder.since(feeder.chunks, t_settled)
                  if stamp_of(msg) >= bad_since]
        assert leaked == [], f"{len(leaked)} chunks computed from bad input ({expected})"
        assert node.alive(), node.log()
    finally:
        for key in faults:
            feeder.faults.pop(key, None)
        if restore:
            restore()
    t_good = time.monotonic()
    assert wait_for(lambda: len(feeder.since(feeder.chunks, t_good)) >= 2, timeout=30), node.log()[-3000:]
    assert wait_for(lambda: level(feeder.latest_status()) == 0, timeout=5), feeder.latest_status().message
    assert "recovered" in node.log()
    return t_bad
