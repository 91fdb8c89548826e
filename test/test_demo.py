"""The README's main job: `python -m turbopi_ros.tools.demo` (fake_robot + turbopi_node on the tiny model) prints live
status and, when stopped, a summary with the measured chunk rate and stage latencies; both nodes end with it."""
import os
import re
import time
from pathlib import Path

import pytest

pytest.importorskip("rclpy")

from ros_helpers import demo_process, free_ros_domain  # noqa: E402

STAGES = ("preprocess", "vision", "prefix_cache", "denoise", "postprocess", "total")


def test_demo_until_stopped_prints_rates_and_latencies():
    env = dict(os.environ, ROS_DOMAIN_ID=str(free_ros_domain()), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               PYTHONUNBUFFERED="1")
    status = re.compile(r"\[\s*(\d+\.\d) s\] chunks\s+(\d+\.\d+)/s\s+commands\s+(\d+\.\d)/s\s+\|\s+ms: preprocess")
    with demo_process(["--duration", "0"], env) as demo:
        # live status with measured stage latencies, for a few seconds after the first chunks (the summary's window)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and demo.proc.poll() is None:
            live = [m for m in map(status.search, list(demo.lines)) if m and float(m.group(2)) > 0]
            if len(live) >= 3 and float(live[-1].group(1)) > 6.0:
                break
            time.sleep(0.2)
        else:
            pytest.fail("no live status with chunks:\n" + demo.output())
        out = demo.stop()
    assert "== summary ==" in out and "(interrupted)" in out, out
    rate = re.search(r"chunk rate \(measured, median of 3 s windows\): (\d+\.\d+) chunks/s; command stream "
                     r"(\d+\.\d) Hz", out)
    assert rate and float(rate.group(1)) > 0 and float(rate.group(2)) > 0, out
    for stage in STAGES:
        assert re.search(rf"^\s+{stage}\s+\d+\.\d ms \(median\)$", out, re.M), (stage, out)
    # both nodes went with it (they are in the demo's session, started fresh for this test)
    assert wait_for_no_session(demo.proc.pid), "the demo's nodes were left running"


def wait_for_no_session(sid: int, timeout: float = 10.0) -> bool:
    """No live (non-zombie) process in session ``sid``: /proc/<pid>/stat field 6 is the session id."""
    def members():
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(stat.parent.name)
        return found

    deadline = time.monotonic() + timeout
    while members() and time.monotonic() < deadline:
        time.sleep(0.2)
    return not members()
