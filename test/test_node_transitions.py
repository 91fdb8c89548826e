"""Lifecycle transitions, run-time parameter changes and ~/enable at their edges (a shutdown before any configure,
parameters set while unconfigured, use_sim_time at run time, a chunk in flight across a pause): each test runs the node
in this process (TurbopiNode or ManagedTurbopiNode on the demo parameters, not spinning), driving the transitions,
parameter sets and service calls directly, as the executor would. The launched, spinning node's transitions:
test_node_lifecycle.py."""
import time

import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("lifecycle_msgs")

from ros_helpers import node_params, rclpy_in_this_process  # noqa: E402

LIFECYCLE_SERVICES = ("change_state", "get_state", "get_available_states", "get_available_transitions")


@pytest.fixture(scope="module")
def ros():
    with rclpy_in_this_process():
        yield


def _overrides():
    from rclpy.parameter import Parameter

    return [Parameter(k, value=v) for k, v in node_params().items()]


@pytest.fixture
def managed(ros):
    from turbopi_ros.ros.lifecycle_node import ManagedTurbopiNode

    node = ManagedTurbopiNode(parameter_overrides=_overrides())
    yield node
    node.destroy_node()


@pytest.fixture
def plain(ros):
    from turbopi_ros.ros.policy_node import TurbopiNode

    node = TurbopiNode(parameter_overrides=_overrides())
    yield node
    node.destroy_node()


def _service_names(node):
    return {s.srv_name.rsplit("/", 1)[-1] for s in node.services}


def test_shutdown_before_any_configure_keeps_the_lifecycle_and_parameter_services(managed):
    """`ros2 lifecycle set /turbopi_node shutdown` straight from unconfigured (never configured) must finalize the node
    as it does from inactive: its lifecycle services answer afterwards (`ros2 lifecycle get` says finalized). The
    teardown destroyed every service the node had, the lifecycle's own included, inside the change_state call: the
    executor's reply on the destroyed service raised InvalidHandle and the process died with a traceback, exit 1."""
    from rclpy.lifecycle import TransitionCallbackReturn

    before = _service_names(managed)
    assert set(LIFECYCLE_SERVICES) <= before
    assert managed.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
    after = _service_names(managed)
    assert set(LIFECYCLE_SERVICES) <= after, f"services left: {sorted(after)}"
    assert "set_parameters" in after and any(p.topic_name == "/parameter_events" for p in managed.publishers)


def test_a_run_time_parameter_set_after_cleanup_is_still_validated(managed):
    """After cleanup the parameters stay declared (a later configure reads them). A run-time one set meanwhile (ros2
    param set ... blend_s abc) must be refused with the reason as while configured, not accepted and then fail the next
    configure."""
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    assert managed.trigger_configure() == TransitionCallbackReturn.SUCCESS
    bad = managed.set_parameters([Parameter("blend_s", value="abc")])[0]
    assert not bad.successful and "blend_s" in bad.reason, "configured: refused"
    assert managed.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    for value in ("abc", 100):
        result = managed.set_parameters([Parameter("blend_s", value=value)])[0]
        assert not result.successful, f"blend_s={value!r} accepted while unconfigured"
        assert "parameter blend_s" in result.reason
    assert managed.set_parameters([Parameter("blend_s", value=0.2)])[0].successful  # a good value is taken
    assert managed.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert managed.schedule.blend_s == 0.2
    managed.trigger_shutdown()


def test_use_sim_time_cannot_be_switched_at_run_time(plain):
    """use_sim_time is read at start: the command stream (a real-time thread, or a timer on the ROS clock), the pause
    watch and the inputs' clock checks are set up for it. `ros2 param set /turbopi_node use_sim_time true` was
    accepted and switched only the node's clock (to /clock: 0 without a simulator), so every input was then stamped
    ahead of the clock while the real-time stream and pause watch went on; it must be refused with the reason, as any
    other parameter that needs a restart is."""
    from rclpy.parameter import Parameter

    assert plain.get_parameter("use_sim_time").value is False and plain.now() > 1e9
    result = plain.set_parameters([Parameter("use_sim_time", value=True)])[0]
    assert not result.successful and "use_sim_time" in result.reason
    assert not plain.get_clock().ros_time_is_active and plain.now() > 1e9
    assert plain.set_parameters([Parameter("use_sim_time", value=False)])[0].successful  # unchanged: fine


def _set_enabled(node, value: bool):
    from std_srvs.srv import SetBool

    response = node._on_enable(SetBool.Request(data=value), SetBool.Response())
    assert response.success
    return response


