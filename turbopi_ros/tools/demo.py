"""turbopi-demo: fake_robot + turbopi_node on the tiny model, with live status and a summary.

Both nodes run as their own processes with config/demo_tiny.yaml (as `ros2 launch turbopi_ros demo.launch.py` would
start them); this process listens to /diagnostics, ~/action_chunk and ~/joint_command and prints what it sees.
    turbopi-demo [--duration 20] [--params-file config/demo_tiny.yaml]      (--duration 0: until Ctrl-C)
    turbopi-demo --record demo.mcap      also records the node's inputs and outputs, for turbopi-replay

With --record, the nodes start one after the other so that the recording is complete (recorder.py): fake_robot, then
turbopi_node once every input is being recorded, started with autostart false and enabled (~/enable) once the
recorder has discovered its outputs.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

from . import processes

STAGES = ("preprocess", "vision", "prefix_cache", "denoise", "postprocess")
PIPELINE = {"engine": "the engine's run (model stages, and any --engine-delay)",
            "observation_to_chunk": "inputs taken -> chunk published",
            "observation_wait": "inputs taken -> the engine starts on them (preparing, waiting for the engine)",
            "observation_wait_max": "the longest such wait (max over the run)",
            "prepared_wait": "the observation prepared -> the engine starts on it (sat ready, waiting for the engine)",
            "latency": "sensor stamp -> chunk published (adds the inputs' age)"}


class Monitor:
    """Collects what the node publishes."""

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from std_msgs.msg import Float64MultiArray
        from trajectory_msgs.msg import JointTrajectory

        from ..ros.node_status import STATUS_NAME

        self.status_name = STATUS_NAME
        self.node = rclpy.create_node("turbopi_demo_monitor")
        self.lock = threading.Lock()
        self.chunk_times: List[float] = []
        self.command_times: List[float] = []
        self.status: Optional[Dict[str, str]] = None
        self.message = ""
        self.node.create_subscription(JointTrajectory, processes.CHUNK_TOPIC,
                                      lambda m: self._stamp(self.chunk_times), 10)
        self.node.create_subscription(Float64MultiArray, processes.COMMAND_TOPIC,
                                      lambda m: self._stamp(self.command_times), 50)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _stamp(self, store: List[float]) -> None:
        with self.lock:
            store.append(time.monotonic())

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name == self.status_name:
                with self.lock:
                    self.status = {kv.key: kv.value for kv in status.values}
                    self.message = status.message

    def snapshot(self, window: float = 3.0):
        now = time.monotonic()
        with self.lock:
            chunks = [t for t in self.chunk_times if t > now - window]
            commands = [t for t in self.command_times if t > now - window]
            return (len(chunks) / window, len(commands) / window, dict(self.status or {}), self.message,
                    len(self.chunk_times), len(self.command_times))


def _line(chunk_rate: float, command_rate: float, status: Dict[str, str], message: str) -> str:
    stages = " ".join(f"{s} {float(status[s + '_ms']):6.1f}" for s in STAGES if s + "_ms" in status)
    stages = stages or "waiting for the first chunk"
    return f"chunks {chunk_rate:5.2f}/s  commands {command_rate:5.1f}/s  |  ms: {stages}  |  {message}"


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _arguments(argv):
    parser = argparse.ArgumentParser(prog="turbopi-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds to run (0 = until Ctrl-C)")
    parser.add_argument("--params-file", default=None, help="parameters for both nodes (default: demo_tiny.yaml)")
    parser.add_argument("--engine-delay", type=float, default=0.0,
                        help="seconds added to every inference (test-only fault injection: a stand-in for a GPU's "
                             "inference time, to see the pipelining hide the CPU work)")
    parser.add_argument("--record", metavar="OUT.mcap", default=None,
                        help="record the node's inputs and outputs to this MCAP file (for turbopi-replay)")
    args = parser.parse_args(argv)
    if args.record and (not args.record.endswith(".mcap") or os.path.exists(args.record)):
        parser.error(f"--record {args.record}: expected a new .mcap file")
    if args.record and not os.path.isdir(os.path.dirname(os.path.abspath(args.record))):
        parser.error(f"--record {args.record}: its folder does not exist")
    return args


def _node_environment(engine_delay: float) -> Dict[str, str]:
    """The nodes' environment: a ROS domain of their own on this host, unbuffered output, the engine delay."""
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if engine_delay > 0:
        import json
        import tempfile

        faults = Path(tempfile.mkdtemp(prefix="turbopi-demo-")) / "faults.json"
        faults.write_text(json.dumps({"delay_s": engine_delay}))
        env["TURBOPI_TEST_FAULTS"] = str(faults)
    return env


