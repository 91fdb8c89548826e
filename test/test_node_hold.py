"""on_stale: hold. The node runs in this process (the demo YAML with on_stale=hold) beside the test feeder: when an
input goes stale, ~/joint_command keeps coming at the control rate, repeating the last command; when the input is
fresh again, new chunks move it again. (on_stale: stop is tested against the subprocess in test_node_bad_input.py.)"""
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from ros_helpers import (assert_published_at, isolate_ros_domain, make_test_node, node_params,  # noqa: E402
                         spin_in_background, wait_for)


def test_on_stale_hold_repeats_the_last_command():
    from rclpy.parameter import Parameter

    from turbopi_ros.ros.policy_node import TurbopiNode

    params = dict(node_params(), on_stale="hold")
    isolate_ros_domain()
    rclpy.init()
    node = feeder = executor = None
    try:
        node = TurbopiNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        node.start()
        feeder = make_test_node(params)
        executor, _ = spin_in_background(feeder)
        executor.add_node(node)
        assert wait_for(lambda: feeder.count(feeder.chunks) >= 2 and feeder.count(feeder.commands) >= 10, timeout=60)

        feeder.faults["joints_age"] = 3.0
        assert wait_for(lambda: feeder.latest_status() is not None
                        and "joint_states: newest message is" in feeder.latest_status().message, timeout=10)
        t = time.monotonic() + 0.2  # let a command in flight arrive
        time.sleep(1.2)
        with feeder.lock:
            sources = list(feeder.commands_info)
        # at the control rate, from the node's publish times (this process's one executor, shared by the node and the
        # feeder, delays arrivals on a loaded machine), and they kept coming
        assert_published_at(sources, t, 1.0, params["control_rate_hz"], rel=0.1, what="held commands: ")
        held = [np.array(m.data) for arrived, m in feeder.since(feeder.commands, t) if arrived < t + 1.0]
        assert all(np.array_equal(h, held[0]) for h in held), "held commands must repeat the last one"
        assert feeder.since(feeder.chunks, t) == []

        feeder.faults.pop("joints_age")
        t = time.monotonic()
        assert wait_for(lambda: len(feeder.since(feeder.chunks, t)) >= 2, timeout=30)
        moving = [np.array(m.data) for _, m in feeder.since(feeder.commands, t)]
        assert any(not np.array_equal(m, held[0]) for m in moving)
    finally:
        if executor is not None:
            executor.shutdown()
        for n in (feeder, node):
            if n is not None:
                n.destroy_node()
        rclpy.try_shutdown()
