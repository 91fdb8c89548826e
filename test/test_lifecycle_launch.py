"""`ros2 launch turbopi_ros turbopi.launch.py managed:=true`: a managed turbopi_node driven through every transition
by its lifecycle services, nothing published outside active, and Ctrl-C ends the launch with 0 from unconfigured,
inactive, active and finalized. Runs where launch and launch_ros are installed and the package is built (colcon
test, or pytest in a sourced workspace); skipped in the pip-only venv of CI."""
import os
import signal
import subprocess
import sys
import time

import pytest

launch = pytest.importorskip("launch")
pytest.importorskip("launch_ros")
pytest.importorskip("lifecycle_msgs")
ament_index = pytest.importorskip("ament_index_python.packages")

from ros_helpers import (DEMO_PARAMS, isolate_ros_domain, make_test_node, node_params,  # noqa: E402
                         spin_in_background, wait_for)
from lifecycle_helpers import LAUNCH_FILE, RUN_LAUNCH, Lifecycle  # noqa: E402

GRACE_S = 0.2  # messages already in flight when a transition returns


@pytest.fixture(scope="module")
def ros():
    import rclpy

    try:
        ament_index.get_package_prefix("turbopi_ros")
    except ament_index.PackageNotFoundError:
        pytest.skip("turbopi_ros is not installed in an ament prefix (colcon build, then source install/setup.bash)")
    isolate_ros_domain()
    rclpy.init()
    feeder = make_test_node(node_params())
    executor, _ = spin_in_background(feeder)
    yield feeder, Lifecycle(feeder)
    executor.shutdown()
    feeder.destroy_node()
    rclpy.try_shutdown()


class Launch:
    def __init__(self, log_path):
        self.log = open(log_path, "w+")
        self.proc = subprocess.Popen([sys.executable, "-c", RUN_LAUNCH, LAUNCH_FILE, f"params_file:={DEMO_PARAMS}",
                                      "managed:=true"], stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def output(self) -> str:
        if self.log.closed:
            return self.text
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def ctrl_c(self) -> int:
        """SIGINT to the process group, as a terminal's Ctrl-C; the exit code."""
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.text = self.output()
            self.log.close()


def _published(feeder, t0: float) -> int:
    return len(feeder.since(feeder.chunks, t0)) + len(feeder.since(feeder.commands, t0))


def test_every_transition_under_launch(ros, tmp_path):
    feeder, lifecycle = ros
    run = Launch(tmp_path / "launch.log")
    try:
        assert lifecycle.ready(), run.output()
        assert lifecycle.state() == "unconfigured"
        t0 = time.monotonic()
        assert lifecycle.set("configure") and lifecycle.state() == "inactive", run.output()
        time.sleep(1.0)
        assert _published(feeder, t0) == 0
        t_on = time.monotonic()
        assert lifecycle.set("activate") and lifecycle.state() == "active", run.output()
        assert wait_for(lambda: len(feeder.since(feeder.chunks, t_on)) >= 2 and
                        len(feeder.since(feeder.commands, t_on)) >= 10, timeout=60), run.output()
        assert lifecycle.set("deactivate") and lifecycle.state() == "inactive", run.output()
        t_off = time.monotonic()
        time.sleep(1.0)
        assert _published(feeder, t_off + GRACE_S) == 0
        assert lifecycle.set("cleanup") and lifecycle.state() == "unconfigured", run.output()
        assert lifecycle.set("shutdown") and lifecycle.state() == "finalized", run.output()
    finally:
        code = run.ctrl_c()
    assert code == 0, run.output()


@pytest.mark.parametrize("transitions", [[], ["configure"], ["configure", "activate"]],
                         ids=["unconfigured", "inactive", "active"])
def test_ctrl_c_from_any_state_exits_0(ros, tmp_path, transitions):
    feeder, lifecycle = ros
    run = Launch(tmp_path / "launch.log")
    try:
        assert lifecycle.ready(), run.output()
        for transition in transitions:
            assert lifecycle.set(transition), run.output()
    finally:
        code = run.ctrl_c()
    assert code == 0, run.output()
