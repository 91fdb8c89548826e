"""A chunk whose actions are all due before it is published (an inference slower than the chunk's span, or the clock
jumped forward) is dropped and named (ros/chunk_gate.py): the node a subprocess with config/demo_tiny.yaml, slowed down
by the test-only delay fault (ros/faults.py)."""
import json
import time

import pytest

rclpy = pytest.importorskip("rclpy")

from ros_helpers import level, node_session, stamp_of, trajectory_times, wait_for  # noqa: E402

from turbopi_ros.ros.faults import ENV  # noqa: E402

ERROR = 2


def chunk_end(chunk) -> float:
    """The time (s, the node's clock) of a chunk's last point."""
    return stamp_of(chunk) + float(trajectory_times(chunk)[-1])


def status_is(feeder, want: int, text: str) -> bool:
    status = feeder.latest_status()
    return status is not None and level(status) == want and text in status.message


def test_a_chunk_whose_actions_all_lie_in_the_past_is_dropped_and_named(tmp_path):
    """An inference slower than a chunk's span (H / control_rate_hz: here 50 actions at 250 Hz, 0.2 s, against 0.3 s
    of inference) gives chunks whose every point is due before they are published: a joint_trajectory_controller
    rejects them (a trajectory that ends in the past), and the command stream has nothing for now. Such a chunk was
    published all the same, with /diagnostics OK: a robot that never moved, and nothing said why."""
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"delay_s": 0.3}))
    with node_session(tmp_path, min_chunks=0, overrides={"control_rate_hz": 250.0},
                      env={ENV: str(faults)}) as (feeder, node):
        def dead():  # chunks published (rmw source time) after their last point's time
            with feeder.lock:
                return [round(sent - chunk_end(msg), 3) for _, sent, msg in feeder.chunks_info if chunk_end(msg) < sent]

        named = "all its actions lie in the past"
        assert wait_for(lambda: dead() or status_is(feeder, ERROR, named), timeout=90), node.log()[-3000:]
        time.sleep(2.0)  # a few more inferences
        assert dead() == [], f"chunks published after their last point (s late): {dead()}"
        assert status_is(feeder, ERROR, named), feeder.latest_status()
        assert not feeder.commands, "a command from a chunk that lies in the past"
