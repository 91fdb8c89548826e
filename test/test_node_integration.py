"""The node as a robot integrator meets it on day one: a parameter file written by `ros2 param dump` loaded back, and
two policy nodes (renamed, namespaced) side by side on /diagnostics. In this process, without launch or ros2cli:
`ros2 param dump` is emulated as ros2param's dump verb writes its YAML (rclpy's parameter_value_to_python, nested
keys, yaml.dump)."""
import time

import pytest
import yaml

rclpy = pytest.importorskip("rclpy")

from ros_helpers import REPO, node_params, rclpy_in_this_process  # noqa: E402


@pytest.fixture(scope="module")
def ros():
    with rclpy_in_this_process():
        yield


def _declared(node):
    """The node's checked parameter values and action groups, declared as TurbopiNode._build declares them."""
    from turbopi_ros.ros.action_outputs import declare_groups
    from turbopi_ros.ros.node_params import PARAMETERS
    from turbopi_ros.ros.parameters import declare_parameters

    p = declare_parameters(node, PARAMETERS)
    return p, declare_groups(node, p, p["action.joints"])


def _param_dump(node) -> str:
    """What `ros2 param dump /<node>` prints (ros2param/verb/dump.py): every parameter's value as Python
    (parameter_value_to_python: None for an unset one), dotted names nested, under the node's full name."""
    from rclpy.parameter import parameter_value_to_python

    params = {}
    for name in sorted(node._parameters):
        value = parameter_value_to_python(node.get_parameter(name).get_parameter_value())
        level, *parts = params, *name.split(".")
        for part in parts[:-1]:
            level = level.setdefault(part, {})
        level[parts[-1]] = value
    return yaml.dump({node.get_fully_qualified_name(): {"ros__parameters": params}}, default_flow_style=False)


@pytest.mark.parametrize("config", ["demo_tiny.yaml", "pi0_aloha.yaml"])
def test_the_node_starts_from_its_own_ros2_param_dump(ros, tmp_path, config):
    """`ros2 param dump /turbopi_node > mine.yaml`, then `turbopi_node --ros-args --params-file mine.yaml`: the
    documented way to keep a tuned configuration. An empty list in the parameter file (`model.warm_up_prompts: []`,
    `action.max_jump: []`, a position group's `velocity_limits: []`) leaves the parameter unset, which the dump writes
    as `null`; rcl's YAML parser reads `null` back as the string 'null', and the node refused to start: `cannot start:
    parameter model.warm_up_prompts: expected a list of str, got 'null'`."""
    from rclpy.node import Node

    first = Node("turbopi_node", cli_args=["--ros-args", "--params-file", str(REPO / "config" / config)])
    try:
        values, groups = _declared(first)
        dump = tmp_path / "dump.yaml"
        dump.write_text(_param_dump(first))
    finally:
        first.destroy_node()
    assert "null" in dump.read_text()  # the unset (empty-list) parameters, as ros2 param dump writes them
    again = Node("turbopi_node", cli_args=["--ros-args", "--params-file", str(dump)])
    try:
        assert _declared(again) == (values, groups)
    finally:
        again.destroy_node()
    # turbopi-replay and the recorder read a parameter file as the node does (params_file.load): the dump too
    from turbopi_ros.ros import params_file

    assert params_file.load(dump) == params_file.load(REPO / "config" / config)


