"""Rates from event times: how often chunks, commands or joint states arrive."""
from __future__ import annotations

import collections
import threading
from typing import Optional

import numpy as np


class EventRate:
    """The last ``window`` event times (seconds, on any one clock)."""

    def __init__(self, window: int = 50):
        self._times: collections.deque = collections.deque(maxlen=window)
        self._lock = threading.Lock()

    def add(self, t: float) -> None:
        with self._lock:
            self._times.append(t)

    def rate(self, now: float, idle_s: float) -> float:
        """Events per second over the window; 0 with fewer than two events, or none in the last ``idle_s``."""
        with self._lock:
            times = list(self._times)
        if len(times) < 2 or now - times[-1] > idle_s or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def median_rate(self, now: float, idle_s: float, lo: float = 1.0, hi: float = 1000.0) -> Optional[float]:
        """1 / median interval, clamped to [lo, hi]: steady against single late or bunched messages. None with
        fewer than three events or none in the last ``idle_s``."""
        with self._lock:
            times = np.array(self._times)
        if len(times) < 3 or now - times[-1] > idle_s:
            return None
        return _median_rate(times, lo, hi)

    def median_rate_of_window(self, lo: float = 1.0, hi: float = 1000.0) -> Optional[float]:
        """As median_rate, for times on a clock that is not the reader's (the senders' stamps): no idle check."""
        with self._lock:
            times = np.array(self._times)
        return _median_rate(times, lo, hi) if len(times) >= 3 else None


def _median_rate(times: np.ndarray, lo: float, hi: float) -> Optional[float]:
    """1 / the median positive interval of ``times``, clamped to [lo, hi]; None without one."""
    intervals = np.diff(times)
    intervals = intervals[intervals > 0]
    if len(intervals) == 0:
        return None
    return float(np.clip(1.0 / np.median(intervals), lo, hi))
