"""The command-line tools on arguments and files a user gets wrong: each mistake is refused with one line naming the
argument and exit 2 (argparse's usage error, or the tool's 'unusable input'), before any long run, never a traceback,
a hang or a silent success."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from turbopi_ros.tools import bench, bench_preprocess, costmodel, verify

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")


def _code(main, argv) -> int:
    """main's exit status, whether it returns it or argparse raises SystemExit."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _must_not_run(*_args, **_kwargs):
    raise AssertionError("the arguments should have been refused before anything ran")


def _run(args, timeout=60.0):
    return subprocess.run([sys.executable, "-m", *args], env=ENV, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


# --- turbopi-verify ------------------------------------------------------------------------------------------------
def test_verify_refuses_a_device_it_cannot_use(openpi_fixtures, capsys):
    """--device cuda on a machine without CUDA (or a typo) is unusable input: exit 2 and a line naming --device, not
    a traceback and exit 1, which means 'outside tolerance'."""
    case = ["--config", str(openpi_fixtures / "pi0_tiny.json"), "--weights",
            str(openpi_fixtures / "pi0_tiny.safetensors"), "--case", str(openpi_fixtures / "pi0_case_a.npz")]
    devices = ["gpu0"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in devices:
        assert verify.main(case + ["--device", device]) == 2
        err = capsys.readouterr().err
        assert err.startswith("turbopi-verify: --device") and device in err, err


# --- a config that is not a JSON text (verify, bench, costmodel read it with model/config.py) ------------------------
def test_a_config_that_is_not_json_text_is_named(openpi_fixtures, tmp_path, capsys):
    """The case npz or the weights given as --config: the message names the file (it said only "'utf-8' codec can't
    decode byte 0xb8 in position 16"); a directory where the JSON should be: exit 2, not IsADirectoryError."""
    binary = openpi_fixtures / "pi0_case_a.npz"
    assert costmodel.main(["--config", str(binary)]) == 2
    err = capsys.readouterr().err
    assert str(binary) in err and "not a JSON text" in err, err
    folder = tmp_path / "config.json"
    folder.mkdir()
    assert _code(costmodel.main, ["--config", str(folder)]) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and "Traceback" not in err, err


# --- turbopi-bench ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [["--iters", "0"], ["--warmup", "-1"], ["--threads", "-1"]],
                         ids=lambda a: " ".join(a))
def test_bench_refuses_counts_out_of_range(bad, monkeypatch, capsys):
    monkeypatch.setattr(bench, "run", _must_not_run)
    assert _code(bench.main, ["--preset", "tiny", "--views", "1"] + bad) == 2
    assert bad[0] in capsys.readouterr().err


def test_bench_refuses_a_json_path_in_a_missing_folder_before_running(tmp_path, monkeypatch, capsys):
    """The results were lost after the whole run (minutes on a GPU) to FileNotFoundError."""
    monkeypatch.setattr(bench, "run", _must_not_run)
    out = tmp_path / "no_such_folder" / "bench.json"
    assert _code(bench.main, ["--preset", "tiny", "--views", "1", "--json", str(out)]) == 2
    assert "--json" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["gpu0", "cuda:7"])
def test_bench_refuses_a_device_it_cannot_use(device, monkeypatch, capsys):
    monkeypatch.setattr(bench, "run", _must_not_run)
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    assert _code(bench.main, ["--preset", "tiny", "--views", "1", "--device", device]) == 2
    err = capsys.readouterr().err
    assert f"--device {device}: " in err and "Traceback" not in err, err


def test_bench_roofline_with_json_is_not_a_silent_success(tmp_path, capsys):
    """--roofline runs nothing and exits: with --json it said nothing, wrote nothing and exited 0."""
    out = tmp_path / "roofline.json"
    code = _code(bench.main, ["--preset", "tiny", "--views", "1", "--roofline", "--json", str(out)])
    assert code == 2 or (code == 0 and out.is_file()), code


# --- turbopi-bench-preprocess ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [["--warmup", "-1"], ["--observations", "0"], ["--preset", "pi00"],
                                 ["--json", "no_such_folder/prep.json"]], ids=lambda a: " ".join(a))
