"""Parity with openpi's own PyTorch reference: the shared fixtures define correct (tolerance 1e-4)."""
import subprocess
import sys

import pytest
import torch

from turbopi_ros.tools import verify
from turbopi_ros.model.checkpoint import load_model

CASES = ["pi0", "pi05"]


@pytest.mark.parametrize("path", ["fast", "reference"])
@pytest.mark.parametrize("name", CASES)
def test_verify_cli_within_tolerance(openpi_fixtures, name, path, capsys):
    rc = verify.main(["--config", str(openpi_fixtures / f"{name}_tiny.json"),
                      "--weights", str(openpi_fixtures / f"{name}_tiny.safetensors"),
                      "--case", str(openpi_fixtures / f"{name}_case_a.npz"), "--path", path])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("max_abs_err=")
    assert float(last.split("=")[1]) <= 1e-4
    assert rc == 0


def test_verify_fails_when_the_answer_is_wrong(openpi_fixtures, capsys):
    """The check can fail: pi0 weights against the pi0.5 case give a large error and exit 1."""
    rc = verify.main(["--config", str(openpi_fixtures / "pi0_tiny.json"),
                      "--weights", str(openpi_fixtures / "pi0_tiny.safetensors"),
                      "--case", str(openpi_fixtures / "pi05_case_a.npz")])
    err = float(capsys.readouterr().out.strip().splitlines()[-1].split("=")[1])
    assert rc == 1 and err > 1e-2


def test_verify_as_a_command(openpi_fixtures):
    out = subprocess.run([sys.executable, "-m", "turbopi_ros.tools.verify",
                          "--config", str(openpi_fixtures / "pi05_tiny.json"),
                          "--weights", str(openpi_fixtures / "pi05_tiny.safetensors"),
                          "--case", str(openpi_fixtures / "pi05_case_a.npz")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1].startswith("max_abs_err=")


@pytest.mark.parametrize("name", CASES)
def test_first_velocity_matches_openpi(openpi_fixtures, name):
    import numpy as np

    model = load_model(openpi_fixtures / f"{name}_tiny.safetensors", config=openpi_fixtures / f"{name}_tiny.json")
    case = verify.load_case(openpi_fixtures / f"{name}_case_a.npz")
    expected = torch.from_numpy(np.load(openpi_fixtures / f"{name}_case_a.npz")["first_velocity"])
    with torch.inference_mode():
        cache = model.encode(case["images"], case["image_masks"], case["tokens"], case["token_mask"], case["state"])
        v = model.velocity(cache, case["noise"], model.step_conditioning(case["num_steps"])[0])
    assert float((v[0] - expected).abs().max()) <= 1e-5


@pytest.mark.parametrize("name", CASES)
def test_masks_matter_in_the_fixture(openpi_fixtures, name):
    """Treating padding as valid moves the actions far beyond tolerance, so the parity above tests the masking."""
    model = load_model(openpi_fixtures / f"{name}_tiny.safetensors", config=openpi_fixtures / f"{name}_tiny.json")
    case = verify.load_case(openpi_fixtures / f"{name}_case_a.npz")
    case["image_masks"] = torch.ones_like(case["image_masks"])
    case["token_mask"] = torch.ones_like(case["token_mask"])
    err = float((verify.run_case(model, case, "fast") - case["actions"]).abs().max())
    assert err > 1e-2
