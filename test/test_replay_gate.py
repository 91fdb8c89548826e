"""Replay decides as the node's engine and chunk gate decide: one chunk per observation (named by its newest input's
stamp and the prompt, engine_worker.py), and no chunk whose actions all lie in the past when it is done
(chunk_gate.py, test_node_late_chunks.py)."""
import numpy as np
import pytest

pytest.importorskip("rosbags")
pytest.importorskip("sensor_msgs")

from test_replay import BASE, T0, params_for, read_back, write_bag  # noqa: E402

from turbopi_ros.tools.replay import replay  # noqa: E402


def chunk_stamps(out) -> np.ndarray:
    messages, _ = read_back(out / "chunks.mcap")
    return np.array([t for t, _ in messages["/turbopi_node/action_chunk"]]) * 1e-9 - T0


def test_a_camera_frame_no_newer_than_the_newest_input_starts_no_second_chunk(tmp_path):
    """The wrist camera's frame arrives 1 ms after the joint state stamped as it is (write_bag: arrivals 1, 2 and 3
    ms after the stamps). The node names an observation by its newest input's stamp: a frame that brings no newer
    stamp starts no inference, so no two of its chunks share a stamp (docs/reliability.md, promise 6). Replay inferred
    again on every new message, and published two chunks stamped 0.1 s, 0.2 s, ..."""
    bag = tmp_path / "in.mcap"
    write_bag(bag)
    out = tmp_path / "out"
    report = replay(bag, params_for(tmp_path), out, start_s=0.05, duration_s=0.5, period_s=0.0005,
                    show_progress=False)
    stamps = np.round(chunk_stamps(out), 6)
    repeated = sorted({s for s in stamps if (stamps == s).sum() > 1})
    assert report["chunks"] > 0 and repeated == [], f"chunks sharing a stamp: {repeated}"


def test_a_chunk_whose_actions_all_lie_in_the_past_is_skipped_as_the_node_drops_it(tmp_path, monkeypatch):
    """Every input arrives 0.3 s after its stamp (a sensor pipeline's delay: fresh, under max_observation_age_s 0.5),
    and a chunk spans 0.2 s (50 actions at 250 Hz): each chunk's last action is due before the observation is even
    made, so the node drops every one (chunk_gate.py: all its actions lie in the past). Replay published them all."""
    import test_replay

    for topic in test_replay.ARRIVAL_MS:
        monkeypatch.setitem(test_replay.ARRIVAL_MS, topic, 300)
    bag = tmp_path / "in.mcap"
    write_bag(bag)
    report = replay(bag, params_for(tmp_path, control_rate_hz=250.0), tmp_path / "out", period_s=0.25,
                    show_progress=False)
    dropped = [s for s in report["skips"]["by_reason"].values() if s["kind"] == "dropped"]
    assert report["chunks"] == 0 and len(dropped) == 1 and dropped[0]["count"] > 0, report["skips"]
    assert "chunk dropped: all its actions lie in the past" in dropped[0]["example"], dropped


def test_recorded_chunks_after_one_the_node_computed_and_dropped_are_still_reproduced(tmp_path):
    """The node draws its noise for every chunk it computes, also for one its chunk gate drops (its actions all in the
    past under load, its inputs stale once done, action.max_jump): that chunk is not on ~/action_chunk, so the
    recording's next chunks were made one draw further on. Replay kept the noise in step with the recorded chunks
    only, and reproduced none of the chunks after such a drop."""
    from test_replay import node_chunks_and_inputs, write_recording

    params = params_for(tmp_path)
    inputs, chunks = node_chunks_and_inputs(tmp_path, params)
    bag = tmp_path / "recording.mcap"
    write_recording(bag, inputs, chunks[:3] + chunks[4:])  # the node computed chunks[3] and dropped it
    report = replay(bag, params, tmp_path / "out", at_recorded_chunks=True, show_progress=False)
    recorded = report["recorded_chunks"]
    assert recorded["compared"] == recorded["reproduced_bit_for_bit"] == 7, recorded
    assert recorded["noise_offset"] == 0 and recorded["dropped_by_the_node"] == 1, recorded


def test_a_chunk_whose_inputs_went_stale_while_it_was_computed_is_skipped_as_the_node_drops_it(tmp_path):
    """The base camera's last frame is stamped 0.9 s; the instant at 1.399 s still finds it fresh (0.499 s old, under
    max_observation_age_s 0.5), but by the time the chunk is done (an inference later) it is stale and no newer
    frame came: the node's chunk gate drops that chunk (its inputs went stale while it was computed). Replay published
    it."""
    bag = tmp_path / "in.mcap"
    write_bag(bag, stop={BASE: 1.0})  # the bag starts at the base frame's arrival, 1 ms after T0
    report = replay(bag, params_for(tmp_path), tmp_path / "out", start_s=1.398, duration_s=0.3, period_s=1.0,
                    show_progress=False)
    dropped = [s for s in report["skips"]["by_reason"].values() if s["kind"] == "dropped"]
    assert report["instants"] == 1 and report["chunks"] == 0 and len(dropped) == 1, report["skips"]
    assert dropped[0]["example"].startswith("chunk dropped: its inputs went stale while it was computed: camera "
                                            "'base_0_rgb': newest message is "), dropped


def test_only_the_chunk_whose_inputs_went_stale_is_dropped_among_others(tmp_path):
    """As above, with chunks before it (every 0.25 s from 0.399 s): those stay, the one at 1.399 s goes."""
    bag = tmp_path / "in.mcap"
    write_bag(bag, stop={BASE: 1.0})
    report = replay(bag, params_for(tmp_path), tmp_path / "out", start_s=0.398, duration_s=1.2, period_s=0.25,
                    show_progress=False)
    dropped = [s for s in report["skips"]["by_reason"].values() if s["kind"] == "dropped"]
    assert report["chunks"] == 4 and len(dropped) == 1 and dropped[0]["first_at_s"] == 1.0, report["skips"]
