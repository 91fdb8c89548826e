"""`ros2 launch turbopi_ros turbopi.launch.py`: a params_file that does not exist stops the launch before anything
starts, and a node that cannot start takes the launch down with its error visible (no launch carrying on with a dead
node). Runs where launch and launch_ros are installed and the package is built (colcon test, or pytest in a sourced
workspace); skipped in the pip-only venv of CI."""
import os
import subprocess
import sys
import time

import pytest

launch = pytest.importorskip("launch")
pytest.importorskip("launch_ros")
ament_index = pytest.importorskip("ament_index_python.packages")

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


# The launch runs in a process of its own, as `ros2 launch` does: in this one, launch's logging would keep the stdout
# of whichever test first used it (launch_testing's tests run in the same pytest process under colcon test).
RUN_LAUNCH = """
import sys
import launch
from launch.launch_description_sources import PythonLaunchDescriptionSource

service = launch.LaunchService()
service.include_launch_description(launch.actions.IncludeLaunchDescription(
    PythonLaunchDescriptionSource(sys.argv[1]), launch_arguments=[a.split(":=", 1) for a in sys.argv[2:]]))
sys.exit(service.run(shutdown_when_idle=True))
"""


def _run(arguments: dict, timeout_s: float = 60.0):
    """Run the launch file; returns (return code, seconds, output). Fails the test if it is still running after
    timeout_s."""
    t0 = time.monotonic()
    try:
        run = subprocess.run([sys.executable, "-c", RUN_LAUNCH, LAUNCH_FILE] + [f"{k}:={v}" for k, v in
                                                                                 arguments.items()],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the launch kept running:\n{e.output}")
    return run.returncode, time.monotonic() - t0, run.stdout


def test_missing_params_file_stops_the_launch():
    code, _, out = _run({"params_file": "/nonexistent/my_robot.yaml"})
    assert code != 0
    assert "does not exist" in out, out


def test_a_node_that_cannot_start_shuts_the_launch_down(tmp_path):
    import yaml

    params = dict(node_params(), **{"model.checkpoint": ""})
    path = tmp_path / "no_checkpoint.yaml"
    path.write_text(yaml.safe_dump({"/**/turbopi_node": {"ros__parameters": params}}))
    code, elapsed, out = _run({"params_file": str(path)})
    assert "cannot start: parameter model.checkpoint is not set" in out, out
