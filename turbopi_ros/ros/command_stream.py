"""The command stream's thread: the node's tick (the action for "now" on ~/joint_command) at absolute deadlines on the
monotonic clock, every ``period_s`` (which the node changes to follow the measured joint-state rate). An executor timer
that also serves every joint state and camera callback falls behind at a few hundred Hz, and rcl drops the ticks it
missed. A stall of over two periods restarts the grid instead of sending a burst of late commands; each tick's
lateness is the node's heartbeat (pauses.PauseWatch)."""
from __future__ import annotations

import threading
import time
from typing import Callable

from .pauses import PauseWatch


class CommandStream:
    def __init__(self, tick: Callable[[], None], period_s: float, pauses: PauseWatch,
                 on_pause: Callable[[float], None], on_error: Callable[[str], None], stop: threading.Event,
                 alive: Callable[[], bool]):
        """``on_pause(seconds)``: the tick came that long after its deadline (the whole node paused); ``on_error``:
        the tick raised (the stream goes on); ``stop``: ends the thread; ``alive``: False once ROS is shut down."""
        self.tick, self.period_s, self.pauses = tick, float(period_s), pauses
        self._on_pause, self._on_error, self._stop, self._alive = on_pause, on_error, stop, alive
        self._thread = threading.Thread(target=self._loop, name="turbopi_commands", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        if self._thread.ident is not None:
            self._thread.join(timeout=timeout_s)

    def _loop(self) -> None:
        deadline = time.monotonic()
        while not self._stop.is_set():
            period = self.period_s
            deadline += period
            delay = deadline - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            lateness = time.monotonic() - deadline  # after the wait: a pause during it counts
            if lateness > 2 * period:
                deadline = time.monotonic()
            paused = self.pauses.beat(lateness, period)
            if paused:
                self._on_pause(paused)
            try:
                self.tick()
            except Exception as e:  # noqa: BLE001 - the stream must outlive any bug; shutting down ends it
                if self._stop.is_set() or not self._alive():
                    return
                self._on_error(f"command stream: {type(e).__name__}: {e}")
                self._stop.wait(0.1)
