"""What went wrong, for the log and for /diagnostics, without flooding either.

Each kind of problem (its message without the numbers: "0.52 s old" and "0.54 s old" are one kind) is logged once,
then at most every ``repeat_s`` while it lasts; diagnostics always show the newest. Waiting for a first message is a
warning, not an error, and does not count as one.
"""
from __future__ import annotations

import re
import threading
import time
from typing import Callable, Dict, Optional


def kind_of(message: str) -> str:
    return re.sub(r"\d+(\.\d+)?", "#", message)


def failure(what: str, error: BaseException) -> str:
    """"<what> failed: <the error's type>: <its message>" on one line; a fused kernel's Triton error (or one raised
    from it) as fused.kernel_failure says it: what to do, without Triton's temporary file names."""
    from ..model.fused import kernel_failure  # here, on the error path: the problem log itself needs no torch

    return f"{what} failed: {kernel_failure(error) or type(error).__name__ + ': ' + ' '.join(str(error).split())}"


class ProblemLog:
    def __init__(self, error: Callable[[str], None], warning: Callable[[str], None], repeat_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self._error, self._warning, self._clock = error, warning, clock
        self.repeat_s = float(repeat_s)
        self._lock = threading.Lock()
        self._logged: Dict[str, float] = {}  # kind -> when it was last logged
        self.message = ""  # the newest problem; "" when everything works
        self.waiting = False  # the newest problem is only missing input
        self.count = 0  # real problems so far (waiting excluded)

    def report(self, message: str, waiting: bool = False, prefix: str = "no chunk: ") -> None:
        kind, now = kind_of(message), self._clock()
        with self._lock:
            self.message, self.waiting = message, waiting
            self.count += 0 if waiting else 1
            log = now - self._logged.get(kind, -float("inf")) >= self.repeat_s
            if log:
                if len(self._logged) > 100:
                    self._logged.clear()
                self._logged[kind] = now
        # two call sites: rclpy's logger refuses one call site that logs at two severities
        if log and waiting:
            self._warning(prefix + message)
        elif log:
            self._error(prefix + message)

    def clear(self) -> Optional[str]:
        """Everything works again. Returns the problem this ends if it was a real one (not waiting), else None;
        a problem that comes back later is logged again at once."""
        with self._lock:
            ended = self.message if self.message and not self.waiting else None
            self.message, self.waiting = "", False
            self._logged.clear()
        return ended

    @property
    def level(self) -> str:
        """'ok', 'warn' (waiting for input) or 'error'."""
        with self._lock:
            return "ok" if not self.message else ("warn" if self.waiting else "error")
