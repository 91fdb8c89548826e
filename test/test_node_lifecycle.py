"""turbopi_node --managed (ros/lifecycle_node.py) driven through its lifecycle services from a test node: every
transition, no chunk or command outside active (a velocity group's zero command and, with action.halt_on_stop, each
group's halt come within the deactivation), a
failed configure returns FAILURE with the reason in the log, Ctrl-C from any state exits 0, during configure at once."""
import json
import time

import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("lifecycle_msgs")

from group_helpers import GROUPS, Recorder, group_overrides  # noqa: E402
from lifecycle_helpers import Lifecycle  # noqa: E402
from ros_helpers import (DEMO_PARAMS, NodeProcess, isolate_ros_domain, make_test_node, node_params,  # noqa: E402
                         spin_in_background, wait_for)

from turbopi_ros.ros.faults import ENV as FAULTS_ENV  # noqa: E402

MANAGED = ["--", "--managed"]  # after --ros-args ...: the end of rcl's arguments, then the node's own flag
GRACE_S = 0.2  # messages already in flight when a transition returns


def _overrides(extra: dict) -> list:
    args = []
    for name, value in extra.items():
        args += ["-p", f"{name}:={value}"]
    return args


@pytest.fixture(scope="module")
def ros(tmp_path_factory):
    isolate_ros_domain()
    rclpy.init()
    feeder = make_test_node(node_params())
    recorder = Recorder(feeder)
    executor, _ = spin_in_background(feeder)
    yield feeder, recorder, Lifecycle(feeder), tmp_path_factory.mktemp("lifecycle")
    executor.shutdown()
    feeder.destroy_node()
    rclpy.try_shutdown()


def _published(feeder, recorder, t0: float) -> int:
    """Chunks and commands (whole and per group) that arrived since t0."""
    n = len(feeder.since(feeder.chunks, t0)) + len(feeder.since(feeder.commands, t0))
    return n + sum(len(recorder.since(store[g], t0)) for store in (recorder.trajectories, recorder.commands)
                   for g in GROUPS)


def test_every_transition_and_nothing_published_outside_active(ros):
    feeder, recorder, lifecycle, tmp = ros
    overrides = dict(group_overrides(), **{"action.halt_on_stop": "true"})
    node = NodeProcess(DEMO_PARAMS, tmp / "managed.log", _overrides(overrides) + MANAGED)
    try:
        assert lifecycle.ready(), node.log()
        assert lifecycle.state() == "unconfigured"
        t0 = time.monotonic()
        time.sleep(1.0)
        assert _published(feeder, recorder, t0) == 0, "unconfigured"

        assert lifecycle.set("configure"), node.log()
        assert lifecycle.state() == "inactive"
        assert "warm-up inference" in node.log()
        t0 = time.monotonic()
        time.sleep(1.5)  # inputs flow, the model is loaded: still nothing
        assert _published(feeder, recorder, t0) == 0, "inactive after configure"

        for round_ in range(2):  # activate twice: the workers start once, the second activation resumes
            t_on = time.monotonic()
            assert lifecycle.set("activate"), node.log()
            assert lifecycle.state() == "active"
            assert wait_for(lambda: all(len(recorder.since(recorder.trajectories[g], t_on)) >= 2 for g in GROUPS)
                            and all(len(recorder.since(recorder.commands[g], t_on)) >= 10 for g in GROUPS),
                            timeout=60), node.log()
            assert lifecycle.set("deactivate"), node.log()
            t_off = time.monotonic()
            assert lifecycle.state() == "inactive"
            time.sleep(1.5)
            assert _published(feeder, recorder, t_off + GRACE_S) == 0, f"inactive, round {round_}"
            last = recorder.since(recorder.commands["right_arm"], t_on)[-1][1]
            assert list(last.data) == [0.0, 0.0, 0.0], "the velocity group's last command is its zero"
            for g in GROUPS:  # action.halt_on_stop: the chunk each controller followed is stopped (velocity: zero)
                halt = recorder.since(recorder.trajectories[g], t_on)[-1][1]
                assert (halt.header.stamp.sec, halt.header.stamp.nanosec, len(halt.points)) == (0, 0, 1), g
                assert not any(halt.points[0].velocities)
                assert len(halt.points[0].positions) == (0 if GROUPS[g].get("interface") == "velocity" else
                                                         len(GROUPS[g]["joints"])), g
            assert all(m.header.stamp.sec > 0 for _, m in feeder.since(feeder.chunks, t_on)), \
                "with groups ~/action_chunk is the chunks' record: no halt there"

        assert lifecycle.set("cleanup"), node.log()
        assert lifecycle.state() == "unconfigured"
        assert "cleaned up: model freed" in node.log()
        assert lifecycle.set("configure"), node.log()  # configure again after cleanup: parameters kept
        assert lifecycle.state() == "inactive"
        assert lifecycle.set("shutdown") and lifecycle.state() == "finalized", node.log()
        t0 = time.monotonic()
        time.sleep(0.5)
        assert _published(feeder, recorder, t0) == 0
        assert node.alive(), node.log()
    finally:
        rc = node.stop()  # Ctrl-C in finalized
    assert rc == 0, node.log()
    assert "Traceback" not in node.log(), node.log()


