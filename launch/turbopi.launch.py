"""turbopi_node on a robot.

    ros2 launch turbopi_ros turbopi.launch.py params_file:=/path/to/pi05_droid.yaml checkpoint:=/data/pi05_droid \
        device:=cuda namespace:=arm command_topic:=/arm_controller/commands

Arguments override the parameter file: checkpoint, device (and tokenizer when given). Remap the joint command
to your controller's input with command_topic.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _node(context):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    overrides = {}
    for arg, param in (("checkpoint", "model.checkpoint"), ("device", "model.device"),
                       ("tokenizer", "model.tokenizer")):
        if get(arg):
            overrides[param] = get(arg)
    remaps = [("~/joint_command", get("command_topic"))] if get("command_topic") else []
    return [Node(package="turbopi_ros", executable="turbopi_node", name="turbopi_node", namespace=get("namespace"),
                 parameters=[get("params_file"), overrides], remappings=remaps, output="screen",
                 emulate_tty=True)]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("turbopi_ros"), "config", "pi05_droid.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params, description="node parameter YAML"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace for the node"),
        DeclareLaunchArgument("checkpoint", default_value="", description="openpi checkpoint dir (overrides YAML)"),
        DeclareLaunchArgument("device", default_value="", description="cpu, cuda or cuda:N (overrides YAML)"),
        DeclareLaunchArgument("tokenizer", default_value="", description="paligemma_tokenizer.model (overrides)"),
        DeclareLaunchArgument("command_topic", default_value="",
                              description="remap ~/joint_command to this topic (e.g. a controller's commands)"),
        OpaqueFunction(function=_node),
    ])
