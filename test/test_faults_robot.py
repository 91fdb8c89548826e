"""The robot's process dies (SIGKILL: no goodbye on the ROS graph) and comes back, twice: turbopi_node (a subprocess
with config/demo_tiny.yaml) keeps running, stops the commands within max_observation_age_s + one period of the death,
says on /diagnostics which input went stale, and recovers by itself each time fake_robot is back."""
import os
import signal
import subprocess
import sys
import time

import pytest

rclpy = pytest.importorskip("rclpy")

from ros_helpers import DEMO_PARAMS, REPO, NodeProcess, isolate_ros_domain, level, make_test_node, node_params, \
    spin_in_background, wait_for  # noqa: E402

PARAMS = node_params()
PERIOD_S = 1.0 / PARAMS["control_rate_hz"]  # command_rate_hz 0 follows fake_robot's 50 Hz joint states
MAX_AGE_S = PARAMS["max_observation_age_s"]


def start_robot(log_path):
    log = open(log_path, "a")
    return subprocess.Popen([sys.executable, "-m", "turbopi_ros.tools.fake_robot", "--ros-args", "--params-file",
                             str(DEMO_PARAMS)], stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO),
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("robot")
    isolate_ros_domain()
    rclpy.init()
    collector = make_test_node(PARAMS, feed=False)
    executor, _ = spin_in_background(collector)
    robot = start_robot(tmp / "fake_robot.log")
    node = NodeProcess(DEMO_PARAMS, tmp / "turbopi_node.log")
    robots = [robot]
    try:
        assert wait_for(lambda: collector.count(collector.chunks) >= 2 or not node.alive(), timeout=90), node.log()
        yield collector, node, robots, tmp
    finally:
        rc = node.stop()
        for r in robots:
            if r.poll() is None:
                r.send_signal(signal.SIGINT)
                r.wait(timeout=30)
        executor.shutdown()
        collector.destroy_node()
        rclpy.try_shutdown()
    assert rc == 0, node.log()


def test_robot_killed_and_restarted(system):
    collector, node, robots, tmp = system
    for round_ in range(2):
        killed = time.time()
        robots[-1].send_signal(signal.SIGKILL)
        robots[-1].wait(timeout=10)
        assert wait_for(lambda: (collector.latest_status() is not None and level(collector.latest_status()) == 2
                                 and "newest message is" in collector.latest_status().message), timeout=5), \
            (round_, collector.latest_status())
        time.sleep(0.5)
        with collector.lock:
            late = [s - killed for _, s in collector.commands_info if s > killed + MAX_AGE_S + PERIOD_S]
        assert late == [], f"round {round_}: commands up to {max(late):.3f} s after fake_robot was killed"
        assert node.alive(), node.log()
        robots.append(start_robot(tmp / "fake_robot.log"))
        back = time.monotonic()
        assert wait_for(lambda: len(collector.since(collector.chunks, back)) >= 2, timeout=30), node.log()[-3000:]
        assert wait_for(lambda: len(collector.since(collector.commands, back)) >= 10, timeout=10), node.log()[-3000:]
        assert wait_for(lambda: level(collector.latest_status()) == 0, timeout=5), collector.latest_status()
    log = node.log()
    assert log.count("recovered: chunks flowing again") >= 2, log[-3000:]
    assert "Traceback" not in log and "terminate called" not in log, log
