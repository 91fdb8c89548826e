"""The ``ros`` marker (test/ros_facing.py): which tests .ci/run also runs on Jazzy."""
from pathlib import Path

import pytest

from ros_facing import is_ros_facing

HERE = Path(__file__).resolve().parent
ROS_FACING = ["test_node.py", "test_node_bad_input.py", "test_node_hold.py", "test_node_sim_time.py", "test_demo.py",
              "test_conversions.py", "test_configs.py", "test_ros_compat.py"]
NOT_ROS = ["test_policy.py", "test_tokenizer.py", "test_bench.py", "test_transforms.py", "test_python310.py"]


@pytest.mark.parametrize("name", ROS_FACING + NOT_ROS)
def test_this_repositorys_tests(name):
    assert is_ros_facing(HERE / name) == (name in ROS_FACING)


@pytest.mark.parametrize("source, expected", [
    ("from turbopi_ros.node import TurbopiNode\n", True),  # through the package: node imports rclpy
    ("from turbopi_ros.ros import conversions\n", True),  # a submodule named in from-import
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import rclpy\n", False),  # never runs
    ("def test_x():\n    from ros_helpers import node_session\n", True),  # a helper, imported inside a function
    ("import subprocess, sys\nsubprocess.run([sys.executable, '-m', 'turbopi_ros.tools.demo'])\n", True),  # -m
    ("import pytest\npytest.importorskip('sensor_msgs')\n", True),
    ("from turbopi_ros.policy.policy import Policy\nfrom engine_helpers import small_config\n", False),
    ("import numpy\nprompt = 'launch the robot'\n", False),
])
def test_a_new_test_file_is_classified_by_what_it_uses(tmp_path, source, expected):
    path = tmp_path / "test_new.py"
    path.write_text(source)
    assert is_ros_facing(path) == expected
