"""action.max_jump on the running node: a chunk whose first action jumps from where the robot was observed is
dropped as bad input is (test_node_bad_input.py's contract: none goes out, the log and /diagnostics name it, the
commands stop, the node recovers by itself); one that starts near the observed position goes out."""
import time

import pytest

rclpy = pytest.importorskip("rclpy")

from ros_helpers import expect_rejected_then_recovered, level, node_params, node_session, wait_for  # noqa: E402

ERROR = 2

JUMP_OVERRIDES = {  # joint_2's actions clamped to 0.1, where the feeder observes it (0.1 x its index); checked at 0.5
    "action.lower_limits": "[-3.14, 0.1, -3.14, -3.14, -3.14, -3.14, 0.0]",
    "action.upper_limits": "[3.14, 0.1, 3.14, 3.14, 3.14, 3.14, 1.0]",
    "action.max_jump": "[0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]",
}


def test_a_chunk_that_jumps_from_the_observed_position_is_dropped(tmp_path):
    """action.max_jump: every chunk's first action sets joint_2 to 0.1. Observed at 0.3 (a jump of 0.2) the chunks go
    out; observed at 1.0 (a jump of 0.9) none computed from it does, the log and /diagnostics name the joint, the jump
    and the limit, and the commands stop; observed back where the chunks start, chunks and commands flow again."""
    with node_session(tmp_path, min_chunks=2, overrides=JUMP_OVERRIDES) as (feeder, node):
        feeder.faults["joint_at"] = ("joint_2", 0.3)
        t = time.monotonic()
        assert wait_for(lambda: len(feeder.since(feeder.chunks, t)) >= 3, timeout=30), node.log()[-3000:]
        assert "jumps too far" not in node.log()
        feeder.faults.pop("joint_at")
        expect_rejected_then_recovered(
            feeder, node, {"joint_at": ("joint_2", 1.0)},
            "chunk dropped: its first action jumps too far from where the robot was observed: joint_2 0.1 from the "
            "observed 1 (a jump of 0.9, action.max_jump 0.5)")
        # the commands stop while the chunks are dropped (on_stale: stop), and carry joint_2 at 0.1 once they flow
        feeder.faults["joint_at"] = ("joint_2", -1.0)
        assert wait_for(lambda: level(feeder.latest_status()) == ERROR
                        and "joint_2 0.1 from the observed -1" in feeder.latest_status().message, timeout=10), \
            node.log()[-3000:]
        t = time.monotonic()
        time.sleep(1.0)
        assert feeder.since(feeder.commands, t + 0.1) == [], "commands went on while the chunks were dropped"
        feeder.faults.pop("joint_at")
        t = time.monotonic()
        assert wait_for(lambda: len(feeder.since(feeder.commands, t)) > 10, timeout=30), node.log()[-2000:]
        column = node_params()["action.joints"].index("joint_2")
        assert all(abs(msg.data[column] - 0.1) < 1e-12 for _, msg in feeder.since(feeder.commands, t))
