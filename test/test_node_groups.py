"""Action groups through the node (ros/action_outputs.py): one JointTrajectory and one command stream per group, as
one ros2_control controller per arm and one for the gripper take them (group_helpers.GROUPS: a left arm in position,
a right arm in velocity, a gripper)."""
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from group_helpers import (COMMAND_HZ, GROUPS, LIMIT, Recorder, check_command_rates, check_group_trajectories,  # noqa: E402
                           group_overrides)
from ros_helpers import node_session, stamp_of, trajectory_times, wait_for, wait_for_chunk_cover  # noqa: E402


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    overrides = group_overrides()
    with node_session(tmp_path_factory.mktemp("groups"), min_chunks=1, overrides=overrides) as (feeder, node):
        recorder = Recorder(feeder)
        t0 = time.monotonic()
        assert wait_for(lambda: all(len(recorder.since(recorder.trajectories[g], t0)) >= 3 for g in GROUPS),
                        timeout=60), node.log()
        yield feeder, node, recorder


def _blend_came(feeder) -> bool:
    """A chunk was published (rmw source time) while the one before still had actions: the group trajectories
    published with it carry the blend."""
    with feeder.lock:
        chunks = [(source, m) for _, source, m in feeder.chunks_info]
    return any(source < stamp_of(before) + trajectory_times(before)[-1]
               for (_, before), (source, _) in zip(chunks, chunks[1:]))


def test_each_group_gets_only_its_joints_in_a_trajectory_its_controller_can_follow(running):
    """Checked once a chunk came while the one before still had actions: a loaded run (beside a busy loop: inferences
    of over 1 s, longer than a chunk lasts) had none among the three trajectories the fixture waits for, and so no
    blend to see."""
    feeder, node, recorder = running
    assert wait_for(lambda: _blend_came(feeder), timeout=60), node.log()[-3000:]
    time.sleep(0.5)  # the group trajectories published with it arrive
    counts = check_group_trajectories(feeder, recorder)
    assert counts["clamped"] > 0  # the velocity limit was exercised
    assert counts["blended"] > 0  # the trajectories carried the blend from one chunk to the next


def test_each_command_stream_runs_at_the_command_rate_with_its_joints(running):
    feeder, node, recorder = running
    t0 = time.monotonic() + 0.5
    seconds = wait_for_chunk_cover(lambda: feeder.since(feeder.chunks, 0.0), t0, 4.0)
    check_command_rates(recorder, t0, seconds, feeder.since(feeder.chunks, 0.0))
    assert feeder.since(feeder.commands, 0.0) == [], "with groups, ~/joint_command is not published"
    # one tick, one command per group: the streams' counts agree over one span of the node's publish times (rmw
    # source timestamps: by arrival here, a stream delivered later than another on a loaded machine counted fewer).
    # Where the chunks ran out (a loaded machine), the stream stopped, and the velocity group got one zero command
    # there (ActionOutputs.stop): those are counted apart, at most one per gap in the position groups' stream.
    with recorder.lock:
        sent = {g: [(s, np.array(m.data)) for (_, s), (_, m) in zip(recorder.command_sources[g], recorder.commands[g])]
                for g in GROUPS}
        first = [s for t, s in recorder.command_sources[next(iter(GROUPS))] if t0 <= t < t0 + seconds]
    # the other groups of a tick are published after the first group's: up to most of a period later on a loaded
    # machine (the gripper's, third, fell 0.5 period after the last first-group stamp once in a Jazzy CI run)
    lo, hi = min(first) - 0.5 / COMMAND_HZ, max(first) + 0.9 / COMMAND_HZ
    counts, stops = [], 0
    for g, spec in GROUPS.items():
        inside = [(s, data) for s, data in sent[g] if lo <= s <= hi]
        zero = [s for s, data in inside if spec.get("interface") == "velocity" and not np.any(data)]
        counts.append(len(inside) - len(zero))
        stops += len(zero)
    assert max(counts) - min(counts) <= 1 and min(counts) >= len(first), counts
    gaps = int(np.sum(np.diff(first) > 2.5 / COMMAND_HZ))
    assert stops <= gaps + 1, (stops, gaps)


def test_velocity_group_stops_with_a_zero_command(running):
    """~/enable false ends the velocity group's stream with one zero velocity (a forward controller holds its last
    command), while the position groups' streams simply stop; true brings them back."""
    from std_srvs.srv import SetBool

    feeder, node, recorder = running
    commands = np.array([m.data for _, m in recorder.since(recorder.commands["right_arm"], 0.0)])
    assert len(commands) > 20 and np.all(np.abs(commands) <= LIMIT + 1e-12)
    assert np.any(np.abs(commands) > 0.01)  # moving before the stop
    client = feeder.create_client(SetBool, "/turbopi_node/enable")
    assert client.wait_for_service(timeout_sec=10)
    future = client.call_async(SetBool.Request(data=False))
    assert wait_for(future.done, timeout=5) and future.result().success
    t_off = time.monotonic()
    time.sleep(1.0)
    tail = recorder.since(recorder.commands["right_arm"], t_off - 0.5)
    assert tail and list(tail[-1][1].data) == [0.0, 0.0, 0.0], [list(m.data) for _, m in tail[-3:]]
    assert recorder.since(recorder.commands["right_arm"], t_off + 0.25) == []  # one zero, not a stream of them
    assert recorder.since(recorder.commands["left_arm"], t_off + 0.25) == []
    left_tail = recorder.since(recorder.commands["left_arm"], t_off - 0.5)
    assert left_tail and any(abs(v) > 0 for v in left_tail[-1][1].data)  # a position stream is not zeroed
    future = client.call_async(SetBool.Request(data=True))
    assert wait_for(future.done, timeout=5) and future.result().success
    t_on = time.monotonic()
    assert wait_for(lambda: len(recorder.since(recorder.commands["right_arm"], t_on)) > 10, timeout=30), node.log()
