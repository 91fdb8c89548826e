"""Two rates: control_rate_hz is the model's action rate (chunk point spacing); ~/joint_command runs at
command_rate_hz, or with 0 at the rate the robot publishes joint states at, measured and reported on /diagnostics.
And inference pacing: inference_period_s > 0 starts an inference at most that often.

Each rate is compared with what really happened, never with a nominal rate the test machine may not reach: the joint
states the feeder really sent (its own publish times), the commands as the node published them (their rmw source
timestamps, so this process's reception delays and drops do not count) and the chunks' observation stamps."""
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from ros_helpers import (assert_reported_command_rate, joint_states_rate_sent, node_session, reported,  # noqa: E402
                         stamp_of, trajectory_times, wait_for, wait_for_chunk_cover)


def _published_commands(feeder, seconds: float) -> np.ndarray:
    """Source times (s) of the commands the node published from now until the chunks had an action for now during
    ``seconds`` (ros_helpers.wait_for_chunk_cover: ``seconds`` later on an idle machine; on one so loaded that an
    inference outlasts most of a chunk, the commands rightly stop between chunks, and it waits longer)."""
    t0 = time.monotonic()
    waited = wait_for_chunk_cover(lambda: feeder.since(feeder.chunks, 0.0), t0, seconds)
    with feeder.lock:
        sent = np.array([s for t, s in feeder.commands_info if t >= t0])
    assert len(sent) > 10, f"{len(sent)} commands in {waited:.1f} s, {seconds:g} s of them with a chunk for now"
    return sent


def _diag(feeder, key: str) -> float:
    return reported(feeder, key)[1]


@pytest.mark.parametrize("joint_rate_hz", [100.0, 250.0])
def test_commands_follow_the_measured_joint_states_rate(tmp_path, joint_rate_hz):
    """The node measures the rate the joint states really arrive at (within 5 % of what the feeder sent), aims its
    command stream at it, and publishes at it: the commands' median period within 10 % of that target (a Python
    thread's wake-ups on a loaded 2-core machine: at 100 Hz one run in 6 measured 10.8 ms for 10.0 on an AVX2 machine
    under Jazzy); not at the 50 Hz control rate. 250 Hz, 5x the control rate, and not 500: there the feeder and the
    node could not pass 500 messages a second each way beside the inference (the node took 185-475 a second of the
    390-500 the feeder sent, and its command thread ticked every 2.25-2.3 ms, not 2.0: 6 failures in 6 runs, 3 in 6
    with one inference a second), which is what that machine allows, not what the node does; at 250 Hz both rates
    passed 6 runs in 6 there. The measurement at 500 Hz with drops is test_rates.py's, without the machine in the way.
    The mean rate a machine sustains is a benchmark's business (turbopi-exec-bench), not this test's: on a machine too
    loaded for the chunks to meet (inferences longer than what is left of a chunk when it comes), the commands stop
    between chunks, as they should, and /diagnostics must report the rate they really came at."""
    tolerance = 0.10
    with node_session(tmp_path, min_chunks=2, joint_rate_hz=joint_rate_hz, overrides={"command_rate_hz": 0.0}) as (
            feeder, node):
        time.sleep(2.5)  # the command stream follows the measured rate within the next 1 s housekeeping tick
        sent = _published_commands(feeder, 1.5)
        reported_at, measured = reported(feeder, "joint_states_rate_hz")
        really_sent = joint_states_rate_sent(feeder, reported_at)
        assert measured == pytest.approx(really_sent, rel=0.05), (measured, really_sent)
        target_ms = _diag(feeder, "command_period_target_ms")
        assert target_ms == pytest.approx(1e3 / measured, rel=0.05), node.log()[-2000:]
        assert np.median(np.diff(sent)) * 1e3 == pytest.approx(target_ms, rel=tolerance), node.log()[-2000:]
        assert np.median(np.diff(sent)) < 0.75 / 50.0  # not the 50 Hz control rate
        assert_reported_command_rate(feeder)
        # chunks keep the model's action rate whatever the command rate
        _, chunk = feeder.since(feeder.chunks, 0.0)[-1]
        assert np.allclose(np.diff(trajectory_times(chunk)), 1.0 / 50.0)


def test_fixed_command_rate_and_the_joint_states_rate_still_reported(tmp_path):
    """A fixed command_rate_hz: the commands' median period is its period (the mean rate, which a loaded machine's
    missed wake-ups lower, is turbopi-exec-bench's business, and /diagnostics reports it as it was), whatever rate the
    joint states come at."""
    with node_session(tmp_path, min_chunks=2, joint_rate_hz=50.0, overrides={"command_rate_hz": 100.0}) as (
            feeder, node):
        sent = _published_commands(feeder, 1.5)
        assert np.median(np.diff(sent)) == pytest.approx(0.01, rel=0.05)
        assert_reported_command_rate(feeder)
        reported_at, measured = reported(feeder, "joint_states_rate_hz")
        assert measured == pytest.approx(joint_states_rate_sent(feeder, reported_at), rel=0.05)


def test_inference_pacing(tmp_path):
    """Observations are taken at most every 0.5 s: consecutive chunks' observation stamps (the newest input when the
    engine took it, at most one 50 Hz joint-state period earlier) are over 0.4 s apart. And no later than the period
    and the engine allow: the next is taken when 0.5 s have passed or the engine is free (the chunk published),
    whichever is later; the median delay past that under 0.1 s (a loaded machine's late wake-ups and slow inferences
    are what really happened, not the node's pacing). /diagnostics reports the rate the chunks were published at."""
    with node_session(tmp_path, min_chunks=1, overrides={"inference_period_s": 0.5}) as (feeder, node):
        t0 = time.monotonic()
        assert wait_for(lambda: len(feeder.since(feeder.chunks, t0)) >= 8, timeout=60), node.log()[-2000:]
        with feeder.lock:
            chunks = [(source, stamp_of(m)) for t, source, m in feeder.chunks_info if t >= t0]
        published, stamps = (np.array(column) for column in zip(*chunks))
        gaps = np.diff(stamps)
        assert np.all(gaps > 0.4), gaps
        allowed = np.maximum(0.5, published[:-1] - stamps[:-1])  # the period, or the engine still busy
        assert np.median(gaps - allowed) < 0.1, (gaps, allowed)

        def published_rate() -> float:
            with feeder.lock:
                times = [source for _, source, _ in feeder.chunks_info]
            return (len(times) - 1) / (times[-1] - times[0])

        assert wait_for(lambda: _diag(feeder, "chunk_rate_hz") == pytest.approx(published_rate(), rel=0.15),
                        timeout=5), (_diag(feeder, "chunk_rate_hz"), published_rate())
