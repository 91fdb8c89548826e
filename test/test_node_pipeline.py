"""Pipelining in the node: observations are prepared while the engine runs, and never acted on when superseded or
stale. The engine is slowed by the test-only fault injection (a fixed delay stands in for a GPU's inference time)."""
import json
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from ros_helpers import node_session, status_values, wait_for  # noqa: E402

from turbopi_ros.faults import ENV  # noqa: E402


def _stamps(feeder, t0):
    return np.array([m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for _, m in feeder.since(feeder.chunks, t0)])


def test_chunks_come_from_ever_newer_observations_and_a_stale_one_is_dropped(tmp_path):
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"delay_s": 0.05}))
    with node_session(tmp_path, min_chunks=3, env={ENV: str(faults)}) as (feeder, node):
        t0 = time.monotonic()
        assert wait_for(lambda: len(feeder.since(feeder.chunks, t0)) >= 6, timeout=30)
        stamps = _stamps(feeder, t0)
        assert np.all(np.diff(stamps) > 0), "a chunk from an older observation than the one before"
        values = status_values(feeder.latest_status())
        assert float(values["engine_ms"]) >= 50.0  # the injected delay is inside the engine's time
        assert "observation_to_chunk_ms" in values and "superseded" in values

        # The engine hangs 1.5 s: the observation prepared meanwhile waits in the slot, goes stale (> 0.5 s) and is
        # dropped when the engine is free again; the next one is prepared from fresh inputs.
        faults.write_text(json.dumps({"hang_s": 1.5}))
        assert wait_for(lambda: "observation went stale before inference" in node.log(), timeout=15), \
            node.log()[-2000:]
        faults.write_text(json.dumps({"delay_s": 0.05}))
        assert wait_for(lambda: float(status_values(feeder.latest_status()).get("dropped_stale", 0)) >= 1, timeout=5)
        t_back = time.monotonic()
        assert wait_for(lambda: len(feeder.since(feeder.chunks, t_back)) >= 3, timeout=30), node.log()[-2000:]
        assert np.all(np.diff(_stamps(feeder, t0)) > 0)  # before, across and after the hang


def test_a_repeated_observation_is_never_inferred_twice(tmp_path):
    """Inputs republished with the stamps they had (a driver repeating its last measurement) are no new observation:
    no chunk is computed from them, and so no two chunks ever share a stamp (a chunk's stamp names its observation)."""
    with node_session(tmp_path, min_chunks=3) as (feeder, node):
        feeder.faults["frozen_stamps"] = True  # for 0.4 s: under max_observation_age_s 0.5, so nothing goes stale
        time.sleep(0.4)
        frozen = dict(feeder.last_stamp)
        feeder.faults.pop("frozen_stamps")
        time.sleep(0.2)  # the chunk that was being computed when the inputs froze arrives
        t_back = time.monotonic()
        assert wait_for(lambda: len(feeder.since(feeder.chunks, t_back)) >= 3, timeout=30), node.log()[-2000:]
        # Every observation during the freeze has the newest frozen stamp; the code before this test published a
        # chunk from each (ten in 0.4 s), all with that stamp.
        stamps = _stamps(feeder, 0.0)
        assert np.all(np.diff(stamps) > 0), f"two chunks from one observation: {stamps} (frozen at {frozen})"
