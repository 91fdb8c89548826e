"""fake_robot + turbopi_node on the tiny random model (what `turbopi-demo` runs, as a launch file).

    ros2 launch turbopi_ros demo.launch.py
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    params = LaunchConfiguration("params_file")
    default_params = os.path.join(get_package_share_directory("turbopi_ros"), "config", "demo_tiny.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="parameters of both nodes"),
        Node(package="turbopi_ros", executable="fake_robot", name="fake_robot", parameters=[params],
             output="screen", on_exit=Shutdown(reason="fake_robot exited")),
        Node(package="turbopi_ros", executable="turbopi_node", name="turbopi_node", parameters=[params],
             output="screen", emulate_tty=True, on_exit=Shutdown(reason="turbopi_node exited")),
    ])
