"""Shared pytest fixtures.

Tests that need the openpi reference fixtures in ``../shared`` skip where it is absent (a user's clone).
CI always has it: ``.ci/run`` sets ``TURBOPI_REQUIRE_SHARED=1`` and then a missing ``../shared`` is a failure.
"""
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("TURBOPI_SHARED_DIR", REPO_ROOT.parent / "shared"))
OPENPI_FIXTURES = SHARED_DIR / "fixtures" / "openpi"


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
