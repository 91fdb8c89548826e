"""`ros2 launch turbopi_ros turbopi.launch.py` with action groups (group_helpers.GROUPS): two arm controllers'
subscribers and a gripper one each receive only their joints, their chunks carry the same stamps, each command stream
runs at its rate; Ctrl-C ends the launch with 0. Runs where launch and launch_ros are installed and the package is
built (colcon test, or pytest in a sourced workspace); skipped in the pip-only venv of CI."""
import os
import signal
import subprocess
import sys
import time

import pytest

launch = pytest.importorskip("launch")
pytest.importorskip("launch_ros")
ament_index = pytest.importorskip("ament_index_python.packages")

from group_helpers import (GROUPS, Recorder, check_command_rates, check_group_trajectories,  # noqa: E402
                           group_params)
from lifecycle_helpers import LAUNCH_FILE, RUN_LAUNCH  # noqa: E402
from ros_helpers import (isolate_ros_domain, make_test_node, node_params, spin_in_background, wait_for,  # noqa: E402
                         wait_for_chunk_cover)

@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    import rclpy
    import yaml

    try:
        ament_index.get_package_prefix("turbopi_ros")
    except ament_index.PackageNotFoundError:
        pytest.skip("turbopi_ros is not installed in an ament prefix (colcon build, then source install/setup.bash)")
    isolate_ros_domain()
    tmp = tmp_path_factory.mktemp("groups_launch")
    params = dict(node_params(), **group_params())
    path = tmp / "groups.yaml"
    path.write_text(yaml.safe_dump({"/**/turbopi_node": {"ros__parameters": params}}))
    log = open(tmp / "launch.log", "w+")
    proc = subprocess.Popen([sys.executable, "-c", RUN_LAUNCH, LAUNCH_FILE, f"params_file:={path}"], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    rclpy.init()
    feeder = make_test_node(node_params())
    recorder = Recorder(feeder)
    executor, _ = spin_in_background(feeder)

    def output() -> str:
        log.flush()
        log.seek(0)
        return log.read()

    try:
        assert wait_for(lambda: all(len(recorder.trajectories[g]) >= 3 for g in GROUPS) or proc.poll() is not None,
                        timeout=120), output()
        assert proc.poll() is None, output()
        yield feeder, recorder, proc, output
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        executor.shutdown()
        feeder.destroy_node()
        rclpy.try_shutdown()
        log.close()


def test_each_controller_gets_its_joints_in_a_trajectory_it_can_follow(launched):
    feeder, recorder, _, _ = launched
    check_group_trajectories(feeder, recorder)


def test_each_command_stream_runs_at_its_rate(launched):
    feeder, recorder, _, _ = launched
    t0 = time.monotonic() + 0.5
    seconds = wait_for_chunk_cover(lambda: feeder.since(feeder.chunks, 0.0), t0, 4.0)
    check_command_rates(recorder, t0, seconds, feeder.since(feeder.chunks, 0.0))
    assert feeder.since(feeder.commands, 0.0) == [], "with groups, ~/joint_command is not published"


def test_ctrl_c_ends_the_launch_with_0(launched):
    _, _, proc, output = launched
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal signals the whole foreground process group
    assert proc.wait(timeout=30) == 0, output()
