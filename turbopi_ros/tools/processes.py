"""turbopi_node and fake_robot as child processes, for the demo and the benchmarks that close the loop."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

NODE, FAKE_ROBOT = "turbopi_ros.node", "turbopi_ros.tools.fake_robot"


def start(module: str, params_file: Path, env: Optional[Dict[str, str]] = None, args: Sequence[str] = (),
          log_level: str = "warn", **popen) -> subprocess.Popen:
    """``python -m <module> --ros-args --params-file <params_file> --log-level <log_level> <args>``."""
    return subprocess.Popen([sys.executable, "-m", module, "--ros-args", "--params-file", str(params_file),
                             "--log-level", log_level, *args], env=env, **popen)


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
