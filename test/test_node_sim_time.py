"""use_sim_time: the node (a subprocess with config/demo_tiny.yaml and use_sim_time:=true) runs on /clock.

The test publishes /clock from 5000 s at half real time and stamps its inputs with it. Input ages, chunk stamps, the
control timer and the command for "now" all have to follow that clock: on the wall clock every input would be
~1.8e9 s old (no chunks at all), and the 50 Hz command stream arrives at 25 Hz of wall time.
"""
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from ros_helpers import level, node_params, node_session, stamp_of, status_values, wait_for  # noqa: E402

PARAMS = node_params()
RATE = PARAMS["control_rate_hz"]
SIM_START, SIM_RATE = 5000.0, 0.5


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    with node_session(tmp_path_factory.mktemp("node"), min_chunks=3, sim_clock=(SIM_START, SIM_RATE)) as session:
        yield session


def test_chunks_are_stamped_in_simulated_time(running):
    feeder, node = running
    sim_now = feeder.sim_now()
    stamps = np.array([stamp_of(m) for _, m in feeder.since(feeder.chunks, 0)])
    assert np.all((stamps > SIM_START) & (stamps <= sim_now)), (stamps, sim_now)
    assert np.all(np.diff(stamps) > 0)


def test_commands_follow_the_simulated_clock(running):
    """control_rate_hz per simulated second: at half real time, half as many per wall second. Counted from the node's
    publish times (rmw source timestamps) against the feeder's simulated clock, which runs at SIM_RATE x the wall
    clock by construction: between 0.5 and 1.1 x control_rate_hz per simulated second (on the wall clock it would be
    twice that). Not a median period: this test process publishes /clock, so on a loaded machine the clock the node
    sees moves in steps and its timer fires in bursts (one CI run: a median of 35.3 ms of wall time against 40), and a
    ROS timer that runs late skips the periods it missed (fewer, never more)."""
    feeder, node = running
    t0 = time.monotonic() + 0.5
    time.sleep(4.7)
    with feeder.lock:
        sent = [s for t, s in feeder.commands_info if t0 <= t < t0 + 4.0]
    assert len(sent) > 10, sent
    per_sim_second = (len(sent) - 1) / (SIM_RATE * (sent[-1] - sent[0]))
    assert 0.5 * RATE <= per_sim_second <= 1.1 * RATE, per_sim_second


def test_diagnostics_ages_are_simulated_seconds(running):
    feeder, node = running
    assert wait_for(lambda: feeder.latest_status() is not None and level(feeder.latest_status()) == 0, timeout=5), \
        feeder.latest_status()
    values = status_values(feeder.latest_status())
    for name in PARAMS["cameras.names"] + ["joint_states"]:
        assert -0.1 <= float(values[f"age_{name}_s"]) < PARAMS["max_observation_age_s"], (name, values)