class Summary:
    """The node's rates and stage latencies, from its /diagnostics once it runs steadily (two chunks, 5 s in)."""

    def __init__(self):
        self.latencies: Dict[str, List[float]] = {s: [] for s in STAGES + ("total",) + tuple(PIPELINE)}
        self.chunk_rates: List[float] = []
        self.command_rates: List[float] = []

    def add(self, chunk_rate: float, command_rate: float, status: Dict[str, str]) -> None:
        self.chunk_rates.append(chunk_rate)
        self.command_rates.append(command_rate)
        for s in self.latencies:
            if s + "_ms" in status:
                self.latencies[s].append(float(status[s + "_ms"]))

    def print(self) -> None:
        if not self.chunk_rates:
            return
        med = sorted(self.chunk_rates)[len(self.chunk_rates) // 2]
        cmd = sorted(self.command_rates)[len(self.command_rates) // 2]
        print(f"chunk rate (measured, median of 3 s windows): {med:.2f} chunks/s; command stream {cmd:.1f} Hz")
        for s, values in self.latencies.items():
            if values:  # each value: a median of the node's last 20 chunks (a maximum, for *_max)
                worst = s.endswith("_max")
                value = max(values) if worst else sorted(values)[len(values) // 2]
                print(f"  {s:<20} {value:7.1f} ms ({'max' if worst else 'median'})"
                      + (f"  {PIPELINE[s]}" if s in PIPELINE else ""))


def _watch(monitor: "Monitor", procs, duration: float, summary: Summary, t0: float) -> None:
    """A status line a second until ``duration`` (0: until Ctrl-C) or a node exits."""
    while duration <= 0 or time.monotonic() - t0 < duration:
        time.sleep(1.0)
        if any(p.poll() is not None for p in procs):
            print("turbopi-demo: a node exited early", file=sys.stderr)
            return
        chunk_rate, command_rate, status, message, n_chunks, _ = monitor.snapshot()
        print(f"[{time.monotonic() - t0:5.1f} s] " + _line(chunk_rate, command_rate, status, message), flush=True)
        if n_chunks >= 2 and time.monotonic() - t0 > 5.0:
            summary.add(chunk_rate, command_rate, status)


RECORD_WAIT_S = 120.0  # each step of a recorded start (the node loads its model in 3-4 s on 2 cores, more if busy)
ENABLE_SERVICE = "/turbopi_node/enable"


def _start_recorded(params: Path, env: Dict[str, str], recorder, client_node, procs: list) -> None:
    """fake_robot; once the recorder writes each of its topics, turbopi_node with autostart false; once the recorder
    has discovered the node's outputs, ~/enable. Appends each process to ``procs`` as it starts (the caller stops
    them); RuntimeError when a step does not happen."""
    from std_srvs.srv import SetBool

    procs.append(processes.start(processes.FAKE_ROBOT, params, env))
    recorder.wait_for_inputs(RECORD_WAIT_S, alive=lambda: procs[0].poll() is None)
    procs.append(processes.start(processes.NODE, params, env, args=("-p", "autostart:=false")))
    recorder.wait_for_outputs(RECORD_WAIT_S, alive=lambda: procs[1].poll() is None)
    client = client_node.create_client(SetBool, ENABLE_SERVICE)
    deadline = time.monotonic() + RECORD_WAIT_S
    while not client.wait_for_service(timeout_sec=0.5):
        if procs[1].poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"turbopi_node's {ENABLE_SERVICE} service did not appear")
    done = threading.Event()
    future = client.call_async(SetBool.Request(data=True))
    future.add_done_callback(lambda _: done.set())
    if not done.wait(RECORD_WAIT_S) or not future.result().success:
        raise RuntimeError(f"turbopi_node's {ENABLE_SERVICE} did not answer")


def main(argv=None) -> int:
    args = _arguments(argv)
    params = Path(args.params_file) if args.params_file else processes.config_file("demo_tiny.yaml")
    topics = None
    if args.record:
        from ..ros.params_file import load
        from .recorder import node_topics

        try:
            topics = node_topics(load(params))
        except ValueError as e:  # the nodes would refuse it too: say so before starting anything
            print(f"turbopi-demo: {e}", file=sys.stderr)
            return 2
    env = _node_environment(args.engine_delay)

    print(f"turbopi-demo: fake_robot + turbopi_node with {params} (ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}), "
          f"{'until Ctrl-C' if args.duration <= 0 else f'{args.duration:g} s'}", flush=True)
    ros = processes.BackgroundExecutor(name="demo_monitor")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    monitor = Monitor()
    ros.add(monitor.node)
    recorder = None
    if args.record:
        from .recorder import BagRecorder

        recorder = BagRecorder(Path(args.record), topics)
        ros.add(recorder)
    summary, interrupted, failed, procs, t0 = Summary(), False, None, [], time.monotonic()
    try:
        if recorder is None:
            procs += [processes.start(processes.NODE, params, env), processes.start(processes.FAKE_ROBOT, params, env)]
        else:
            _start_recorded(params, env, recorder, monitor.node, procs)
        _watch(monitor, procs, args.duration, summary, t0)
    except KeyboardInterrupt:
        interrupted = True
    except RuntimeError as e:  # a recorded start that did not happen
        failed = str(e)
    finally:
        processes.stop(procs, timeout=10)
        if recorder is not None:
            counts = recorder.close()
            print(f"recorded {sum(counts.values())} messages to {args.record}: " +
                  ", ".join(f"{t} {n}" for t, n in counts.items()), flush=True)
        ros.shutdown()

    if failed:
        print(f"turbopi-demo: {failed}", file=sys.stderr)
        return 1
    _, _, _, message, n_chunks, n_commands = monitor.snapshot()
    print("\n== summary ==")
    print(f"ran {time.monotonic() - t0:.1f} s{' (interrupted)' if interrupted else ''}: {n_chunks} action chunks, "
          f"{n_commands} joint commands")
    summary.print()
    if n_chunks == 0:
        print("no action chunks arrived: see the node's log above", file=sys.stderr)
    return 0 if n_chunks > 0 or interrupted else 1


if __name__ == "__main__":
    sys.exit(main())
