"""The last check before a computed chunk goes out: is it still about now, and does it start where the robot was?

Its observation was fresh when the engine took it, but while it was computed the clock may have jumped back, a sensor
may have stopped, or the whole node may have paused. Such a chunk is dropped, as the command stream stops, rather than
published with a stamp far in the past (a controller would jump to its last point) or in the future (it would wait
that long to start). So is a chunk whose actions are all due already (an inference slower than the chunk's span, or
the clock jumped forward): a joint_trajectory_controller rejects a trajectory that ends in the past, and the commands
would have nothing to follow, with no word of why. So is a chunk whose first action lies further from the observed
joint positions than action.max_jump allows (policy/jump_limit.py): a controller would jump towards it."""
from __future__ import annotations

from typing import Optional

from ..policy.jump_limit import JumpLimit
from .inputs import InputBuffer
from .pauses import PauseWatch


class ChunkGate:
    def __init__(self, inputs: InputBuffer, pauses: PauseWatch, jump: Optional[JumpLimit] = None):
        self.inputs, self.pauses, self.jump = inputs, pauses, jump

    def refuse(self, stamp: float, taken_at: float, now: float, span_s: float = float("inf")) -> Optional[str]:
        """Why a chunk whose observation is stamped ``stamp`` (node clock) and was taken at ``taken_at`` (monotonic)
        must not be published at ``now`` (node clock); None when it may. ``span_s``: its actions' span (H /
        control_rate_hz): its last action is due at ``stamp + span_s``."""
        ahead = stamp - now
        if ahead > self.inputs.max_age_s:  # use_sim_time: a simulation or bag restarted
            return (f"chunk dropped: its observation is stamped {ahead:.2f} s ahead of the node's clock (the clock "
                    "jumped back while it was computed)")
        past = in_the_past(stamp, now, span_s)
        if past:
            return past
        stale = went_stale(self.inputs, now)
        if stale:
            return stale
        # whether or not fresh inputs arrived first after the pause; from the moment the observation was taken, not
        # the run's start: a pause between its last freshness check and the run's start leaves it as old
        if self.pauses.paused_since(taken_at):
            return "chunk dropped: the node paused after its observation was taken, the observation is stale"
        return None

    def refuse_actions(self, actions, state) -> Optional[str]:
        """Why a chunk ``actions`` [H, N] computed from the observed ``state`` must not be published (its first action
        jumps too far: action.max_jump); None when it may."""
        return None if self.jump is None else self.jump.problem(actions, state)


def in_the_past(stamp: float, now: float, span_s: float) -> Optional[str]:
    """Why a chunk observed at ``stamp`` whose actions span ``span_s`` (its last one due at ``stamp + span_s``) must
    not be published at ``now``: all its actions are due already; None when one is still to come (offline replay
    drops such a chunk too)."""
    if stamp + span_s >= now:
        return None
    return (f"chunk dropped: all its actions lie in the past: its observation is stamped {now - stamp:.2f} s ago, "
            f"and its actions span {span_s:.2f} s (action horizon / control_rate_hz); the inference is slower than "
            "a chunk lasts, or the clock jumped forward")


def went_stale(inputs: InputBuffer, now: float) -> Optional[str]:
    """Why a chunk must not be published at ``now`` when the newest ``inputs`` are stale by then (they went stale
    while it was computed); None when they are fresh (offline replay drops such a chunk too)."""
    stale = inputs.stale(inputs.snapshot(), now)
    return f"chunk dropped: its inputs went stale while it was computed: {stale}" if stale else None
