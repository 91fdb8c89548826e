"""turbopi-demo: fake_robot + turbopi_node on the tiny model, with live status and a summary.

Both nodes run as their own processes with config/demo_tiny.yaml (as `ros2 launch turbopi_ros demo.launch.py` would
start them); this process listens to /diagnostics, ~/action_chunk and ~/joint_command and prints what it sees.
    turbopi-demo [--duration 20] [--params-file config/demo_tiny.yaml]      (--duration 0: until Ctrl-C)
    turbopi-demo --record demo.mcap      also records the node's inputs and outputs, for turbopi-replay
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

STAGES = ("preprocess", "vision", "prefix_cache", "denoise", "postprocess")


def config_file(name: str) -> Path:
    """A file of this package's config/: the ament share directory, the venv's share/, or the source tree."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("turbopi_ros")) / "config" / name)
    except Exception:  # noqa: BLE001 - not installed through colcon: look further
        pass
    candidates += [Path(sys.prefix) / "share" / "turbopi_ros" / "config" / name,
                   Path(__file__).resolve().parents[1] / "config" / name]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"config/{name} not found (looked in {[str(c) for c in candidates]})")


class Monitor:
    """Collects what the node publishes."""

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from std_msgs.msg import Float64MultiArray
        from trajectory_msgs.msg import JointTrajectory

        self.node = rclpy.create_node("turbopi_demo_monitor")
        self.lock = threading.Lock()
        self.chunk_times: List[float] = []
        self.command_times: List[float] = []
        self.status: Optional[Dict[str, str]] = None
        self.message = ""
        self.node.create_subscription(JointTrajectory, "/turbopi_node/action_chunk",
                                      lambda m: self._stamp(self.chunk_times), 10)
        self.node.create_subscription(Float64MultiArray, "/turbopi_node/joint_command",
                                      lambda m: self._stamp(self.command_times), 50)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _stamp(self, store: List[float]) -> None:
        with self.lock:
            store.append(time.monotonic())

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name == "turbopi_node: policy":
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="turbopi-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds to run (0 = until Ctrl-C)")
    parser.add_argument("--params-file", default=None, help="parameters for both nodes (default: demo_tiny.yaml)")
    parser.add_argument("--record", metavar="OUT.mcap", default=None,
                        help="record the node's inputs and outputs to this MCAP file (for turbopi-replay)")
    args = parser.parse_args(argv)
    params = Path(args.params_file) if args.params_file else config_file("demo_tiny.yaml")
    if args.record and (not args.record.endswith(".mcap") or os.path.exists(args.record)):
        parser.error(f"--record {args.record}: expected a new .mcap file")
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    print(f"turbopi-demo: fake_robot + turbopi_node with {params} (ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}), "
          f"{'until Ctrl-C' if args.duration <= 0 else f'{args.duration:g} s'}", flush=True)
    # Ctrl-C / SIGTERM must reach this loop (which stops both nodes), not just shut this process's ROS context down.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    monitor = Monitor()
    executor = SingleThreadedExecutor()
    executor.add_node(monitor.node)
    recorder = None
    if args.record:
        from .params_file import load
        from .recorder import BagRecorder, node_topics

        recorder = BagRecorder(Path(args.record), node_topics(load(params)))
        executor.add_node(recorder)
    def spin():
        try:
            executor.spin()
        except ExternalShutdownException:
            pass

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    # the nodes start once this process listens (and records: the node's first chunk must be in the recording)
    procs = []
    for module in ("turbopi_ros.node", "turbopi_ros.fake_robot"):
        procs.append(subprocess.Popen([sys.executable, "-m", module, "--ros-args", "--params-file", str(params),
                                       "--log-level", "warn"], env=env))
    t0 = time.monotonic()
    latencies: Dict[str, List[float]] = {s: [] for s in STAGES + ("total",)}
    chunk_rates: List[float] = []
    command_rates: List[float] = []
    interrupted = False
    try:
        while args.duration <= 0 or time.monotonic() - t0 < args.duration:
            time.sleep(1.0)
            if any(p.poll() is not None for p in procs):
                print("turbopi-demo: a node exited early", file=sys.stderr)
                break
            chunk_rate, command_rate, status, message, n_chunks, _ = monitor.snapshot()
            print(f"[{time.monotonic() - t0:5.1f} s] " + _line(chunk_rate, command_rate, status, message), flush=True)
            if n_chunks >= 2 and time.monotonic() - t0 > 5.0:
                chunk_rates.append(chunk_rate)
                command_rates.append(command_rate)
                for s in latencies:
                    if s + "_ms" in status:
                        latencies[s].append(float(status[s + "_ms"]))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if recorder is not None:
            counts = recorder.close()
            print(f"recorded {sum(counts.values())} messages to {args.record}: " +
                  ", ".join(f"{t} {n}" for t, n in counts.items()), flush=True)
        rclpy.try_shutdown()  # wakes the spinning executor; then it can be joined
        spinner.join(timeout=5)

    _, _, _, message, n_chunks, n_commands = monitor.snapshot()
    print("\n== summary ==")
    print(f"ran {time.monotonic() - t0:.1f} s{' (interrupted)' if interrupted else ''}: {n_chunks} action chunks, "
          f"{n_commands} joint commands")
    if chunk_rates:
        med = sorted(chunk_rates)[len(chunk_rates) // 2]
        cmd = sorted(command_rates)[len(command_rates) // 2]
        print(f"chunk rate (measured, median of 3 s windows): {med:.2f} chunks/s; command stream {cmd:.1f} Hz")
        for s in STAGES + ("total",):
            if latencies[s]:
                print(f"  {s:<13} {sorted(latencies[s])[len(latencies[s]) // 2]:7.1f} ms (median)")
    ok = n_chunks > 0
    if not ok:
        print("no action chunks arrived: see the node's log above", file=sys.stderr)
    return 0 if ok or interrupted else 1


if __name__ == "__main__":
    sys.exit(main())
