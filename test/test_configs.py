"""Every shipped parameter file sets exactly the node's declared parameters, with consistent lengths."""
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rclpy")

from turbopi_ros.ros.action_outputs import group_table, groups_from_parameters  # noqa: E402
from turbopi_ros.ros.node_params import PARAMETERS  # noqa: E402
from turbopi_ros.ros.robot_params import camera_slots_for, check_robot  # noqa: E402

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "config").glob("*.yaml"))


def _flat(params: dict, prefix: str = "") -> dict:
    """Nested YAML mappings as dotted names, as rcl reads them (action: {group: {arm: ...}})."""
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _declared(params: dict) -> dict:
    """The node's parameters with those of the action groups the config lists (declared once it is read)."""
    return dict(PARAMETERS, **group_table(params.get("action.groups", [])))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_complete_and_consistent(path):
    params = _flat(yaml.safe_load(path.read_text())["/**/turbopi_node"]["ros__parameters"])
    table = _declared(params)
    assert set(params) == set(table), set(params) ^ set(table)
    for name, value in params.items():
        table[name].check(name, value)  # right types, within range, one of the choices
    groups_from_parameters(params, params["action.joints"])  # every group joint an action joint, in one group
    check_robot(params)  # the adapter's state and action sizes
    camera_slots_for(params)  # cameras the adapter's robot has
    n_cams = len(params["cameras.names"])
    assert len(params["cameras.topics"]) == n_cams == len(params["cameras.compressed"])
    n = len(params["action.joints"])
    for key in ("action.lower_limits", "action.upper_limits", "action.delta_mask"):
        assert len(params[key]) == n, key
    assert all(lo <= hi for lo, hi in zip(params["action.lower_limits"], params["action.upper_limits"]))
    assert params["on_stale"] in ("stop", "hold")
    assert params["model.checkpoint"], "every shipped config names its checkpoint (or asks for 'random' explicitly)"


def test_every_parameter_is_commented_in_the_yaml():
    for path in CONFIGS:
        lines = path.read_text().splitlines()
        for name in PARAMETERS:
            i = next(i for i, li in enumerate(lines) if li.strip().startswith(name + ":"))
            above = lines[i - 1].strip()
            assert "#" in lines[i] or above.startswith("#"), f"{path.name}: {name} has no comment"


@pytest.mark.parametrize("name,checkpoint", [("pi05_droid.yaml", "pi05_droid_pytorch"),
                                             ("pi0_aloha.yaml", "pi0_aloha_pytorch")])
def test_robot_config_without_its_checkpoint_fails_clearly(tmp_path, name, checkpoint):
    """The robot configs point at checkpoints this machine lacks: the node must say so and exit 1, not hang (every
    other parameter, the robot adapter's and the action groups', passes its checks first)."""
    import os
    import subprocess
    import sys

    path = next(p for p in CONFIGS if p.name == name)
    from ros_helpers import free_ros_domain

    env = dict(os.environ, ROS_DOMAIN_ID=str(free_ros_domain()), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    out = subprocess.run([sys.executable, "-m", "turbopi_ros.node", "--ros-args", "--params-file", str(path)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "cannot start" in out.stderr + out.stdout
    missing = f"/data/checkpoints/{checkpoint}: no such checkpoint directory or weights file"
    assert missing in out.stderr + out.stdout


def test_every_parameter_is_documented():
    text = (Path(__file__).resolve().parents[1] / "docs" / "node.md").read_text()
    missing = [name for name in PARAMETERS if f"| `{name}` |" not in text]
    assert missing == [], f"docs/node.md has no row for {missing}"


def test_the_aloha_config_states_alohas_gripper_direction():
    """ALOHA normalizes its grippers as (x - CLOSE) / (OPEN - CLOSE) (PUPPET_GRIPPER_POSITION_OPEN 0.058 m,
    _CLOSE 0.01844 m; PUPPET_GRIPPER_JOINT_OPEN 1.4910 rad, _CLOSE -0.6213 rad), the ranges the adapter converts
    with: 0 is closed, 1 is open. A gripper driver written to the config's comment must not get it the wrong way
    round."""
    from turbopi_ros.policy import adapters

    closed, opened = adapters._PUPPET_GRIPPER_POSITION
    assert adapters._unnormalize(0.0, closed, opened) == pytest.approx(0.01844)  # ALOHA's closed linear position
    assert adapters.aloha_gripper_from_pi(adapters.aloha_gripper_from_pi_inverse(1.0)) == pytest.approx(1.0)
    assert adapters._unnormalize(1.0, *adapters._PUPPET_GRIPPER_JOINT) == pytest.approx(1.4910)  # the open joint
    text = (CONFIGS[0].parent / "pi0_aloha.yaml").read_text()
    assert "0 open" not in text and "0 closed .. 1 open" in text
    robots = (CONFIGS[0].parents[1] / "docs" / "robots.md").read_text()
    assert "0 closed .. 1 open" in robots


def test_the_droid_config_warns_that_its_gripper_joint_carries_droids_value_not_a_finger_width():
    """pi05_droid reads and writes DROID's gripper_position (0 open .. 1 closed). The config names the gripper
    panda_finger_joint1, which a Franka hand's driver publishes as the finger's opening in metres (0.04 open, 0
    closed): wired as the config reads, the model would see a closed gripper as open and its 'close' (1.0) would open
    the hand. The config must say that joint has to carry DROID's normalized value."""
    text = (CONFIGS[0].parent / "pi05_droid.yaml").read_text()
    state_comment = next(line for line in text.splitlines() if "state vector order" in line)
    assert "metres" in state_comment and "0 open .. 1 closed" in state_comment, state_comment
