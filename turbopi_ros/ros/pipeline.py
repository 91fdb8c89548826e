"""Pipelining the node's two kinds of work: preparing an observation (host: conversions, resize, tokenizer) and
running the engine on it (the model stages: on a GPU, the device), without ever acting on old data.

The engine thread runs one prepared observation after another; the preparing thread prepares the next one while the
engine still runs, but as late as it can: at the moment the engine is expected to finish, less the time a
preparation takes (``PrepareTiming``). Preparing earlier would overlap more but hand the engine older data, so the
observation-to-chunk latency would grow by up to a whole inference; prepared just in time, it is the engine's time
plus the preparation plus however long the run overran its median. ``LatestSlot`` holds at most one prepared
observation: a newer one supersedes it (the older one is dropped, never run), and the engine drops one that went
stale while waiting. Taking an observation and marking the engine busy are one step under the slot's lock (``take``'s
``claim``), so the preparing thread never mistakes an engine that is taking one for an idle engine.

That is for a preparation that costs milliseconds (the cameras converted and resized when the observation is taken).
Where the cameras' frames are prepared as they arrive (frames.py), preparing an observation is a copy, and the node's
engine thread prepares it itself once it is free: nothing to predict, and the observation never waits.
"""
from __future__ import annotations

import collections
import math
import threading
import time
from typing import Callable, Deque, Generic, Optional, TypeVar

import numpy as np

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """One item, newest wins: put() replaces what the engine has not taken yet (counted as superseded)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._item: Optional[T] = None
        self.superseded = 0

    def put(self, item: T) -> None:
        with self._cond:
            if self._item is not None:
                self.superseded += 1
            self._item = item
            self._cond.notify_all()

    def peek(self, also: Optional[Callable[[], object]] = None):
        """The item waiting (None if none); with ``also``, (item, also()) read under the slot's lock, so that a take()
        with a claim is seen either before it (the item) or after it (its claim), never in between."""
        with self._cond:
            return self._item if also is None else (self._item, also())

    def take(self, timeout: float, claim: Optional[Callable[[], None]] = None) -> Optional[T]:
        """The item (and empty the slot), or None after ``timeout`` seconds without one. ``claim`` is called when an
        item is taken, under the slot's lock (see peek)."""
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            if item is not None and claim is not None:
                claim()
            return item

    def __bool__(self) -> bool:
        with self._cond:
            return self._item is not None


class PrepareTiming:
    """When to start preparing the next observation, from the recent durations of runs and preparations.

    ``prepare_delay()``: seconds to wait before preparing: 0 while the engine is idle; while it runs, until its
    expected end (median of recent runs; or the end of a pacing pause, if later) less the expected preparation time
    (median of recent preparations, times a margin), so the prepared observation is as fresh as it can be when the
    engine takes it."""

    def __init__(self, window: int = 20, margin: float = 1.0, extra_s: float = 0.0005,
                 clock: Callable[[], float] = time.monotonic):
        self._runs: Deque[float] = collections.deque(maxlen=window)
        self._prepares: Deque[float] = collections.deque(maxlen=window)
        self.margin, self.extra_s, self._clock = margin, extra_s, clock
        self._lock = threading.Lock()
        self._run_started: Optional[float] = None

    def run_started(self) -> None:
        with self._lock:
            self._run_started = self._clock()

    def jit_point(self, not_before: float = -math.inf) -> float:
        """When the observation for the engine's next run should be prepared (clock time): its expected start (the
        end of the run in progress, or ``not_before``, whichever is later; -inf while the engine is idle and free
        to start; the present during the first run, whose end nothing predicts yet) less the expected preparation
        time. An observation prepared before this point is older than it needs to be; one prepared after it is as
        fresh as the engine's next start allows."""
        with self._lock:
            next_start = not_before
            if self._run_started is not None:  # running: its expected end; the first run's is unknown, so "now"
                end = self._run_started + float(np.median(self._runs)) if self._runs else self._clock()
                next_start = max(next_start, end)
            return next_start - self._lead()

    def _lead(self) -> float:
        return (float(np.median(self._prepares)) if self._prepares else 0.0) * self.margin + self.extra_s

    def run_ended(self) -> None:
        with self._lock:
            if self._run_started is not None:
                self._runs.append(self._clock() - self._run_started)
            self._run_started = None

    def run_abandoned(self) -> None:
        """The run claimed by run_started() did not happen (its observation was dropped): no duration recorded."""
        with self._lock:
            self._run_started = None

    def prepared(self, seconds: float) -> None:
        with self._lock:
            self._prepares.append(seconds)

    def prepare_delay(self, not_before: float = -math.inf) -> float:
        """``not_before``: the engine will not start again before this time (pacing), on the same clock."""
        return max(self.jit_point(not_before) - self._clock(), 0.0)
