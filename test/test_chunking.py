import numpy as np
import pytest

from turbopi_ros.policy.chunking import Chunk, ChunkSchedule

RATE = 50.0


def ramp(H=10, n=2, offset=0.0):
    return np.arange(H, dtype=float)[:, None] * np.ones(n) + offset


def test_action_k_applies_at_stamp_plus_k_plus_one_periods():
    chunk = Chunk(ramp(), stamp=100.0, rate_hz=RATE)
    assert np.allclose(chunk.at(100.0 + 1 / RATE), [0, 0])
    assert np.allclose(chunk.at(100.0 + 4 / RATE), [3, 3])
    assert np.allclose(chunk.at(100.0 + 4.5 / RATE), [3.5, 3.5])  # linear between points
    assert np.allclose(chunk.at(99.0), [0, 0])  # before the first point: the first action
    assert np.allclose(chunk.at(100.0 + 10 / RATE), [9, 9])
    assert chunk.at(100.0 + 10.5 / RATE) is None  # used up
    assert chunk.end == pytest.approx(100.2)


def test_latency_is_compensated():
    """A chunk that arrives 80 ms after its observation starts 80 ms (4 steps) into itself."""
    s = ChunkSchedule(RATE, blend_s=0.0)
    s.set_chunk(ramp(), stamp=10.0, now=10.08)
    assert np.allclose(s.command(10.08), [3, 3])


def test_a_halt_stops_where_the_chunk_is_halfway_through_the_braking_time_then_the_last_then_none():
    s = ChunkSchedule(RATE, blend_s=0.0)
    assert s.halt_action(10.0, 0.2) is None  # no chunk
    s.set_chunk(ramp(), stamp=10.0, now=10.0)  # action k at 10 + (k + 1) / 50
    assert np.allclose(s.halt_action(10.08, 0.04), [4, 4])  # at 10.1 s: action 4
    assert np.allclose(s.halt_action(10.08, 0.2), [8, 8])  # at 10.18 s
    assert np.allclose(s.halt_action(10.09, 0.04), [4.5, 4.5])  # between two actions: as the commands interpolate
    assert np.allclose(s.halt_action(10.15, 0.2), [9, 9])  # the chunk ends before 10.25 s: its last action
    assert s.halt_action(10.25, 0.2) is None  # used up: nothing followed


def test_blend_from_old_to_new_chunk():
    s = ChunkSchedule(RATE, blend_s=0.1)
    s.set_chunk(ramp(50, offset=0.0), stamp=0.0, now=0.0)
    s.set_chunk(ramp(50, offset=100.0), stamp=0.2, now=0.2)
    # at the switch the command is still the old chunk's (index 9), not a jump to the new one (100)
    assert np.allclose(s.command(0.2), [9.0, 9.0])
    mid = s.command(0.25)
    assert np.allclose(mid, 0.5 * (0.25 * RATE - 1) + 0.5 * (100.0 + (0.05 * RATE - 1)))
    assert np.allclose(s.command(0.31), 100.0 + (0.11 * RATE - 1))  # after the blend: the new chunk alone


@pytest.mark.parametrize("latency_s", [0.0, 0.03, 0.08])
def test_the_blended_chunk_is_what_the_commands_follow_at_each_actions_time(latency_s):
    """blended(actions, stamp, now), before set_chunk: at every action's time from ``now`` on, the command
    set_chunk(actions, stamp, now) then gives (old faded into new over blend_s), the raw actions after the blend; the
    actions whose time is already past hold the old chunk's (where the fade has not begun)."""
    s = ChunkSchedule(RATE, blend_s=0.1)
    s.set_chunk(ramp(50, offset=0.0), stamp=0.0, now=0.0)
    new, stamp = ramp(50, offset=100.0) + np.array([0.0, -3.0]), 0.2
    now = stamp + latency_s
    blended = s.blended(new, stamp, now)
    times = stamp + np.arange(1, 51) / RATE
    s.set_chunk(new, stamp, now)
    ahead = np.flatnonzero(times >= now - 1e-12)
    commands = np.array([s.command(t) for t in times[ahead]])
    assert np.allclose(blended[ahead], commands, rtol=0, atol=1e-9)
    fading = times < now + 0.1 - 1e-9
    assert not np.allclose(blended[fading], new[fading]) and np.array_equal(blended[~fading], new[~fading])
    past = times < now - 1e-12
    assert np.allclose(blended[past], (times[past] * RATE - 1)[:, None] * np.ones(2))  # the old chunk's ramp


