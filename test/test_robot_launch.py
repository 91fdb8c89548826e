"""`ros2 launch turbopi_ros turbopi.launch.py`: a params_file that does not exist stops the launch before anything
starts, and a node that cannot start takes the launch down with its error visible (no launch carrying on with a dead
node). Runs where launch and launch_ros are installed and the package is built (colcon test, or launch_test by hand);
skipped in the pip-only venv of CI."""
import asyncio
import os
import threading

import pytest

launch = pytest.importorskip("launch")
pytest.importorskip("launch_ros")
ament_index = pytest.importorskip("ament_index_python.packages")

from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402

from ros_helpers import isolate_ros_domain, node_params  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
LAUNCH_FILE = os.path.join(HERE, "..", "launch", "turbopi.launch.py")


@pytest.fixture(autouse=True)
def installed():
    try:
        ament_index.get_package_prefix("turbopi_ros")
    except ament_index.PackageNotFoundError:
        pytest.skip("turbopi_ros is not installed in an ament prefix (colcon build, then source install/setup.bash)")
    isolate_ros_domain()


def _run(arguments: dict, timeout_s: float = 60.0):
    """Run the launch file; returns (return code, seconds). Fails the test if it is still running after timeout."""
    import time

    service = launch.LaunchService()
    service.include_launch_description(launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(LAUNCH_FILE), launch_arguments=list(arguments.items())))
    timer = threading.Timer(timeout_s, lambda: service.shutdown())
    timer.start()
    t0 = time.monotonic()
    try:
        code = service.run(shutdown_when_idle=True)
    finally:
        timer.cancel()
        asyncio.set_event_loop(asyncio.new_event_loop())
    elapsed = time.monotonic() - t0
    assert elapsed < timeout_s - 1, "the launch kept running"
    return code, elapsed


def test_missing_params_file_stops_the_launch(capfd):
    code, _ = _run({"params_file": "/nonexistent/my_robot.yaml"})
    out = capfd.readouterr()
    assert code != 0
    assert "does not exist" in out.out + out.err


def test_a_node_that_cannot_start_shuts_the_launch_down(tmp_path, capfd):
    import yaml

    params = dict(node_params(), **{"model.checkpoint": ""})
    path = tmp_path / "no_checkpoint.yaml"
    path.write_text(yaml.safe_dump({"/**/turbopi_node": {"ros__parameters": params}}))
    code, elapsed = _run({"params_file": str(path)})
    out = capfd.readouterr()
    assert "cannot start: parameter model.checkpoint is not set" in out.out + out.err
