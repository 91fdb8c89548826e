"""launch_testing: `launch/demo.launch.py` brings up fake_robot + turbopi_node and action chunks arrive.

Runs with `launch_test test/test_demo_launch.py` (or colcon test) on a ROS 2 install; skipped where launch_testing
is not installed (the pip-only venv of CI).
"""
import os
import time
import unittest

import pytest

launch_testing = pytest.importorskip("launch_testing")
launch = pytest.importorskip("launch")
pytest.importorskip("launch_ros")

import launch_testing.actions  # noqa: E402, F811 - the submodule of the module importorskip gave
import launch_testing.asserts  # noqa: E402
import rclpy  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.launch_test
def generate_test_description():
    demo = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(HERE, "..", "launch", "demo.launch.py")))
    return launch.LaunchDescription([demo, launch_testing.actions.ReadyToTest()])


class TestChunksArrive(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        rclpy.init()

    @classmethod
    def tearDownClass(cls):
        rclpy.try_shutdown()

    def test_action_chunks_arrive(self):
        node = rclpy.create_node("demo_launch_test")
        chunks = []
        node.create_subscription(JointTrajectory, "/turbopi_node/action_chunk", chunks.append, 10)
        deadline = time.monotonic() + 120.0
        while time.monotonic() < deadline and len(chunks) < 3:
            rclpy.spin_once(node, timeout_sec=0.1)
        node.destroy_node()
        self.assertGreaterEqual(len(chunks), 3)
        self.assertEqual(len(chunks[-1].points), 50)
        self.assertEqual(list(chunks[-1].joint_names)[:6], ["joint_1", "joint_2", "joint_3", "joint_4", "joint_5",
                                                            "joint_6"])


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_exit_codes(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0, -2, -15])