def test_a_chunk_in_flight_across_a_disable_is_dropped_even_when_enabled_again_before_it_ends(plain, monkeypatch):
    """docs/node.md (~/enable): false pauses inference and stops the commands; "a chunk the engine finishes after it
    is dropped". With ~/enable true again before that inference ended (a quick pause and resume, the operator having
    moved the robot meanwhile), its chunk, from an observation taken before the pause, went out and the commands
    followed it."""
    published = []
    monkeypatch.setattr(plain.flow, "publish", lambda *a: published.append(a))
    taken_at = time.monotonic()  # the engine took its observation, then started the inference
    _set_enabled(plain, False)
    _set_enabled(plain, True)
    plain._publish_chunk("chunk from before the pause", taken_at, taken_at, taken_at)
    assert published == [], "a chunk of an observation taken before ~/enable false went out after it"
    later = time.monotonic()
    plain._publish_chunk("chunk after resuming", later, later, later)
    assert [p[0] for p in published] == ["chunk after resuming"]


def test_a_chunk_in_flight_across_a_deactivation_is_dropped_after_activating_again(managed, monkeypatch):
    """The same across deactivate and activate: no chunk of an observation taken while active before a deactivate
    goes out after it."""
    from rclpy.lifecycle import TransitionCallbackReturn

    assert managed.trigger_configure() == TransitionCallbackReturn.SUCCESS
    published = []
    monkeypatch.setattr(managed.flow, "publish", lambda *a: published.append(a))
    managed._threads_started = True  # the workers stay off: the test plays the engine
    assert managed.trigger_activate() == TransitionCallbackReturn.SUCCESS
    taken_at = time.monotonic()
    assert managed.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert managed.trigger_activate() == TransitionCallbackReturn.SUCCESS
    managed._publish_chunk("chunk from before the deactivation", taken_at, taken_at, taken_at)
    assert published == []
    managed.trigger_shutdown()


def test_diagnostics_of_an_inactive_managed_node_do_not_ask_for_enable(managed):
    """Inactive (configured, or deactivated), ~/enable refuses to enable ("activate the node first"); /diagnostics
    said "disabled (call ~/enable)", which sends the operator to the service that refuses."""
    from rclpy.lifecycle import TransitionCallbackReturn
    from std_srvs.srv import SetBool

    assert managed.trigger_configure() == TransitionCallbackReturn.SUCCESS
    sent = []
    managed.status._pub.publish = sent.append
    managed.status.publish("cpu")
    message = sent[-1].status[0].message
    refused = managed._on_enable(SetBool.Request(data=True), SetBool.Response())
    assert not refused.success
    assert "~/enable" not in message and "activate" in message, message
    managed.trigger_shutdown()


def test_parameters_the_node_does_not_declare_are_named_with_the_closest_declared_one(ros):
    """rcl ignores a parameter the node does not declare: a typo in the params file (action.max_jmp) would leave the
    setting at its default without a word. The node names each such parameter in a warning before the model loads,
    with the declared name closest to it; rclpy's own are not named, nor QoS overrides (those the node's topics take
    apply: test_node_integration.py)."""
    from rclpy.parameter import Parameter

    from turbopi_ros.ros.node_params import PARAMETERS
    from turbopi_ros.ros.parameters import ignored_parameters
    from turbopi_ros.ros.policy_node import TurbopiNode

    extra = [Parameter("blend_ss", value=0.2), Parameter("action.max_jmp", value=[0.5]),
             Parameter("some_other_nodes_setting", value=1), Parameter("use_sim_time", value=False),
             Parameter("qos_overrides./joint_states.subscription.depth", value=5)]
    node = TurbopiNode(parameter_overrides=_overrides() + extra)
    try:
        assert ignored_parameters(node, PARAMETERS) == (
            "parameters given that turbopi_node does not declare, ignored: 'action.max_jmp' (did you mean "
            "'action.max_jump'?), 'blend_ss' (did you mean 'blend_s'?), "
            "'some_other_nodes_setting' (docs/node.md lists its parameters)")
    finally:
        node.destroy_node()
    node = TurbopiNode(parameter_overrides=_overrides())
    try:
        assert ignored_parameters(node, PARAMETERS) == ""
    finally:
        node.destroy_node()


def test_qos_overrides_hold_across_cleanup_and_configure(ros):
    """A managed node makes its topics at configure: rclpy declares a QoS override's (read-only) parameter the first
    time and finds it declared after a cleanup; the second configure's topics must take the same override and the node
    must not name it as ignored."""
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from turbopi_ros.ros.lifecycle_node import ManagedTurbopiNode
    from turbopi_ros.ros.parameters import ignored_qos_overrides

    name = "qos_overrides./joint_states.subscription.depth"
    node = ManagedTurbopiNode(parameter_overrides=_overrides() + [Parameter(name, value=4)])
    try:
        for _ in range(2):
            assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            assert {s.topic_name: s.qos_profile.depth for s in node.subscriptions}["/joint_states"] == 4
            assert ignored_qos_overrides(node) == ""
            assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    finally:
        node.trigger_shutdown()
        node.destroy_node()
