"""The harness the tools that run the node share (demo, soak, execution_bench): turbopi_node and fake_robot as child
processes, the package's config files, and the tool's own ROS executor; and a tool's measuring child process that
reports one JSON line (startup_bench, compile_start)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

NODE, FAKE_ROBOT = "turbopi_ros.node", "turbopi_ros.tools.fake_robot"
# the node's outputs under its default name, turbopi_node (the tools start it, or watch one started so)
CHUNK_TOPIC, COMMAND_TOPIC = "/turbopi_node/action_chunk", "/turbopi_node/joint_command"


def config_file(name: str) -> Path:
    """A file of this package's config/: the ament share directory, the venv's share/, or the source tree."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("turbopi_ros")) / "config" / name)
    except Exception:  # noqa: BLE001 - not installed through colcon: look further
        pass
    candidates += [Path(sys.prefix) / "share" / "turbopi_ros" / "config" / name,
                   Path(__file__).resolve().parents[2] / "config" / name]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"config/{name} not found (looked in {[str(c) for c in candidates]})")


def start(module: str, params_file: Path, env: Optional[Dict[str, str]] = None, args: Sequence[str] = (),
          log_level: str = "warn", **popen) -> subprocess.Popen:
    """``python -m <module> --ros-args --params-file <params_file> --log-level <log_level> <args>``."""
    return subprocess.Popen([sys.executable, "-m", module, "--ros-args", "--params-file", str(params_file),
                             "--log-level", log_level, *args], env=env, **popen)


def run_reporting(cmd: Sequence[str], mark: str, what: str, timeout_s: float, env: Optional[Dict[str, str]] = None,
                  cwd: Optional[Path] = None) -> Dict[str, object]:
    """Run ``cmd`` to its end and return the JSON object of the last line it printed that starts with ``mark``, with
    ``process_s`` added (the process's whole wall time). A failed process, or one that printed no such line, is a
    RuntimeError naming ``what`` with the tail of its output."""
    t0 = time.perf_counter()
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout_s, env=env, cwd=cwd)
    process_s = time.perf_counter() - t0
    lines = [line for line in proc.stdout.splitlines() if line.startswith(mark)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{what} exited with {proc.returncode}: {' | '.join(tail)}")
    result = json.loads(lines[-1][len(mark):])
    result["process_s"] = process_s
    return result


def stop(procs: List[subprocess.Popen], timeout: float = 15.0) -> None:
    """SIGINT (the nodes' clean shutdown), then SIGKILL for any still running after ``timeout`` seconds."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class BackgroundExecutor:
    """This tool's own ROS side: rclpy initialised without its signal handlers (Ctrl-C and SIGTERM must reach the
    tool's loop, which stops the nodes it started, not just shut this process's ROS context down) and a single-threaded
    executor spinning ``nodes`` on a thread of its own."""

    def __init__(self, *nodes, name: str = "tool_executor"):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
        self.executor = SingleThreadedExecutor()
        self.nodes = list(nodes)
        for node in self.nodes:
            self.executor.add_node(node)
        self._thread = threading.Thread(target=self._spin, name=name, daemon=True)
        self._thread.start()

    def add(self, node) -> None:
        self.nodes.append(node)
        self.executor.add_node(node)

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def shutdown(self) -> None:
        import rclpy

        self.executor.shutdown()
        for node in self.nodes:
            node.destroy_node()
        rclpy.try_shutdown()
        self._thread.join(timeout=5)