def test_nothing_to_blend_leaves_the_chunk_as_it_is():
    """No chunk being executed, one used up, or blend_s 0: blended gives the actions themselves."""
    new = ramp(5, offset=7.0)
    s = ChunkSchedule(RATE, blend_s=0.5)
    assert np.array_equal(s.blended(new, 1.0, 1.0), new)  # no chunk yet
    s.set_chunk(ramp(5), stamp=0.0, now=0.0)
    assert np.array_equal(s.blended(new, 1.0, 1.0), new)  # used up at 0.1 s
    assert not np.array_equal(s.blended(new, 0.05, 0.05), new)
    s.blend_s = 0.0
    assert np.array_equal(s.blended(new, 0.05, 0.05), new)


def test_no_blend_when_the_old_chunk_is_used_up():
    s = ChunkSchedule(RATE, blend_s=0.5)
    s.set_chunk(ramp(5), stamp=0.0, now=0.0)
    s.set_chunk(ramp(5, offset=7.0), stamp=1.0, now=1.0)
    assert np.allclose(s.command(1.0), [7.0, 7.0])


def test_clear_and_exhaustion_give_no_command():
    s = ChunkSchedule(RATE)
    assert s.command(0.0) is None and not s.has_chunk
    s.set_chunk(ramp(3), stamp=0.0, now=0.0)
    assert s.command(0.5) is None
    s.set_chunk(ramp(3), stamp=1.0, now=1.0)
    s.clear()
    assert s.command(1.01) is None


def test_bad_arguments():
    with pytest.raises(ValueError):
        ChunkSchedule(0.0)
    with pytest.raises(ValueError):
        ChunkSchedule(50.0, blend_s=-1)
    with pytest.raises(ValueError):
        Chunk(np.zeros((0, 3)), 0.0, 50.0)


FADE_RATE = 50.0


def _constant(value, H=50, n=2):
    return np.full((H, n), float(value))


def test_a_chunk_arriving_while_the_previous_blend_is_running_does_not_step_the_command():
    """Chunks every 40 ms (back-to-back inference on a GPU) with blend_s 0.1: chunk B arrives at 0.2 s and fades in
    from A; C arrives at 0.24 s, while the command is still halfway between A and B. The command must stay
    continuous at that switch: before it, 0.6 A + 0.4 B; right after it, the same. The schedule used to fade C from
    B's raw trajectory, so the command stepped from the A/B mix to B (a jump of 0.6 |A - B|)."""
    s = ChunkSchedule(FADE_RATE, blend_s=0.1)
    s.set_chunk(_constant(0.0), stamp=0.0, now=0.0)       # A
    s.set_chunk(_constant(1.0), stamp=0.19, now=0.2)      # B: fades in over 0.2..0.3 s
    before = s.command(0.24)
    assert np.allclose(before, 0.4)                    # 0.6 A + 0.4 B
    blended = s.blended(_constant(2.0), 0.23, 0.24)       # what the group trajectories get for C
    s.set_chunk(_constant(2.0), stamp=0.23, now=0.24)     # C
    after = s.command(0.24)
    assert np.allclose(after, before, atol=1e-9), f"the command steps from {before} to {after} at C's arrival"
    # and the group trajectories, which are what the command stream will follow, start where it is too
    t1 = 0.23 + 1 / FADE_RATE                               # C's first action time, 0.25 s: 0.01 s into C's blend
    assert np.allclose(s.command(t1), blended[0], atol=1e-9)
    steps = np.abs(np.diff([s.command(t)[0] for t in np.arange(0.2, 0.4, 0.002)]))
    # the fades move it at most (1 + 2) / blend_s = 30 / s: 0.06 in 2 ms
    assert steps.max() < 0.07, f"a step of {steps.max():.3f} in 2 ms"
