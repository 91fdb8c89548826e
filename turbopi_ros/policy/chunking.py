"""Which action applies now: action chunks on a clock, with a short blend when a new chunk replaces the old one.

A chunk of H actions computed from an observation stamped s: action k is the target at s + (k + 1) / rate (the same
times as the published JointTrajectory). The command at time t interpolates linearly between neighbouring actions,
so inference latency is compensated: a chunk that arrives 80 ms after its observation starts 80 ms into itself.
When a new chunk arrives, the command moves from the old chunk's trajectory to the new one over ``blend_s``.
Past the end of the chunk there is no command (the chunk is used up): the caller stops or holds.
"""
from __future__ import annotations

import threading
from typing import Optional

import numpy as np


class Chunk:
    def __init__(self, actions: np.ndarray, stamp: float, rate_hz: float):
        self.actions = np.asarray(actions, dtype=np.float64)
        if self.actions.ndim != 2 or len(self.actions) == 0:
            raise ValueError(f"a chunk is [H, joints] with H >= 1, got {list(self.actions.shape)}")
        self.stamp = float(stamp)
        self.rate_hz = float(rate_hz)

    @property
    def end(self) -> float:
        return self.stamp + len(self.actions) / self.rate_hz

    def at(self, t: float) -> Optional[np.ndarray]:
        """The interpolated action at time t; before the first action's time, the first action; None past the end."""
        pos = (t - self.stamp) * self.rate_hz - 1.0  # fractional action index
        last = len(self.actions) - 1
        if pos > last + 1e-9:
            return None
        if pos <= 0.0:
            return self.actions[0].copy()
        k = int(np.floor(pos))
        if k >= last:
            return self.actions[last].copy()
        a = pos - k
        return (1.0 - a) * self.actions[k] + a * self.actions[k + 1]


class Fade:
    """The command's trajectory while a chunk switch at ``switched_at`` fades ``old`` (a Chunk, or a Fade still running
    then) into the chunk ``new`` over ``blend_s``: what a later chunk set during the fade must fade from, or the
    command would step from the mix to ``new`` at that switch."""

    def __init__(self, old, new: Chunk, switched_at: float, blend_s: float):
        self.old, self.new, self.switched_at, self.blend_s = old, new, float(switched_at), float(blend_s)

    def at(self, t: float) -> Optional[np.ndarray]:
        new = self.new.at(t)
        if new is None or t - self.switched_at >= self.blend_s:
            return new
        old = self.old.at(t)
        if old is None:
            return new
        a = max((t - self.switched_at) / self.blend_s, 0.0)
        return (1.0 - a) * old + a * new

    def settled(self, t: float):
        """The same trajectory from ``t`` on, with the fades that have ended by then replaced by their new chunk."""
        if t - self.switched_at >= self.blend_s or self.old.at(t) is None:
            return self.new
        old = self.old.settled(t) if isinstance(self.old, Fade) else self.old
        return Fade(old, self.new, self.switched_at, self.blend_s)


