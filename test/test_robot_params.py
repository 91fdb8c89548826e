"""ros/robot_params.py without a node: the robot adapter's checks of the node's joints and cameras, and what
Policy.from_params gets (the node refusing an unknown adapter: test_node_startup.py)."""
import dataclasses
from types import SimpleNamespace

import pytest

pytest.importorskip("rclpy")

from turbopi_ros.ros.robot_params import (ROBOT_PARAMETERS, camera_slots_for, check_robot,  # noqa: E402
                                          policy_kwargs)


def _params(adapter="none", cameras=("base_0_rgb",), state=7, actions=7, **more):
    p = {name: param.default for name, param in ROBOT_PARAMETERS.items()}
    p.update({"robot.adapter": adapter, "cameras.names": list(cameras), "state.joints": [f"s{i}" for i in range(state)],
              "action.joints": [f"a{i}" for i in range(actions)]}, **more)
    return p


def test_openpi_camera_names_become_the_slots_they_fill():
    p = _params("aloha", ["cam_high", "left_wrist_0_rgb", "cam_right_wrist"], 14, 14)
    assert camera_slots_for(p) == ["base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"]
    assert camera_slots_for(_params("droid", ["wrist_image_left", "exterior_image_1_left"], 8, 8)) == [
        "left_wrist_0_rgb", "base_0_rgb"]
    assert camera_slots_for(_params("none", ["right_wrist_0_rgb"])) == ["right_wrist_0_rgb"]


@pytest.mark.parametrize("p,message", [
    (_params("none", ["cam_high"]), r"parameter cameras.names: \['cam_high'\] are not model image slots"),
    (_params("droid", ["base_0_rgb", "right_wrist_0_rgb"], 8, 8),
     r"parameter cameras.names: \['right_wrist_0_rgb'\] with robot.adapter droid: expected the robot's cameras "
     r"\['exterior_image_1_left', 'wrist_image_left'\] or the model slots they fill"),
    (_params("aloha", ["cam_high", "base_0_rgb"], 14, 14), r"model slots \['base_0_rgb'\] are named more than once"),
])
def test_cameras_the_robot_lacks_are_named(p, message):
    with pytest.raises(ValueError, match=message):
        camera_slots_for(p)


@pytest.mark.parametrize("p,message", [
    (_params("droid", state=7, actions=8), r"parameter state.joints has 7 entries: robot.adapter droid needs 8 "
                                           r"\(the robot's state vector\)"),
    (_params("libero", state=8, actions=8), r"parameter action.joints has 8 entries: robot.adapter libero needs 7"),
    (_params("aloha", state=14, actions=7), "parameter action.joints has 7 entries: robot.adapter aloha needs 14"),
])
def test_joints_that_do_not_fit_the_robot_are_named(p, message):
    with pytest.raises(ValueError, match=message):
        check_robot(p)


def test_fitting_joints_and_no_adapter_pass():
    check_robot(_params("aloha", state=14, actions=14))
    check_robot(_params("libero", state=8, actions=7))
    check_robot(_params("none", state=3, actions=5))


def test_policy_arguments():
    from turbopi_ros.ros.node_config import ModelSettings, RobotSettings

    model = ModelSettings(**{f.name: None for f in dataclasses.fields(ModelSettings)})
    config = SimpleNamespace(robot=RobotSettings(adapter="aloha", adapt_to_pi=False),
                             model=dataclasses.replace(model, action_horizon=25, max_token_len=64,
                                                            discrete_state_input="false"))
    assert policy_kwargs(config) == dict(robot_adapter="aloha", adapt_to_pi=False, action_horizon=25, max_token_len=64,
                                         discrete_state_input="false")


@pytest.mark.parametrize("name,value,message", [
    ("robot.adapter", "ur5", r"parameter robot.adapter: 'ur5' is not one of \['none', 'aloha', 'droid', 'libero'\]"),
    ("model.discrete_state_input", "yes", "parameter model.discrete_state_input: 'yes' is not one of"),
    ("model.action_horizon", -1, r"parameter model.action_horizon: -1 is out of range \[0, 1000\]"),
])
def test_parameter_values_are_checked(name, value, message):
    with pytest.raises(ValueError, match=message):
        ROBOT_PARAMETERS[name].check(name, value)


def test_an_empty_delta_mask_takes_the_adapters_and_the_docs_say_so(tmp_path):
    """rcl reads an empty YAML list as an unset parameter, so ``action.delta_mask: []`` cannot mean 'absolute' next to
    an adapter whose openpi config trains on deltas: it takes the adapter's mask (ALOHA: the joints as deltas), and
    all false gives absolute actions. The parameter's description and docs/robots.md must say that, not '[] = all
    absolute', or an absolute-action ALOHA checkpoint would get the state added to its joints."""
    from pathlib import Path

    import yaml

    from turbopi_ros.ros import params_file
    from turbopi_ros.ros.node_params import PARAMETERS, policy_from_config

    repo = Path(__file__).resolve().parents[1]
    doc = yaml.safe_load((repo / "config" / "pi0_aloha.yaml").read_text())
    p = doc["/**/turbopi_node"]["ros__parameters"]
    p.update({"model.checkpoint": "random", "model.preset": "tiny", "model.device": "cpu", "model.dtype": "float32",
              "model.cuda_graph": False, "model.tokenizer": ""})
    masks = {}
    for name, mask in (("empty", []), ("all false", [False] * 14)):
        p["action.delta_mask"] = mask
        path = tmp_path / "aloha.yaml"
        path.write_text(yaml.safe_dump(doc))
        masks[name] = policy_from_config(params_file.load(path)).delta_mask
    assert masks == {"empty": [True] * 6 + [False] + [True] * 6 + [False], "all false": None}
    help_text = PARAMETERS["action.delta_mask"].description
    assert "[] = all absolute" not in help_text and "adapter" in help_text
    docs = repo / "docs"
    assert "(`[]`: absolute actions)" not in (docs / "robots.md").read_text()
    assert "`[]` = all absolute" not in (docs / "node.md").read_text()
