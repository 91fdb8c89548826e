"""Shared pytest fixtures.

Tests that need the openpi reference fixtures in ``../shared`` skip where it is absent (a user's clone).
CI always has it: ``.ci/run`` sets ``TURBOPI_REQUIRE_SHARED=1`` and then a missing ``../shared`` is a failure.
Tests in ROS-facing modules (test/ros_facing.py says which) are marked ``ros``: .ci/run runs ``-m ros`` on Jazzy too.
"""
import os
from pathlib import Path

import pytest

from ros_facing import is_ros_facing

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("TURBOPI_SHARED_DIR", REPO_ROOT.parent / "shared"))
OPENPI_FIXTURES = SHARED_DIR / "fixtures" / "openpi"


def pytest_configure(config):
    config.addinivalue_line("markers", "ros: uses rclpy or ROS messages, directly or through this package (applied "
                                       "from the imports by test/ros_facing.py); .ci/run also runs these on Jazzy")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if is_ros_facing(item.path):
            item.add_marker(pytest.mark.ros)


def pytest_sessionstart(session):
    """CI (.ci/run sets TURBOPI_REQUIRE_ROS=1): a venv without a working rclpy, or with another distro than
    TURBOPI_ROS_DISTRO, fails the run here rather than skipping every ROS test and passing."""
    if os.environ.get("TURBOPI_REQUIRE_ROS", "") in ("", "0", "false"):
        return
    from turbopi_ros.ros_compat import ros_distro

    try:
        import rclpy  # noqa: F401
    except ImportError as e:
        pytest.exit(f"TURBOPI_REQUIRE_ROS is set but rclpy does not import: {e}", returncode=1)
    asked = os.environ.get("TURBOPI_ROS_DISTRO")
    if asked and ros_distro() != asked:
        pytest.exit(f"TURBOPI_ROS_DISTRO={asked} but rclpy here is {ros_distro()}", returncode=1)


def pytest_report_header(config):
    from turbopi_ros.ros_compat import header

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


@pytest.fixture(scope="session")
def openpi_fixtures(shared_dir) -> Path:
    path = shared_dir / "fixtures" / "openpi"
    if not path.is_dir():
        msg = f"{path} not found: the openpi reference fixtures"
        if _require_shared():
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def openpi_policy_fixtures(shared_dir) -> Path:
    """The end-to-end openpi Policy cases (raw robot inputs -> final actions) with their JSON sidecars."""
    path = shared_dir / "fixtures" / "openpi_policy"
    if not path.is_dir():
        msg = f"{path} not found: the openpi end-to-end policy fixtures"
        if _require_shared():
            pytest.fail(msg)
        pytest.skip(msg)
    return path