class ChunkSchedule:
    """Thread-safe: the inference worker sets chunks, the control timer reads commands."""

    def __init__(self, rate_hz: float, blend_s: float = 0.1):
        if rate_hz <= 0:
            raise ValueError(f"control rate must be positive, got {rate_hz}")
        if blend_s < 0:
            raise ValueError(f"blend time must be >= 0, got {blend_s}")
        self.rate_hz = float(rate_hz)
        self.blend_s = float(blend_s)
        self._lock = threading.Lock()
        self._current: Optional[Chunk] = None
        self._previous = None  # what the command followed when the current chunk was set (Chunk or Fade)
        self._switched_at = 0.0
        self._sent = None  # what the trajectory controllers were sent last (Chunk or Fade): halt_action halts it

    def _followed(self, now: float):
        """What the command follows at ``now`` (what a new chunk set then fades from): the current chunk, or while a
        blend is running, its fade from the previous one (Fade); None when the current chunk has no action at
        ``now``. Call with the lock held."""
        if self._current is None or self._current.at(now) is None:
            return None
        if self._previous is None or self.blend_s <= 0:
            return self._current
        return Fade(self._previous, self._current, self._switched_at, self.blend_s).settled(now)

    def _fade(self, old: np.ndarray, new: np.ndarray, t: float, switched_at: float) -> np.ndarray:
        """The command at ``t`` between the old chunk's action ``old`` and the new one's ``new``, a chunk switch at
        ``switched_at``: old until then, new from blend_s later, linear between."""
        a = max((t - switched_at) / self.blend_s, 0.0)
        return (1.0 - a) * old + a * new

    def set_chunk(self, actions: np.ndarray, stamp: float, now: float) -> None:
        chunk = Chunk(actions, stamp, self.rate_hz)
        with self._lock:
            self._previous = self._followed(now)
            self._current = chunk
            self._switched_at = now
            self._sent = chunk if self._previous is None or self.blend_s <= 0 else Fade(
                self._previous, chunk, now, self.blend_s)

    def blended(self, actions: np.ndarray, stamp: float, now: float) -> np.ndarray:
        """The chunk ``actions`` [H, N] observed at ``stamp`` as the commands will follow it once set_chunk(actions,
        stamp, now) makes it the current one: at each action's own time t_k = stamp + (k + 1) / rate before the blend
        ends (now + blend_s), what command(t_k) will give, the chunk being executed now faded into this one (its own
        action before ``now``, where the fade has not begun); the rest unchanged. A controller given these instead of
        the raw chunk meets the blended command stream at every point, where the raw chunk jumps on arrival from the
        old chunk's position to the new one's. Unchanged without a chunk being executed at ``now`` or with blend_s 0."""
        chunk = Chunk(actions, stamp, self.rate_hz)
        out = chunk.actions.copy()
        with self._lock:
            old = self._followed(now)
        if old is None or self.blend_s <= 0:
            return out
        times = chunk.stamp + np.arange(1, len(out) + 1) / self.rate_hz
        for k in np.flatnonzero(times < now + self.blend_s):
            was = old.at(times[k])
            if was is None:  # the old chunk ends before t_k: command(t_k) is the new chunk's alone
                continue
            out[k] = self._fade(was, out[k], times[k], now)
        return out

    def clear(self, followed: bool = False) -> None:
        """No command from here on. ``followed``: a problem stopped the commands, not the chunk a trajectory
        controller is following (docs/node.md, Outputs): halt_action still halts that one; else (the operator's
        stop, after its halt) it is forgotten too."""
        with self._lock:
            self._current = self._previous = None
            if not followed:
                self._sent = None

    @property
    def has_chunk(self) -> bool:
        with self._lock:
            return self._current is not None

    @property
    def current(self) -> Optional[Chunk]:
        """The chunk being executed (the newest one set), or None after clear()."""
        with self._lock:
            return self._current

    def halt_action(self, now: float, halt_s: float) -> Optional[np.ndarray]:
        """Where a halt at ``now`` over ``halt_s`` seconds stops: the command at now + halt_s / 2, which a joint
        moving at the chunk's speed v reaches by braking evenly (v / halt_s) to a stop in halt_s; where the chunk
        ends before that, its last action. None when the chunk sent last has no action at ``now``: nothing is
        followed. Also after a problem stopped the commands (clear(followed=True)): a trajectory controller still
        follows that chunk."""
        with self._lock:
            sent = self._sent
        if sent is None or sent.at(now) is None:
            return None
        target = sent.at(now + halt_s / 2.0)
        if target is None:
            target = (sent.new if isinstance(sent, Fade) else sent).actions[-1].copy()
        return target

    def command(self, now: float) -> Optional[np.ndarray]:
        with self._lock:
            if self._current is None:
                return None
            new = self._current.at(now)
            if new is None:
                return None
            if self._previous is not None and self.blend_s > 0:
                old = self._previous.at(now)
                if now - self._switched_at < self.blend_s and old is not None:
                    return self._fade(old, new, now, self._switched_at)
                self._previous = None
            return new