def test_bench_preprocess_refuses_bad_arguments_before_running(bad, monkeypatch, capsys):
    monkeypatch.setattr(bench_preprocess, "run", _must_not_run)
    assert _code(bench_preprocess.main, ["--cameras", "1", "--width", "96", "--height", "72", "--iters", "2"]
                 + bad) == 2
    assert bad[0] in capsys.readouterr().err


# --- turbopi-exec-bench ----------------------------------------------------------------------------------------------
def test_exec_bench_refuses_bad_arguments_before_starting_anything(tmp_path, monkeypatch, capsys):
    pytest.importorskip("rclpy")
    from turbopi_ros.tools import execution_bench

    monkeypatch.setattr(execution_bench, "rtc_denoise_cost", _must_not_run)
    monkeypatch.setattr(execution_bench, "record", _must_not_run)
    robot_only = tmp_path / "robot_only.yaml"  # fake_robot's section only: nothing for turbopi_node (was KeyError)
    robot_only.write_text("/**/fake_robot:\n  ros__parameters:\n    camera.rate_hz: 10.0\n")
    for bad in (["--params-file", str(tmp_path / "missing.yaml")], ["--params-file", str(robot_only)],
                ["--duration", "0"], ["--duration", "-5"], ["--json", str(tmp_path / "nodir" / "x.json")],
                ["--png", str(tmp_path / "nodir" / "x.png")]):
        assert _code(execution_bench.main, ["--modes", "none"] + bad) == 2, bad
        err = capsys.readouterr().err
        assert bad[0] in err and "Traceback" not in err, (bad, err)
    # a section rcl applies to the node other than '/**/turbopi_node' is read as the node reads it (was KeyError)
    plain = tmp_path / "plain_section.yaml"
    plain.write_text("turbopi_node:\n  ros__parameters:\n    model: {checkpoint: random, seed: 3}\n")
    params = execution_bench.node_parameters(plain)
    assert params["model.seed"] == 3 and params["control_rate_hz"] > 0


# --- turbopi-demo ----------------------------------------------------------------------------------------------------
def test_demo_record_into_a_missing_folder_or_with_a_bad_params_file_is_a_usage_error(tmp_path):
    missing_dir = _run(["turbopi_ros.tools.demo", "--duration", "1", "--record", str(tmp_path / "nodir" / "x.mcap")])
    assert missing_dir.returncode == 2 and "--record" in missing_dir.stderr, missing_dir.stderr
    assert "Traceback" not in missing_dir.stderr
    bad_params = _run(["turbopi_ros.tools.demo", "--duration", "1", "--record", str(tmp_path / "x.mcap"),
                       "--params-file", str(tmp_path / "missing.yaml")])
    assert bad_params.returncode == 2 and "Traceback" not in bad_params.stderr, bad_params.stderr
    assert "--params-file" in bad_params.stderr


# --- turbopi-replay --------------------------------------------------------------------------------------------------
def test_replay_refuses_period_with_at_recorded_chunks(tmp_path, capsys):
    """--at-recorded-chunks observes at the recorded chunks' stamps: a --period beside it was ignored without a
    word (and written into report.json's period_s as if used)."""
    pytest.importorskip("rosbags")
    from test_replay import params_for, write_bag
    from turbopi_ros.tools import replay

    bag = tmp_path / "short.mcap"
    write_bag(bag, duration=1.0)
    out = tmp_path / "out"
    assert _code(replay.main, [str(bag), "--params-file", str(params_for(tmp_path)), "--out", str(out),
                               "--period", "0.5", "--at-recorded-chunks"]) == 2
    assert "--period" in capsys.readouterr().err and not out.exists()


# --- the nodes' --help -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["turbopi_ros.tools.fake_robot", "turbopi_ros.node"])
def test_a_node_help_prints_its_parameters_and_exits(module):
    """fake_robot --help started publishing fake cameras and /joint_states and never returned; turbopi_node --help
    said 'cannot start: parameter model.checkpoint is not set' and exit 1."""
    pytest.importorskip("rclpy")
    try:
        out = _run([module, "--help"], timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{module} --help did not return in 60 s")
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout and "--ros-args" in out.stdout, out.stdout
    name = "camera.rate_hz" if "fake_robot" in module else "model.checkpoint"
    assert name in out.stdout, out.stdout
