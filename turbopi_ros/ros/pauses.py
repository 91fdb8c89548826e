"""Pauses of the whole node process, told apart from stale sensors and slow inference.

When the process is not scheduled for a while (a machine overloaded, a VM paused), every input looks stale once it
runs again, and an inference in progress looks hung: both would be blamed wrongly. The command stream's thread ticks
at fixed deadlines, so it is the node's heartbeat: a tick far past its deadline means the process did not run.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Callable, Optional


class PauseWatch:
    """The command thread's heartbeat. ``beat(lateness_s, period_s)`` on each tick; a tick later than ``threshold_s``
    (and than three periods), or no tick for that long, is a pause. Disabled (``enabled=False``: no thread ticks, e.g.
    under use_sim_time, where a paused simulation is no pause of the node) it never reports one."""

    def __init__(self, threshold_s: float, enabled: bool = True, clock: Callable[[], float] = time.monotonic):
        self.threshold_s = float(threshold_s)
        self.enabled = enabled
        self._clock = clock
        self._lock = threading.Lock()
        self._last_beat = clock()
        self._allowed_s = self.threshold_s
        self.resumed_at = -math.inf  # when the newest pause ended (the clock's time)

    def beat(self, lateness_s: float, period_s: float) -> Optional[float]:
        """A tick ``lateness_s`` after its deadline, ticking every ``period_s``. Returns the pause's length if this
        tick ends one, else None."""
        now = self._clock()
        with self._lock:
            self._last_beat = now
            self._allowed_s = max(self.threshold_s, 3 * period_s)
            if lateness_s <= self._allowed_s:
                return None
            self.resumed_at = now
        return lateness_s

    def paused_since(self, t: float) -> bool:
        """Did the node pause after ``t`` (the clock's time), or is it in a pause that its heartbeat has not ended
        yet (this thread ran first after it)?"""
        if not self.enabled:
            return False
        with self._lock:
            return self.resumed_at > t or self._clock() - self._last_beat > self._allowed_s
