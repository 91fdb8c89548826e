"""~/enable false is a promise: once the call returns, no chunk and no command goes out (a velocity group's zero
command apart). The engine checks the switch before it publishes a chunk and the command thread before each tick,
each on its own thread, so a disable that lands between such a check and the publication must wait for it to finish
or stop it. The node runs in this process, not started (no threads of its own): the test plays the engine's and the
command thread's parts with their publications held open."""
import threading
import time

import pytest

rclpy = pytest.importorskip("rclpy")

from ros_helpers import isolate_ros_domain, node_params  # noqa: E402

HELD_S = 0.3  # how long the disable is watched while a publication is held open


@pytest.fixture(scope="module")
def node():
    from rclpy.parameter import Parameter

    from turbopi_ros.ros.policy_node import TurbopiNode

    isolate_ros_domain()
    rclpy.init()
    made = None
    try:
        made = TurbopiNode(parameter_overrides=[Parameter(k, value=v) for k, v in node_params().items()])
        yield made
    finally:
        if made is not None:
            made.destroy_node()
        rclpy.try_shutdown()


def _set_enabled(node, value: bool) -> threading.Thread:
    from std_srvs.srv import SetBool

    def call():
        response = node._on_enable(SetBool.Request(data=value), SetBool.Response())
        assert response.success

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def _held_open(monkeypatch, owner, name: str):
    """Replace ``owner.name`` (for this test) by a call that records its arguments and waits for ``release``;
    returns (calls, inside, release)."""
    calls, inside, release = [], threading.Event(), threading.Event()

    def held(*args):
        calls.append(args)
        inside.set()
        assert release.wait(10)

    monkeypatch.setattr(owner, name, held)
    return calls, inside, release


def _disable_while_held(node, publication, inside: threading.Event, release: threading.Event, what: str) -> None:
    """Start ``publication`` on a thread of its own, call ~/enable false while it is held open: the call must not
    return before the publication is released, and must return after."""
    publisher = threading.Thread(target=publication)
    publisher.start()
    assert inside.wait(10)
    disable = _set_enabled(node, False)
    disable.join(HELD_S)
    assert disable.is_alive(), f"~/enable false returned while {what}"
    release.set()
    publisher.join(10)
    disable.join(10)
    assert not disable.is_alive() and not publisher.is_alive()


def test_a_disable_waits_for_a_chunk_being_published_and_drops_the_next(node, monkeypatch):
    calls, inside, release = _held_open(monkeypatch, node.flow, "publish")
    try:
        assert node._enabled, "the demo parameters start enabled (autostart)"
        _disable_while_held(node, lambda: node._publish_chunk("chunk", 0.0, 0.0, 0.0), inside, release,
                            "a chunk was still being published")
        assert len(calls) == 1
        # the engine checked the switch before the disable; its chunk, published after it, is dropped
        node._publish_chunk("late chunk", 0.0, 0.0, 0.0)
        assert len(calls) == 1, "a chunk went out after ~/enable false returned"
        _set_enabled(node, True).join(10)
        observed = time.monotonic()  # an observation taken after enabling (one taken before the disable is dropped)
        node._publish_chunk("chunk after enabling", observed, observed, observed)
        assert [c[0] for c in calls] == ["chunk", "chunk after enabling"]
    finally:
        release.set()
        _set_enabled(node, True).join(10)


def test_a_disable_waits_for_a_command_tick_in_progress(node, monkeypatch):
    calls, inside, release = _held_open(monkeypatch, node.commands, "tick")
    try:
        _disable_while_held(node, node._on_command_tick, inside, release, "a command tick was still publishing")
        assert len(calls) == 1 and not node._enabled
    finally:
        release.set()
        _set_enabled(node, True).join(10)


def test_with_halt_on_stop_a_disable_halts_the_chunk_being_followed_and_only_that(node, monkeypatch):
    """action.halt_on_stop: ~/enable false sends ~/action_chunk one point, action.halt_time_s after it arrives
    (0.25 s by default), at the chunk's command halfway there with zero velocity, while a chunk is being followed; none
    when no chunk is (the schedule was cleared), none with the parameter off."""
    import numpy as np

    sent = []
    monkeypatch.setattr(node.outputs.chunk_pub, "publish", sent.append)
    try:
        actions = np.tile(np.linspace(-0.5, 0.5, len(node.config.action.joints)), (50, 1))  # one pose: any step's
        node.schedule.set_chunk(actions, stamp=node.now(), now=node.now())
        _set_enabled(node, False).join(10)
        assert len(sent) == 0, "action.halt_on_stop is off by default"
        _set_enabled(node, True).join(10)

        monkeypatch.setattr(node.outputs, "halt_on_stop", True)
        node.schedule.set_chunk(actions, stamp=node.now(), now=node.now())
        _set_enabled(node, False).join(10)
        assert len(sent) == 1
        (point,) = sent[0].points
        assert (sent[0].header.stamp.sec, sent[0].header.stamp.nanosec) == (0, 0)
        assert np.allclose(point.positions, actions[0], atol=1e-12) and not any(point.velocities)
        assert (point.time_from_start.sec, point.time_from_start.nanosec) == (0, 250_000_000)
        _set_enabled(node, False).join(10)  # nothing being followed any more
        assert len(sent) == 1
    finally:
        _set_enabled(node, True).join(10)