def _statuses(nodes, timeout: float = 10.0):
    """The /diagnostics status names each node publishes (one housekeeping tick each, heard by a listener)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node

    listener = Node("diagnostics_listener")
    heard = []
    listener.create_subscription(DiagnosticArray, "/diagnostics", lambda m: heard.extend(s.name for s in m.status), 10)
    try:
        deadline = time.monotonic() + timeout
        while len(heard) < len(nodes) and time.monotonic() < deadline:
            heard.clear()
            for node in nodes:
                node.status.publish("cpu")
            end = time.monotonic() + 0.5
            while time.monotonic() < end and len(heard) < len(nodes):
                rclpy.spin_once(listener, timeout_sec=0.05)
        return sorted(heard)
    finally:
        listener.destroy_node()


def test_two_policy_nodes_publish_their_diagnostics_under_their_own_names(ros):
    """Two arms, each with its policy node: one namespaced (`namespace:=left_arm`, `-r __ns:=/left_arm`), one renamed
    (`-r __node:=right_policy`). Both published the status `turbopi_node: policy` on the global /diagnostics, so a
    diagnostic_aggregator or rqt_robot_monitor (which key statuses by name) showed one of them, flipping between the
    two, and an ERROR of one arm was overwritten by the other's OK a second later."""
    from rclpy.parameter import Parameter

    from turbopi_ros.ros.policy_node import TurbopiNode

    overrides = [Parameter(k, value=v) for k, v in node_params().items()]
    left = TurbopiNode(namespace="/left_arm", parameter_overrides=overrides)
    right = TurbopiNode(cli_args=["--ros-args", "-r", "__node:=right_policy"], parameter_overrides=overrides)
    try:
        assert (left.get_fully_qualified_name(), right.get_fully_qualified_name()) == (
            "/left_arm/turbopi_node", "/right_policy")
        assert _statuses([left, right]) == ["left_arm/turbopi_node: policy", "right_policy: policy"]
    finally:
        left.destroy_node()
        right.destroy_node()


def test_a_namespaced_or_remapped_node_names_the_topics_it_waits_on_as_it_subscribes_to_them(ros):
    """`-r __ns:=/robot1` with relative topic names, `-r joint_states:=/robot1/arm/joint_states`: the node waited on
    /robot1/camera/... and /robot1/arm/joint_states, but /diagnostics and the log said `no message yet on
    camera/base/image_raw ..., joint_states`: the names in the params file, not the topics to publish on."""
    from rclpy.parameter import Parameter

    from turbopi_ros.ros.inputs import WaitingForInput
    from turbopi_ros.ros.policy_node import TurbopiNode

    params = dict(node_params(), **{"cameras.topics": ["camera/base/image_raw", "~/wrist/compressed"],
                                    "joint_states.topic": "joint_states"})
    node = TurbopiNode(cli_args=["--ros-args", "-r", "__ns:=/robot1", "-r", "joint_states:=/robot1/arm/joint_states"],
                       parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    try:
        subscribed = {s.topic_name for s in node.subscriptions}
        named = ["/robot1/camera/base/image_raw", "/robot1/turbopi_node/wrist/compressed", "/robot1/arm/joint_states"]
        assert set(named) <= subscribed
        with pytest.raises(WaitingForInput) as waiting:
            node.inputs.observation(node.inputs.snapshot(), "go", time.time())
        assert str(waiting.value) == ("waiting for inputs: no message yet on "
                                      f"{named[0]} (camera 'base_0_rgb'), {named[1]} (camera 'left_wrist_0_rgb'), "
                                      f"{named[2]} (joint_states)")
    finally:
        node.destroy_node()


@pytest.mark.parametrize("name, value", [("joint_states.topic", "joint states"), ("cameras.topics", ["/a//b", "cam"]),
                                         ("action.group.arm.command_topic", "arm/")])
def test_an_input_topic_rcl_refuses_stops_the_start_naming_its_parameter(ros, name, value):
    """`joint_states.topic: "joint states"` (no topic name; a group's `command_topic: "arm/"` too) ended the node with
    rclpy's InvalidTopicNameException traceback, after the model had loaded, instead of `cannot start: parameter
    joint_states.topic: ...`."""
    from rclpy.parameter import Parameter

    from turbopi_ros.ros.policy_node import TurbopiNode

    params = dict(node_params(), **{name: value})
    if name.startswith("action.group.arm."):
        params.update({"action.groups": ["arm"], "action.group.arm.joints": params["action.joints"]})
    with pytest.raises(ValueError, match=rf"^parameter {name}.*: .* is no topic name: topic name must not .*"
                                         r"\(expected a ROS topic name: /joint_states, camera/image_raw, ~/image\)$"):
        TurbopiNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])


