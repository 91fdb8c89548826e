"""Pipelining in the node: frames are prepared as they arrive (or observations just in time) while the engine runs, and
an observation is never acted on when superseded or stale. The engine is slowed by the test-only fault injection (a
fixed delay stands in for a GPU's inference time)."""
import json
import re
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from ros_helpers import node_session, stamp_of, status_values, wait_for  # noqa: E402

from turbopi_ros.ros.faults import ENV  # noqa: E402


def _stamps(feeder, t0):
    return np.array([stamp_of(m) for _, m in feeder.since(feeder.chunks, t0)])


def _dropped_stale(feeder) -> float:
    return float(status_values(feeder.latest_status()).get("dropped_stale", 0))


@pytest.mark.parametrize("on_arrival", [True, False], ids=["frames_prepared_on_arrival", "prepared_just_in_time"])
def test_chunks_come_from_ever_newer_observations_none_left_waiting(tmp_path, on_arrival):
    """cameras.prepare_on_arrival true (the default): the engine prepares each observation itself once it is free;
    false: the preparing thread prepares it just in time for the engine's end. Either way observations typically wait
    far less than a run (the exact timing rule is PrepareTiming's, tested with a fake clock in test_pipeline.py), and
    none left stale by a hung engine is run."""
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"delay_s": 0.05}))
    overrides = {"cameras.prepare_on_arrival": str(on_arrival).lower()}
    with node_session(tmp_path, min_chunks=3, env={ENV: str(faults)}, overrides=overrides) as (feeder, node):
        t0 = time.monotonic()
        assert wait_for(lambda: len(feeder.since(feeder.chunks, t0)) >= 6, timeout=30)
        stamps = _stamps(feeder, t0)
        assert np.all(np.diff(stamps) > 0), "a chunk from an older observation than the one before"
        # Observations are prepared just in time: in every status the median time a prepared observation sat ready
        # for the engine (prepared_wait, the last 20 observations) is under half that status's median run, where
        # preparing at the start of each run would make it about a whole run. Preparing itself is not judged: a
        # loaded machine slows it as much as it likes, and just in time then starts it that much earlier. Single long
        # waits are the machine's too: a run overruns its predicted end and its observation waits that much longer;
        # the longest wait (inputs taken -> the run starts, observation_wait_max) must still stay within two of the
        # longest runs: no observation is left in the slot across runs. Those of about 60 chunks are looked at: about
        # 10 s of them on a quiet machine; the bound only ends a wait, and a loaded run beside a busy loop got under 60
        # in 60 s (inferences of over 1 s, most chunks dropped as already past)
        t1 = time.monotonic()
        assert wait_for(lambda: len(feeder.since(feeder.chunks, t1)) >= 60, timeout=180), node.log()[-2000:]
        statuses = [status_values(s) for _, m in feeder.since(feeder.diagnostics, t1 + 1.5) for s in m.status
                    if s.name == "turbopi_node: policy"]
        assert len(statuses) >= 3
        for v in statuses:
            engine, ready = float(v["engine_ms"]), float(v["prepared_wait_ms"])
            assert engine >= 50.0  # the injected delay is inside the engine's time
            assert ready < engine / 2, (ready, engine)
            assert ready <= float(v["observation_wait_ms"])  # inputs are taken before they are prepared
        worst = max(float(v["observation_wait_max_ms"]) for v in statuses)
        longest_run = max(float(v["engine_max_ms"]) for v in statuses)
        assert worst < 2 * longest_run, (worst, longest_run)
        values = statuses[-1]
        assert "observation_to_chunk_ms" in values and "superseded" in values
        assert ("frame_prepare_ms" in values) == on_arrival

        # The engine hangs 2.5 s or more. Just in time, the observation prepared meanwhile waits in the slot, goes stale
        # (> 0.5 s) and is dropped when the engine is free again; on demand, none is prepared while it hangs.
        # Either way the next chunk comes from inputs taken after the hang.
        # A loaded machine may have dropped an observation as stale before (a long run): only what comes after the
        # hang was injected counts.
        dropped_before = _dropped_stale(feeder)
        log_before = len(node.log())
        faults.write_text(json.dumps({"hang_s": 60.0}))  # until the file asks for no hang (faults.hang)
        hang_from = time.monotonic()
        # reported once the hang outlasts max(1 s, 5 x the median inference): over 6 s on an overloaded machine
        assert wait_for(lambda: "inference stalled" in node.log()[log_before:], timeout=40), node.log()[-2000:]
        time.sleep(max(0.0, hang_from + 2.5 - time.monotonic()))
        faults.write_text(json.dumps({"delay_s": 0.05}))  # the hang ends: the next runs are normal again
        if not on_arrival:
            stale = "observation went stale before inference"
            assert wait_for(lambda: stale in node.log()[log_before:], timeout=15), node.log()[-2000:]
            # the message says where the time went: the observation prepared for the hung run's end waited for it
            waited = re.search(r"observation went stale before inference: .*; it was taken (\d+\.\d+) s earlier "
                               r"\(preparing it, waiting for the engine\)", node.log()[log_before:])
            assert waited and float(waited.group(1)) > 1.0, node.log()[-2000:]
            assert wait_for(lambda: _dropped_stale(feeder) > dropped_before, timeout=5)
        t_back = time.monotonic()
        assert wait_for(lambda: len(feeder.since(feeder.chunks, t_back)) >= 3, timeout=30), node.log()[-2000:]
        stamps = _stamps(feeder, t0)
        assert np.all(np.diff(stamps) > 0)  # before, across and after the hang
        assert np.max(np.diff(stamps)) > 2.0, "a chunk after the hang from inputs taken before it ended"
        if on_arrival:
            time.sleep(1.1)
            assert float(status_values(feeder.latest_status())["dropped_stale"]) == 0


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
