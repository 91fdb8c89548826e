"""Real-time chunking through the node: with rtc.enabled each new chunk starts where the chunk being executed would
have been at the same times (its first actions are guided onto it); switched off at run time, consecutive chunks of
the tiny random model disagree from their first action on. /diagnostics reports the guidance error."""
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from ros_helpers import node_session, stamp_of, status_values, wait_for  # noqa: E402

from turbopi_ros.policy.chunking import Chunk  # noqa: E402

RATE = 50.0
FIRST = 3  # actions compared: fewer than the d the node uses (its latency in actions is larger than 3 here)


def _chunks(feeder, t0):
    chunks = []
    for _, msg in feeder.since(feeder.chunks, t0):
        chunks.append(Chunk(np.array([p.positions for p in msg.points]), stamp_of(msg), RATE))
    return chunks


def _first_errors(chunks):
    """RMS distance between each chunk's first actions and its predecessor at the same times: one for each chunk that
    came while its predecessor still had actions (on a machine whose inferences outlast a chunk, some come later)."""
    errors = []
    for prev, new in zip(chunks, chunks[1:]):
        diffs = [new.actions[k] - prev.at(new.stamp + (k + 1) / RATE) for k in range(FIRST)
                 if prev.at(new.stamp + (k + 1) / RATE) is not None]
        if diffs:
            errors.append(float(np.sqrt(np.mean(np.square(diffs)))))
    return np.array(errors)


def _set(feeder, name, value):
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    client = feeder.create_client(SetParameters, "/turbopi_node/set_parameters")
    assert client.wait_for_service(timeout_sec=10)
    future = client.call_async(SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()]))
    assert wait_for(future.done, timeout=5)
    assert future.result().results[0].successful, future.result().results[0].reason


def test_rtc_keeps_consecutive_chunks_consistent_and_can_be_switched_at_run_time(tmp_path):
    with node_session(tmp_path, min_chunks=2, overrides={"rtc.enabled": "true", "blend_s": 0.0}) as (feeder, node):
        t0 = time.monotonic()
        assert wait_for(lambda: len(_first_errors(_chunks(feeder, t0))) >= 7, timeout=120), node.log()[-2000:]
        guided = _first_errors(_chunks(feeder, t0))
        assert wait_for(lambda: "rtc_guidance_error" in status_values(feeder.latest_status()), timeout=5)
        assert float(status_values(feeder.latest_status())["rtc_guidance_error"]) < 0.1

        _set(feeder, "rtc.enabled", False)
        t1 = time.monotonic() + 0.5  # a guided inference in flight may still land
        assert wait_for(lambda: len(_first_errors(_chunks(feeder, t1))) >= 7, timeout=120), node.log()[-2000:]
        plain = _first_errors(_chunks(feeder, t1))
    print(f"first {FIRST} actions, median RMS to the previous chunk: rtc {np.median(guided):.4f}, "
          f"off {np.median(plain):.4f}")
    assert np.median(guided) * 3 < np.median(plain), (np.median(guided), np.median(plain))


def test_rtc_keeps_running_when_an_input_is_stamped_slightly_ahead_of_the_nodes_clock(tmp_path):
    """A sensor whose clock runs ahead of the node's by less than max_observation_age_s is accepted (docs/node.md, Bad
    input), and a chunk's latency (observation stamp to publication) is then negative. Real-time chunking's delay d
    (the recent latencies, in actions) must not turn negative: every inference after the first failed with
    'delay_steps must be an integer >= 0', and no chunk came after the first."""
    with node_session(tmp_path, min_chunks=0, overrides={"rtc.enabled": "true"}) as (feeder, node):
        feeder.faults["joints_age"] = -0.45  # joint states stamped 0.45 s ahead (max_observation_age_s 0.5)
        t0 = time.monotonic() + 1.0
        assert wait_for(lambda: len(feeder.since(feeder.chunks, t0)) >= 4, timeout=90), node.log()[-3000:]
        assert "delay_steps" not in node.log(), node.log()[-3000:]