@pytest.mark.parametrize("namespace", ["/", "/robot1"])
def test_the_fake_robot_follows_the_node_in_its_namespace(ros, namespace):
    """fake_robot and turbopi_node started in one namespace (`-r __ns:=/robot1`, both from demo_tiny.yaml): the node
    published /robot1/turbopi_node/joint_command, the fake robot followed the absolute /turbopi_node/joint_command, so
    its joints never moved while the node ran, without a word."""
    from rclpy.parameter import Parameter

    from turbopi_ros.ros.policy_node import TurbopiNode
    from turbopi_ros.tools.fake_robot import FakeRobot

    def given(params):
        return [Parameter(k, value=v) for k, v in params.items()]

    robot = FakeRobot(namespace=namespace, parameter_overrides=given(node_params(node="fake_robot")))
    node = TurbopiNode(namespace=namespace, parameter_overrides=given(node_params()))
    try:
        commands = [p.topic_name for p in node.publishers if p.topic_name.endswith("/joint_command")]
        assert commands == [namespace.rstrip("/") + "/turbopi_node/joint_command"]
        assert commands[0] in {s.topic_name for s in robot.subscriptions}
    finally:
        node.destroy_node()
        robot.destroy_node()


def test_qos_overrides_apply_to_the_sensor_and_output_topics(ros):
    """ROS 2's standard QoS overrides in the parameter file (`qos_overrides./joint_states.subscription.depth: 5`, a
    camera's reliability, the chunk publisher's depth) set those topics' QoS, as on any rclpy node created with QoS
    overriding options; the node's topics had none, so rclpy dropped every override. One for a topic the node does not
    have is named in a warning with the closest one it takes; a bad value refuses the start with the parameter named."""
    from rclpy.parameter import Parameter
    from rclpy.qos import ReliabilityPolicy

    from turbopi_ros.ros.parameters import ignored_qos_overrides
    from turbopi_ros.ros.policy_node import TurbopiNode

    base = [Parameter(k, value=v) for k, v in node_params().items()]
    camera = node_params()["cameras.topics"][0]
    given = {"qos_overrides./joint_states.subscription.depth": 5,
             f"qos_overrides.{camera}.subscription.reliability": "reliable",
             "qos_overrides./turbopi_node/action_chunk.publisher.depth": 3,
             "qos_overrides./joint_state.subscription.depth": 7}  # a typo: no such topic
    node = TurbopiNode(parameter_overrides=base + [Parameter(k, value=v) for k, v in given.items()])
    try:
        subs = {s.topic_name: s.qos_profile for s in node.subscriptions}
        pubs = {p.topic_name: p.qos_profile for p in node.publishers}
        assert subs["/joint_states"].depth == 5 and subs[camera].reliability == ReliabilityPolicy.RELIABLE
        assert pubs["/turbopi_node/action_chunk"].depth == 3 and pubs["/turbopi_node/joint_command"].depth == 10
        others = [q for t, q in subs.items() if t not in ("/joint_states", camera, "/turbopi_node/prompt")]
        assert others and all(q.depth == 1 and q.reliability == ReliabilityPolicy.BEST_EFFORT for q in others)
        assert ignored_qos_overrides(node).startswith(
            "QoS overrides given that no topic of turbopi_node takes, ignored: "
            "'qos_overrides./joint_state.subscription.depth' (did you mean "
            "'qos_overrides./joint_states.subscription.depth'?)"), ignored_qos_overrides(node)
    finally:
        node.destroy_node()
    for name, value, expected in (("qos_overrides./joint_states.subscription.reliability", "sometimes", "sometimes"),
                                  ("qos_overrides./joint_states.subscription.depth", 0, "depth 0 keeps no message")):
        with pytest.raises(ValueError, match=f"qos_overrides of /joint_states: .*{expected}.*expected: history"):
            TurbopiNode(parameter_overrides=base + [Parameter(name, value=value)]).destroy_node()
