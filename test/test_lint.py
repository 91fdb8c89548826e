"""The linter (ruff, configured in ruff.toml: pycodestyle, pyflakes, 120 columns) over the package, the tests and the
launch files. Skipped where ruff is not installed (a colcon workspace), unless TURBOPI_REQUIRE_LINT is set (CI)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _ruff():
    exe = Path(sys.executable).with_name("ruff")
    if exe.is_file():
        return [str(exe)]
    if shutil.which("ruff"):
        return ["ruff"]
    if os.environ.get("TURBOPI_REQUIRE_LINT", "") not in ("", "0", "false"):
        pytest.fail("ruff is not installed and TURBOPI_REQUIRE_LINT is set (requirements.txt pins it)")
    pytest.skip("ruff is not installed (requirements.txt pins it for the venv)")


def test_ruff_finds_nothing():
    out = subprocess.run(_ruff() + ["check", "--no-cache", "--output-format", "concise", "."], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_would_catch_a_long_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("x = " + "1 + " * 40 + "1\n")
    out = subprocess.run(_ruff() + ["check", "--no-cache", "--config", str(REPO / "ruff.toml"), str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "E501" in out.stdout, out.stdout + out.stderr
