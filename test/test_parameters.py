"""Parameters a ROS user can inspect and trust: descriptors (read-only, ranges, enumerations), values checked at
start with the parameter named, integers accepted for floats, run-time changes validated then applied."""
import pytest

rclpy = pytest.importorskip("rclpy")

from turbopi_ros.ros.parameters import Param, declare_parameters, on_parameters_set  # noqa: E402

SPEC = {
    "rate": Param(50.0, "a float", min=0.1, max=1000.0),
    "limits": Param([], "floats", items=float, required=True),
    "steps": Param(10, "an int", min=1, max=100),
    "mode": Param("stop", "an enumeration", choices=("stop", "hold")),
    "device": Param("cpu", "a device", pattern=r"cpu|cuda(:\d+)?", pattern_text="cpu, cuda or cuda:N"),
    "names": Param([], "strings", items=str, required=True),
    "prompt": Param("", "text", runtime=True),
    "blend": Param(0.1, "a run-time float", runtime=True, min=0.0, max=10.0),
}
GOOD = {"limits": [0.0, 1.0], "names": ["a"]}


@pytest.fixture
def make_node():
    from rclpy.context import Context
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    context = Context()
    rclpy.init(context=context)
    nodes = []

    def make(**overrides):
        values = dict(GOOD, **overrides)
        node = Node("params_test", context=context,
                    parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.destroy_node()
    rclpy.try_shutdown(context=context)


def declared(make_node, **overrides):
    return declare_parameters(make_node(**overrides), SPEC)


def test_good_values_and_integers_for_floats(make_node):
    values = declared(make_node, rate=20, limits=[0, 1])
    assert values["rate"] == 20.0 and type(values["rate"]) is float
    assert values["limits"] == [0.0, 1.0] and all(type(v) is float for v in values["limits"])
    assert values["steps"] == 10 and values["names"] == ["a"]


@pytest.mark.parametrize("overrides, message", [
    ({"steps": 0}, r"parameter steps: .*(out of range|not within).*"),
    ({"steps": 2.5}, r"parameter steps: .*expecting type 'INTEGER'"),
    ({"rate": 0}, r"parameter rate: 0.0 is out of range \[0.1, 1000\]"),
    ({"rate": -5.0}, r"parameter rate: .*"),
    ({"mode": "halt"}, r"parameter mode: 'halt' is not one of \['stop', 'hold'\]"),
    ({"device": "gpu"}, r"parameter device: 'gpu' is not cpu, cuda or cuda:N"),
    ({"limits": ["a"]}, r"parameter limits: expected a list of numbers, got \['a'\]"),
    ({"limits": []}, r"parameter limits is not set: floats"),
    ({"names": [1, 2]}, r"parameter names: expected a list of (str|strings)"),
])
def test_bad_values_are_refused_with_the_parameter_named(make_node, overrides, message):
    with pytest.raises(ValueError, match=message):
        declared(make_node, **overrides)


def test_descriptors_show_the_constraints(make_node):
    node = make_node()
    declare_parameters(node, SPEC)
    steps, rate, mode, prompt = node.describe_parameters(["steps", "rate", "mode", "prompt"])
    assert steps.read_only and (steps.integer_range[0].from_value, steps.integer_range[0].to_value) == (1, 100)
    assert rate.read_only and (rate.floating_point_range[0].from_value, rate.floating_point_range[0].to_value) == (
        0.1, 1000.0)
    assert "one of: stop, hold" in mode.additional_constraints
    assert not prompt.read_only and "changeable at run time" in prompt.additional_constraints


def test_runtime_changes_are_validated_then_applied(make_node):
    from rclpy.parameter import Parameter

    node = make_node()
    declare_parameters(node, SPEC)
    applied = []
    on_parameters_set(node, SPEC, applied.append)
    result = node.set_parameters([Parameter("steps", value=20)])[0]
    assert not result.successful and "read-only" in result.reason
    result = node.set_parameters([Parameter("blend", value=20.0)])[0]
    assert not result.successful and "blend" in result.reason and "out of range" in result.reason
    assert applied == []
    assert node.set_parameters([Parameter("blend", value=1)])[0].successful  # an integer for a float
    assert node.set_parameters([Parameter("prompt", value="pick")])[0].successful
    assert applied == [{"blend": 1.0}, {"prompt": "pick"}]
    assert node.get_parameter("prompt").value == "pick"


def test_without_a_post_set_callback_changes_apply_after_validation(make_node, monkeypatch):
    """rclpy 3 (Humble) has no post-set callback: the validated change is applied at the end of on-set."""
    from rclpy.parameter import Parameter

    from turbopi_ros.ros import ros_compat

    monkeypatch.setattr(ros_compat, "register_post_set_callback", lambda node, callback: False)
    node = make_node()
    declare_parameters(node, SPEC)
    applied = []
    on_parameters_set(node, SPEC, applied.append)
    assert not node.set_parameters([Parameter("blend", value=11.0)])[0].successful
    assert node.set_parameters([Parameter("blend", value=2.0)])[0].successful
    assert applied == [{"blend": 2.0}]


def test_ignored_qos_overrides_without_list_parameters(make_node, monkeypatch):
    """rclpy 3 (Humble) Node has no list_parameters (rclpy 5.2+): the warning about a QoS override no topic takes is
    still made, with the closest one the node declared, instead of an AttributeError ending the node's start."""
    from rclpy.node import Node
    from sensor_msgs.msg import JointState

    from turbopi_ros.ros.parameters import ignored_qos_overrides
    from turbopi_ros.ros.qos_overrides import create_overridable
    from turbopi_ros.ros.subscriptions import NEWEST

    monkeypatch.delattr(Node, "list_parameters", raising=False)
    node = make_node(**{"qos_overrides./joint_states.subscription.depth": 5,
                        "qos_overrides./joint_state.subscription.depth": 7})  # a typo: no such topic
    create_overridable(node.create_subscription, JointState, "/joint_states", lambda msg: None, NEWEST)
    assert ignored_qos_overrides(node) == (
        "QoS overrides given that no topic of params_test takes, ignored: "
        "'qos_overrides./joint_state.subscription.depth' (did you mean "
        "'qos_overrides./joint_states.subscription.depth'?) (its cameras, joint states and action outputs take "
        "history, depth and reliability: docs/node.md)")
