"""Start-up with graphs (issue 21), on CPU: the node (a subprocess with config/demo_tiny.yaml on tiny_pi05) warms up
before it reports ready, /diagnostics says "warming up" until then, and every prompt length the configuration can
produce is captured in the warm-up (the start prompt's, and those of model.warm_up_prompts), so a run whose pi0.5
state (written into the prompt) keeps changing, and whose prompt changes to a foreseen one, captures nothing after
ready; a prompt that was not foreseen is warned about as it is set, and its missing lengths are all captured before
its first inference, none after it while the state moves. The graphs are the CPU static-replay mode
(test-only: TURBOPI_TEST_CPU_GRAPHS, ros/faults.py): the same warm-up, bookkeeping and /diagnostics values as CUDA
graphs. The warm-up's inference hangs (test-only faults: hang_s) until the feeder has seen /diagnostics (1 Hz) say
"warming up" several times, then the test ends the hang: however long a loaded machine takes to deliver the statuses,
the warm-up lasts until they are seen (an input error outranks "warming up" while it lasts)."""
import json
import re
import time

import pytest

rclpy = pytest.importorskip("rclpy")

from ros_helpers import level, node_session, status_values, wait_for  # noqa: E402

from turbopi_ros.ros.faults import CPU_GRAPHS_ENV, ENV  # noqa: E402
from turbopi_ros.ros.node_status import STATUS_NAME, WARMING_UP  # noqa: E402

WARN, ERROR = 1, 2
HOLD_S = 120.0  # the warm-up's inference hangs this long at most: the test ends it once it has seen WARMING_UP_SEEN
WARMING_UP_SEEN = 3  # "warming up" statuses (a loaded CI host once delivered the feeder one status in a 6 s warm-up)
LATER_PROMPT = "stack the cubes and then push them into the blue bin"  # longer: lengths the start prompt has not
UNFORESEEN_PROMPT = LATER_PROMPT + " and then put the lid on the bin"  # longer still: lengths nobody captured


def _statuses(feeder):
    return [s for _, s in feeder.statuses(STATUS_NAME)]


def test_warming_up_until_ready_and_no_capture_after_ready_while_the_state_moves(tmp_path):
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"hang_s": HOLD_S}))  # the warm-up's inference waits for the test to end it
    env = {ENV: str(faults), CPU_GRAPHS_ENV: "1"}
    # real-time chunking: its guided graphs are captured before ready too; with the fused kernels and their backwards
    overrides = {"model.preset": "tiny_pi05", "model.num_steps": 3, "model.warm_up_prompts": [LATER_PROMPT],
                 "rtc.enabled": True, "model.fused": True}
    with node_session(tmp_path, min_chunks=0, env=env, overrides=overrides) as (feeder, node):
        def warming_up():
            return [t for t, s in feeder.statuses(STATUS_NAME) if s.message == WARMING_UP]
        assert wait_for(lambda: len(warming_up()) >= WARMING_UP_SEEN or not node.alive(), timeout=HOLD_S - 30), (
            [s.message for s in _statuses(feeder)], node.log()[-3000:])
        held = warming_up()  # published during the warm-up, which therefore lasted at least from first to last
        assert node.alive() and feeder.count(feeder.chunks) == 0, node.log()[-3000:]  # no chunk while warming up
        faults.write_text("{}")
        feeder.faults["moving_joints"] = True
        t0 = time.monotonic()
        assert wait_for(lambda: len(feeder.since(feeder.chunks, t0)) >= 10, timeout=90), node.log()[-3000:]
        feeder.publish_prompt(LATER_PROMPT)  # a prompt given at run time, foreseen in model.warm_up_prompts
        assert wait_for(lambda: "prompt set from ~/prompt" in node.log(), timeout=30), node.log()[-3000:]
        t1 = time.monotonic()
        assert wait_for(lambda: len(feeder.since(feeder.chunks, t1)) >= 8, timeout=90), node.log()[-3000:]
        assert wait_for(lambda: len(feeder.since(feeder.diagnostics, time.monotonic() - 0.1)) > 0, timeout=5)
        statuses = _statuses(feeder)
        log = node.log()
        feeder.publish_prompt(UNFORESEEN_PROMPT)  # neither the start prompt nor in model.warm_up_prompts
        assert wait_for(lambda: "was not foreseen" in node.log(), timeout=30), node.log()[-3000:]
        # its missing lengths are captured in one go before its first inference, then none while the state moves
        assert wait_for(lambda: "of its prompt lengths in" in node.log(), timeout=60), node.log()[-3000:]
        switch = re.search(r"captured (\d+) graphs for (\d+) of its prompt lengths", node.log())
        t2 = time.monotonic()
        assert wait_for(lambda: len(feeder.since(feeder.chunks, t2)) >= 8, timeout=90), node.log()[-3000:]
        t3 = time.monotonic()
        assert wait_for(lambda: len(feeder.since(feeder.diagnostics, t3)) > 0, timeout=5)
        after_switch = status_values(_statuses(feeder)[-1])
    assert "was not foreseen" not in log  # the foreseen prompt was not warned about
    ready = [status_values(s)["ready"] == "True" for s in statuses]
    assert True in ready, [s.message for s in statuses]
    first = ready.index(True)
    assert first >= 1 and False not in ready[first:], [s.message for s in statuses]
    # until ready: warming up, a warning, unless an error outranks it (on a loaded machine the command thread can be
    # starved long enough to report a pause of the node or a stale input); never after
    before_ready = statuses[:first]
    assert all(s.message == WARMING_UP and level(s) == WARN or level(s) == ERROR for s in before_ready), before_ready
    assert sum(s.message == WARMING_UP for s in before_ready) >= WARMING_UP_SEEN, before_ready
    assert all(s.message != WARMING_UP for s in statuses[first:])
    at_ready, last = status_values(statuses[first]), status_values(statuses[-1])
    assert float(at_ready["warm_up_s"]) >= held[-1] - held[0] > 0, (at_ready, held)
    assert float(at_ready["graph_captures"]) > 3  # vision, and prefix and denoise for each of several lengths
    assert float(at_ready["graph_capture_s"]) > 0 and float(at_ready["graph_static_bytes"]) > 0
    assert last["graph_captures"] == at_ready["graph_captures"], (at_ready, last)
    assert float(last["graph_captures_after_ready"]) == 0.0, last
    assert "graph_pool_bytes" not in last  # CUDA only
    warm, up = log.index("warm-up inference:"), log.index("ready: pi05")
    assert "graphs captured in" in log[warm:up] and "of 2 prompts" in log[warm:up] and warm < up, log
    # prefix, denoise and guided denoise for each new length, all of them the captures after ready
    assert switch and int(switch[1]) == 3 * int(switch[2]) > 0, switch
    assert float(after_switch["graph_captures_after_ready"]) == int(switch[1]), after_switch
