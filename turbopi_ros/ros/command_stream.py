"""The command stream's thread: the node's tick (the action for "now" on ~/joint_command) at absolute deadlines on the
monotonic clock, every ``period_s`` (which the node changes to follow the measured joint-state rate). An executor timer
that also serves every joint state and camera callback falls behind at a few hundred Hz, and rcl drops the ticks it
missed. A stall of over two periods restarts the grid instead of sending a burst of late commands; each tick's
lateness is the node's heartbeat (pauses.PauseWatch).

CommandSource is what one tick publishes (the schedule's action for now, or a stop, or the held last command), and
CommandPeriod the stream's period (command_rate_hz, or the measured joint-state rate)."""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional

import numpy as np

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


class CommandSource:
    """One command tick: the chunk schedule's action for now on the action outputs. Disabled, or with nothing to
    send (no chunk, or inputs gone stale between observations), the outputs stop, or with ``hold_on_stale`` the last
    command is repeated (marked held). Stale inputs are reported once (``fail``) when they go stale; so is a pause of
    the whole node (``paused``), after which the stale inputs are that pause, not reported again."""

    def __init__(self, schedule, inputs, outputs, stats, now: Callable[[], float], fail: Callable[[str], None],
                 enabled: Callable[[], bool], hold_on_stale: bool):
        """``schedule``: policy.chunking.ChunkSchedule; ``inputs``: inputs.InputBuffer; ``outputs``:
        action_outputs.ActionOutputs; ``stats``: node_status.NodeStats (its command_times); ``now``: the node's
        clock; ``fail(message)``: a problem (chunk_flow.ChunkFlow.fail)."""
        self.schedule, self.inputs, self.outputs, self.stats = schedule, inputs, outputs, stats
        self._now, self._fail, self._enabled, self.hold_on_stale = now, fail, enabled, bool(hold_on_stale)
        self.last_command: Optional[np.ndarray] = None
        self._stale_reported = False

    def tick(self) -> None:
        if not self._enabled():
            self.outputs.stop()
            return
        now = self._now()
        snapshot = self.inputs.snapshot()
        # Inputs that went stale between observations stop (or hold) the commands now, not when the chunk ends.
        stale = self.inputs.stale(snapshot, now) if snapshot else ""
        if stale and not self._stale_reported:
            self._fail(stale)
        self._stale_reported = bool(stale)
        if stale:  # the chunk is not resumed when they are fresh again: its clock ran on while the commands held
            self.schedule.clear(followed=True)
        command = None if stale else self.schedule.command(now)
        held = command is None and self.hold_on_stale and self.last_command is not None
        if held:
            command = self.last_command
        elif command is None:
            self.outputs.stop()
            return
        self.last_command = command
        self.outputs.publish_command(command, held=held)
        self.stats.command_times.add(time.monotonic())

    def paused(self, seconds: float) -> None:
        """The command thread woke ``seconds`` after its deadline: the whole process was not scheduled (pauses.py).
        Named as such, since every input now looks stale and would otherwise be blamed."""
        self._stale_reported = True  # the stale inputs that follow are this pause, reported here
        self._fail(f"the node did not run for {seconds:.2f} s (its threads were not scheduled: the machine is "
                   "overloaded or was paused); no chunk or command until fresh inputs arrive")

    def stop(self) -> None:
        """Disabled or deactivated: the schedule cleared and nothing held (enabling again starts from a new chunk)."""
        self.schedule.clear()
        self.last_command = None


class CommandPeriod:
    """The command stream's period: 1 / command_rate_hz, or with command_rate_hz 0 the measured joint-state rate's
    (the control rate until joint states arrive), followed with 1 % hysteresis."""

    def __init__(self, command_rate_hz: float, control_rate_hz: float):
        self.command_rate_hz, self.control_rate_hz = float(command_rate_hz), float(control_rate_hz)
        self.period_s = 1.0 / (self.command_rate_hz or self.control_rate_hz)

    def follow(self, joint_rate_hz: Optional[float]) -> Optional[float]:
        """The new period when the measured joint-state rate ``joint_rate_hz`` (None: none yet) moved it by over
        1 %, else None."""
        if self.command_rate_hz > 0:
            return None
        period = 1.0 / (joint_rate_hz or self.control_rate_hz)
        if abs(period - self.period_s) <= 0.01 * period:
            return None
        self.period_s = period
        return period
