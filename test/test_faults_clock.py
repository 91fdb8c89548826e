"""/clock jumps backwards under use_sim_time (a simulation reset, a bag looped): the node (a subprocess with
config/demo_tiny.yaml and use_sim_time) must not crash, must publish no chunk stamped on the old timeline (a trajectory
stamped in the future of the clock would wait that long to start), and must recover on the new timeline by itself."""
import json
import time

import pytest

rclpy = pytest.importorskip("rclpy")

from ros_helpers import level, node_params, node_session, stamp_of, wait_for  # noqa: E402

from turbopi_ros.ros.faults import ENV  # noqa: E402

PARAMS = node_params()
SIM_START, JUMP_S = 5000.0, 10.0


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clock")
    faults = tmp / "faults.json"
    with node_session(tmp, min_chunks=3, sim_clock=(SIM_START, 1.0), env={ENV: str(faults)}) as (feeder, node):
        yield feeder, node, faults


def test_clock_jumps_backwards(running):
    feeder, node, faults = running
    # An inference in flight across the jump, on an observation of the old timeline: slowed down by 1 s so that it
    # ends well after the node has seen the new clock. The jump comes once it has entered its delay (entered_file)
    entered = faults.with_name("entered")
    faults.write_text(json.dumps({"delay_s": 1.0, "entered_file": str(entered)}))
    assert wait_for(entered.exists, timeout=10), node.log()[-3000:]
    before = feeder.sim_now()
    jumped = time.monotonic()
    feeder.jump_clock(-JUMP_S)
    faults.write_text("")

    def sim_at(t_mono: float) -> float:
        return feeder.sim_start + (t_mono - feeder.wall_start)

    assert wait_for(lambda: len(feeder.since(feeder.chunks, jumped + 2.0)) >= 3, timeout=30), node.log()[-3000:]
    assert wait_for(lambda: len(feeder.since(feeder.commands, jumped + 2.0)) >= 10, timeout=10), node.log()[-3000:]
    assert wait_for(lambda: level(feeder.latest_status()) == 0, timeout=5), feeder.latest_status()
    assert node.alive()
    log = node.log()
    assert "Traceback" not in log and "terminate called" not in log, log
    after = [(t, stamp_of(m)) for t, m in feeder.since(feeder.chunks, jumped + 0.1)]
    # the feeder's own clock (stamping its inputs) and the node's see the jump a few ms after it
    old = [(round(t - jumped, 2), round(s - before, 2)) for t, s in after if s > before - JUMP_S + (t - jumped) + 0.05]
    assert old == [], f"chunks on the old timeline after the jump (s after the jump, stamp - clock before): {old}"
    stale = [(round(t - jumped, 2), round(sim_at(t) - s, 2)) for t, s in after
             if sim_at(t) - s > PARAMS["max_observation_age_s"] + 1.0]
    assert stale == [], f"chunks far older than the clock on arrival: {stale}"
    assert "chunk dropped: its observation is stamped" in log, log[-3000:]
