"""Shared pytest fixtures.

Tests that need the openpi reference fixtures in ``../shared`` skip where it is absent (a user's clone).
CI always has it: ``.ci/run`` sets ``TURBOPI_REQUIRE_SHARED=1`` and then a missing ``../shared`` is a failure.
Tests in ROS-facing modules (test/ros_facing.py says which) are marked ``ros``: .ci/run runs ``-m ros`` on Jazzy too.
"""
import os
import signal
import time
from pathlib import Path

import pytest

from ros_facing import is_ros_facing
from ros_helpers import free_ros_domain, processes_with_env

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("TURBOPI_SHARED_DIR", REPO_ROOT.parent / "shared"))
OPENPI_FIXTURES = SHARED_DIR / "fixtures" / "openpi"
SESSION_ENV = "TURBOPI_TEST_SESSION"  # marks every process this test run starts (the leftover check)


def pytest_configure(config):
    config.addinivalue_line("markers", "ros: uses rclpy or ROS messages, directly or through this package (applied "
                                       "from the imports by test/ros_facing.py); .ci/run also runs these on Jazzy")
    config.addinivalue_line("markers", "one_distro: a minute-long run of a tool over the node, whose ROS calls the "
                                       "shorter tests make on both distros: .ci/run runs it in the Kilted pass only "
                                       "(the 20-minute CI budget)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if is_ros_facing(item.path):
            item.add_marker(pytest.mark.ros)


def pytest_sessionstart(session):
    """Marks this run's processes (SESSION_ENV, inherited by every process a test starts) and gives the run a ROS
    domain of its own (test modules that start nodes take another each, ros_helpers.isolate_ros_domain). CI
    (.ci/run sets TURBOPI_REQUIRE_ROS=1): a venv without a working rclpy, or with another distro than
    TURBOPI_ROS_DISTRO, fails the run here rather than skipping every ROS test and passing."""
    os.environ[SESSION_ENV] = f"{os.getpid()}-{time.time_ns()}"
    os.environ["ROS_DOMAIN_ID"] = str(free_ros_domain())
    if os.environ.get("TURBOPI_REQUIRE_ROS", "") in ("", "0", "false"):
        return
    from turbopi_ros.ros.ros_compat import ros_distro

    try:
        import rclpy  # noqa: F401
    except ImportError as e:
        pytest.exit(f"TURBOPI_REQUIRE_ROS is set but rclpy does not import: {e}", returncode=1)
    asked = os.environ.get("TURBOPI_ROS_DISTRO")
    if asked and ros_distro() != asked:
        pytest.exit(f"TURBOPI_ROS_DISTRO={asked} but rclpy here is {ros_distro()}", returncode=1)


def pytest_sessionfinish(session, exitstatus):
    """No test leaves a process behind (a node, fake_robot, a demo): any process still carrying this run's mark 5 s
    after the last test is listed, killed, and fails the run."""
    token = os.environ.get(SESSION_ENV)
    deadline = time.monotonic() + 5.0
    left = processes_with_env(SESSION_ENV, token)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = processes_with_env(SESSION_ENV, token)
    if not left:
        return
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = "\n".join(f"  {pid}: {cmd}" for pid, cmd in left.items())
    if reporter is not None:
        reporter.write_line(f"\nERROR: {len(left)} process(es) started by the tests still ran after them (killed):\n"
                            f"{lines}", red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_report_header(config):
    from turbopi_ros.ros.ros_compat import header

    return header().strip("= ")


def _require_shared() -> bool:
    return os.environ.get("TURBOPI_REQUIRE_SHARED", "") not in ("", "0", "false")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        msg = f"{SHARED_DIR} not found: the openpi reference fixtures live there (CI always has it)"
        if _require_shared():
            pytest.fail(msg + "; TURBOPI_REQUIRE_SHARED is set, so this is a failure")
        pytest.skip(msg)
    return SHARED_DIR


def _fixtures(path: Path, what: str) -> Path:
    """``path`` if it is a folder; else a skip, or a failure where TURBOPI_REQUIRE_SHARED is set (CI)."""
    if not path.is_dir():
        msg = f"{path} not found: {what}"
        if _require_shared():
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def openpi_fixtures(shared_dir) -> Path:
    return _fixtures(shared_dir / "fixtures" / "openpi", "the openpi reference fixtures")


@pytest.fixture(scope="session")
def openpi_policy_fixtures(shared_dir) -> Path:
    """The end-to-end openpi Policy cases (raw robot inputs -> final actions) with their JSON sidecars."""
    return _fixtures(shared_dir / "fixtures" / "openpi_policy", "the openpi end-to-end policy fixtures")