def test_a_failed_configure_returns_failure_with_the_reason(ros):
    feeder, recorder, lifecycle, tmp = ros
    bad = {"model.checkpoint": "/nonexistent/pi0", "model.tokenizer": "/nonexistent/tok.model"}
    node = NodeProcess(DEMO_PARAMS, tmp / "bad.log", _overrides(bad) + MANAGED)
    try:
        assert lifecycle.ready(), node.log()
        assert lifecycle.set("configure") is False
        assert lifecycle.state() == "unconfigured"
        assert wait_for(lambda: "configure failed: " in node.log(), timeout=5)
        assert "/nonexistent/pi0: no such checkpoint directory or weights file" in node.log(), node.log()
        assert lifecycle.set("configure") is False  # again: the same reason, the node still answers
        assert node.alive(), node.log()
    finally:
        rc = node.stop()  # Ctrl-C in unconfigured
    assert rc == 0, node.log()


@pytest.mark.parametrize("transitions,state", [(["configure"], "inactive"), (["configure", "activate"], "active")])
def test_ctrl_c_exits_0(ros, transitions, state):
    feeder, recorder, lifecycle, tmp = ros
    node = NodeProcess(DEMO_PARAMS, tmp / f"ctrl_c_{state}.log", MANAGED)
    try:
        assert lifecycle.ready(), node.log()
        for transition in transitions:
            assert lifecycle.set(transition), node.log()
        assert lifecycle.state() == state
        if state == "active":
            t0 = time.monotonic()
            assert wait_for(lambda: len(feeder.since(feeder.commands, t0)) > 5, timeout=60), node.log()
    finally:
        rc = node.stop()
    assert rc == 0, node.log()
    assert "Traceback" not in node.log(), node.log()


def test_ctrl_c_during_configure_exits_at_once(ros):
    """configure loads the model and warms up: tens of seconds on a GPU. Ctrl-C then (twice, as under ros2 launch) must
    end the process at once with one line and exit 0, not after configure returns: launch sends SIGTERM 5 s after its
    SIGINT and SIGKILL 5 s later. Here the warm-up's inference hangs (the test-only hang fault) until the signals."""
    feeder, recorder, lifecycle, tmp = ros
    faults, entered = tmp / "configure_faults.json", tmp / "configure_entered"
    faults.write_text(json.dumps({"hang_s": 60, "entered_file": str(entered)}))
    node = NodeProcess(DEMO_PARAMS, tmp / "ctrl_c_configuring.log", MANAGED, env={FAULTS_ENV: str(faults)})
    future = None
    try:
        assert lifecycle.ready(), node.log()
        future = lifecycle.request("configure")
        assert wait_for(lambda: entered.exists() or not node.alive(), timeout=60), node.log()
        assert node.alive() and not future.done(), node.log()
        elapsed = node.interrupt()
    finally:
        faults.write_text("{}")  # ends the hang if the node is still in it
        node.stop()
        if future is not None:
            lifecycle.change.remove_pending_request(future)
    node.assert_clean_exit(elapsed)
    log = node.log()
    assert "SIGINT while configuring" in log, log
    assert "configured:" not in log, log
