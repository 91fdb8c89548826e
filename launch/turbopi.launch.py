"""turbopi_node on a robot.

    ros2 launch turbopi_ros turbopi.launch.py params_file:=/path/to/my_robot.yaml checkpoint:=/data/pi05_droid \
        device:=cuda namespace:=arm command_topic:=/arm_controller/commands

params_file is required (start from one in this package's config/). Arguments override the parameter file:
checkpoint, device (and tokenizer when given). Remap the joint command to your controller's input with
command_topic; a node with action.groups (config/pi0_aloha.yaml, config/pi05_droid.yaml) publishes no
~/joint_command, so there each group's action.group.<name>.command_topic in the params file says where its commands
go (the node warns about a command_topic it leaves unused). A params_file that does not exist stops the launch
before anything starts; when the node exits (a configuration error, or Ctrl-C), the launch shuts down with it instead
of carrying on without it.

managed:=true starts it as a managed (lifecycle) node (turbopi_node --managed): unconfigured until
`ros2 lifecycle set /turbopi_node configure` (loads and warms up the model), then activate / deactivate / cleanup /
shutdown (docs/node.md). The plain node, publishing at once, is the default.
"""
import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node


def _node(context):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    params_file = get("params_file")
    if not os.path.isfile(params_file):
        raise RuntimeError(f"params_file {params_file!r} does not exist (a typo?): refusing to start turbopi_node "
                           "with default parameters")
    overrides = {}
    for arg, param in (("checkpoint", "model.checkpoint"), ("device", "model.device"),
                       ("tokenizer", "model.tokenizer")):
        if get(arg):
            overrides[param] = get(arg)
    remaps = [("~/joint_command", get("command_topic"))] if get("command_topic") else []
    managed = get("managed").lower()
    if managed not in ("true", "false"):
        raise RuntimeError(f"managed:={managed!r}: expected true or false")
    if managed == "true":
        # launch_ros's lifecycle support shuts its ROS adapter down on the Shutdown event, and raises when a second
        # one comes (Ctrl-C, then the node's exit): the node's exit shuts the launch down only if nothing else did
        kind, arguments = LifecycleNode, ["--managed"]
        on_exit = _shutdown_unless_shutting_down
    else:
        kind, arguments, on_exit = Node, [], Shutdown(reason="turbopi_node exited")
    return [kind(package="turbopi_ros", executable="turbopi_node", name="turbopi_node", namespace=get("namespace"),
                 arguments=arguments, parameters=[params_file, overrides], remappings=remaps, output="screen",
                 emulate_tty=True, on_exit=on_exit)]


def _shutdown_unless_shutting_down(event, context):
    return None if context.is_shutdown else [Shutdown(reason="turbopi_node exited")]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("params_file", description="node parameter YAML (required; see config/ of this "
                                                         "package)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace for the node"),
        DeclareLaunchArgument("checkpoint", default_value="", description="openpi checkpoint dir (overrides YAML)"),
        DeclareLaunchArgument("device", default_value="", description="cpu, cuda or cuda:N (overrides YAML)"),
        DeclareLaunchArgument("tokenizer", default_value="", description="paligemma_tokenizer.model (overrides)"),
        DeclareLaunchArgument("command_topic", default_value="",
                              description="remap ~/joint_command to this topic (e.g. a controller's commands)"),
        DeclareLaunchArgument("managed", default_value="false",
                              description="true: a managed (lifecycle) node, driven by `ros2 lifecycle set`"),
        OpaqueFunction(function=_node),
    ])
