"""Safe defaults: nothing moves unless asked for. A node without a checkpoint, without action limits for every action
joint, or with a value that cannot work refuses to start, names the parameter and what to set, and exits 1 without a
traceback; so does a --params-file that does not exist, and a torch older than the package needs."""
import subprocess
import sys

import pytest
import yaml

from ros_helpers import DEMO_PARAMS, REPO, isolate_ros_domain, node_params, run_node_starts

pytest.importorskip("rclpy")


def _params_file(tmp_path, name, drop=(), **changes):
    params = {k: v for k, v in node_params().items() if k not in drop}
    params.update({k.replace("__", "."): v for k, v in changes.items()})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"/**/turbopi_node": {"ros__parameters": params}}))
    return path


CASES = {
    # name: (params-file builder or None, extra args, expected message)
    "no parameters at all": (None, [], "cannot start: parameter model.checkpoint is not set"),
    "empty checkpoint": (dict(model__checkpoint=""), [], "cannot start: parameter model.checkpoint is not set: "
                                                        "openpi PyTorch checkpoint directory"),
    "no lower limits": (dict(drop=("action.lower_limits",)), [], "cannot start: parameter action.lower_limits is not "
                                                                 "set"),
    "limits for fewer joints": (dict(action__upper_limits=[1.0, 1.0]), [],
                                "cannot start: parameter action.upper_limits has 2 entries for 7 action.joints"),
    "zero steps": (dict(model__num_steps=0), [], "cannot start: parameter model.num_steps"),
    "unknown dtype": (dict(model__dtype="float16"), [], "cannot start: parameter model.dtype: 'float16' is not one of"),
    "bad device": (dict(model__device="gpu"), [], "cannot start: parameter model.device: 'gpu' is not cpu, cuda or "
                                                  "cuda:N"),
    "negative rate": (dict(control_rate_hz=-5), [], "cannot start: parameter control_rate_hz"),
    "bad on_stale": (dict(on_stale="freeze"), [], "cannot start: parameter on_stale: 'freeze' is not one of"),
    "missing params file": ("missing", [], "cannot start: --params-file"),
    "unknown robot adapter": (dict(robot__adapter="ur5"), [], "cannot start: parameter robot.adapter: 'ur5' is not "
                                                              "one of ['none', 'aloha', 'droid', 'libero']"),
    "group joint not an action joint": (dict(action__groups=["arm", "hand"], action__group__arm__joints=["joint_1",
                                                                                                "elbow"],
                                             action__group__hand__joints=["gripper"]), [],
                                        "cannot start: parameter action.group.arm.joints: ['elbow'] are not in "
                                        "action.joints"),
    "joint in two groups": (dict(action__groups=["arm", "hand"], action__group__arm__joints=["joint_1", "gripper"],
                                 action__group__hand__joints=["gripper"]), [],
                            "cannot start: parameter action.group.hand.joints: joint 'gripper' is in group 'arm' "
                            "already"),
    "group parameter of an unlisted group": (dict(action__groups=["arm"], action__group__arm__joints=["joint_1"],
                                                  action__group__amr__joints=["joint_2"]), [],
                                             "cannot start: parameter action.group.amr.joints: no such group "
                                             "parameter"),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Start every case (each is a process that exits at start), a few at a time, and collect (code, output)."""
    tmp = tmp_path_factory.mktemp("startup")
    isolate_ros_domain()
    args = {}
    for name, (spec, extra, _) in CASES.items():
        if spec is None:
            args[name] = list(extra)
        elif spec == "missing":
            args[name] = ["--ros-args", "--params-file", str(tmp / "typo_params.yaml")] + extra
        else:
            spec = dict(spec)
            path = _params_file(tmp, name.replace(" ", "_"), drop=spec.pop("drop", ()), **spec)
            args[name] = ["--ros-args", "--params-file", str(path)] + extra
    return run_node_starts(args)


@pytest.mark.parametrize("case", list(CASES))
def test_refuses_to_start_with_a_clear_error(outcomes, case):
    code, out = outcomes[case]
    assert code == 1, out
    assert CASES[case][2] in out, out
    assert "Traceback" not in out, out
    assert "loading" not in out, "parameters are checked before the (slow) model load: " + out


def test_missing_params_file_names_the_file(outcomes, tmp_path):
    _, out = outcomes["missing params file"]
    assert "typo_params.yaml" in out and "does not exist" in out, out


def test_the_demo_config_asks_for_random_weights_explicitly():
    assert node_params(DEMO_PARAMS)["model.checkpoint"] == "random"


def test_a_torch_too_old_is_named_with_what_to_install():
    """torch 2.4 failed deep inside its schema inference ("Parameter x has unsupported type torch.Tensor"); the node
    now names the torch it found and what to install (model/torch_version.py), as any other start-up error: one line,
    exit 1. The installed torch is made to report 2.4.1 before the node imports the model."""
    isolate_ros_domain()
    code = ("import sys, torch; torch.__version__ = '2.4.1+cu121'; from turbopi_ros.node import main; "
            f"sys.argv[1:] = ['--ros-args', '--params-file', {str(DEMO_PARAMS)!r}]; main()")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, timeout=120)
    log = out.stdout + out.stderr
    assert out.returncode == 1, log
    assert "[turbopi_node]: cannot start: turbopi_ros needs torch 2.5 or newer; this Python has torch 2.4.1+cu121" \
        in log, log
    assert "Traceback" not in log and "loading" not in log, log
