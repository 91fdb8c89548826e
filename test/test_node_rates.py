"""Two rates: control_rate_hz is the model's action rate (chunk point spacing); ~/joint_command runs at
command_rate_hz, or with 0 at the rate the robot publishes joint states at, measured and reported on /diagnostics.
And inference pacing: inference_period_s > 0 starts an inference at most that often."""
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from ros_helpers import node_session, status_values, trajectory_times, wait_for  # noqa: E402


def _command_rate(feeder, seconds: float = 5.0) -> float:
    """Commands per second over ``seconds`` of arrivals (median interval: robust to one late delivery)."""
    t0 = time.monotonic()
    time.sleep(seconds)
    arrivals = np.array([t for t, _ in feeder.since(feeder.commands, t0)])
    assert len(arrivals) > 10, f"{len(arrivals)} commands in {seconds:g} s"
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])


def _diag(feeder, key: str) -> float:
    assert wait_for(lambda: feeder.latest_status() is not None and key in status_values(feeder.latest_status()),
                    timeout=5)
    return float(status_values(feeder.latest_status())[key])


@pytest.mark.parametrize("joint_rate_hz, received_tolerance", [(100.0, 0.05), (500.0, 0.10)])
def test_commands_follow_the_measured_joint_states_rate(tmp_path, joint_rate_hz, received_tolerance):
    """The node publishes at the joint_states rate within 5 % (its own count, on /diagnostics). What this test
    process receives is checked too: within 5 % at 100 Hz; at 500 Hz its Python executor, which also publishes the
    joint states and takes chunks, drops some of 500 messages/s on a loaded 2-core machine, hence 10 %."""
    with node_session(tmp_path, min_chunks=2, joint_rate_hz=joint_rate_hz, overrides={"command_rate_hz": 0.0}) as (
            feeder, node):
        time.sleep(2.5)  # the command timer follows the measured rate within the next 1 s housekeeping tick
        received = _command_rate(feeder)
        assert _diag(feeder, "joint_states_rate_hz") == pytest.approx(joint_rate_hz, rel=0.05)
        assert _diag(feeder, "command_period_target_ms") == pytest.approx(1e3 / joint_rate_hz, rel=0.05)
        assert _diag(feeder, "command_rate_hz") == pytest.approx(joint_rate_hz, rel=0.05), node.log()[-2000:]
        assert received == pytest.approx(joint_rate_hz, rel=received_tolerance), node.log()[-2000:]
        # chunks keep the model's action rate whatever the command rate
        _, chunk = feeder.since(feeder.chunks, 0.0)[-1]
        assert np.allclose(np.diff(trajectory_times(chunk)), 1.0 / 50.0)


def test_fixed_command_rate_and_the_joint_states_rate_still_reported(tmp_path):
    with node_session(tmp_path, min_chunks=2, joint_rate_hz=50.0, overrides={"command_rate_hz": 100.0}) as (
            feeder, node):
        assert _command_rate(feeder, 3.0) == pytest.approx(100.0, rel=0.05)
        assert _diag(feeder, "joint_states_rate_hz") == pytest.approx(50.0, rel=0.05)


def test_inference_pacing(tmp_path):
    with node_session(tmp_path, min_chunks=1, overrides={"inference_period_s": 0.5}) as (feeder, node):
        t0 = time.monotonic()
        time.sleep(4.0)
        arrivals = np.array([t for t, _ in feeder.since(feeder.chunks, t0)])
        assert len(arrivals) >= 6 and np.all(np.diff(arrivals) > 0.4), np.diff(arrivals)
        assert (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) == pytest.approx(2.0, rel=0.1)
        assert wait_for(lambda: abs(_diag(feeder, "chunk_rate_hz") - 2.0) < 0.2, timeout=5)
