"""What becomes of a chunk the engine computed, and of a problem: the chunk passes the gate (chunk_gate.py) and goes
out on the action outputs and into the command schedule, its times into the statistics; a problem is reported
(problems.py, throttled) and stops the commands unless ``on_stale`` is 'hold'. The engine worker calls these (its
hooks), and so does the command stream's tick when inputs go stale. RealTimeChunking gives the engine the guidance
towards the chunk being executed."""
from __future__ import annotations

import time
from typing import Callable, Dict

from ..policy.chunking import ChunkSchedule
from ..policy.rtc_target import guidance_arguments
from .chunk_gate import ChunkGate
from .node_status import NodeStats
from .problems import ProblemLog


class ChunkFlow:
    def __init__(self, schedule: ChunkSchedule, gate: ChunkGate, outputs, stats: NodeStats, problems: ProblemLog,
                 logger, hold_on_stale: bool, now: Callable[[], float], wake: Callable[[], None],
                 alive: Callable[[], bool]):
        """``outputs``: action_outputs.ActionOutputs (publish_chunk); ``logger``: the node's; ``now``: the node's
        clock (s); ``wake``: wakes the engine; ``alive``: False once ROS is shut down (its log publisher is gone)."""
        self.schedule, self.gate, self.outputs, self.stats, self.problems = schedule, gate, outputs, stats, problems
        self.logger, self.hold_on_stale = logger, bool(hold_on_stale)
        self._now, self._wake, self._alive = now, wake, alive

    def publish(self, chunk, run_start: float, taken_at: float, ready_at: float) -> bool:
        """Publish ``chunk`` (policy.ActionChunk), computed from ``run_start`` on an observation whose inputs were
        taken at ``taken_at`` and which was prepared at ``ready_at`` (all monotonic), unless the gate refuses it (then
        that is a problem). True when it went out."""
        done, now = time.monotonic(), self._now()
        span_s = len(chunk.actions) / self.schedule.rate_hz
        refused = (self.gate.refuse(chunk.stamp, taken_at, now, span_s)
                   or self.gate.refuse_actions(chunk.actions, chunk.state))
        if refused:
            self.fail(refused)
            return False
        blended = self.schedule.blended(chunk.actions, chunk.stamp, now)  # what the commands will follow
        self.outputs.publish_chunk(chunk.actions, chunk.stamp, now, blended)
        self.schedule.set_chunk(chunk.actions, chunk.stamp, now)
        if self.stats.chunks == 0:
            self.logger.info(f"first chunk: {len(chunk.actions)} actions in {chunk.timings['total'] * 1e3:.0f} ms")
        ended = self.problems.clear()
        if ended:
            self.logger.info(f"recovered: chunks flowing again (was: {ended})")
        self.stats.chunk_published(dict(chunk.timings, latency=now - chunk.stamp, engine=done - run_start,
                                        observation_to_chunk=done - taken_at, observation_wait=run_start - taken_at,
                                        prepared_wait=run_start - ready_at),
                                   chunk.guidance_error)
        return True

    def fail(self, message: str, waiting: bool = False) -> None:
        """Record a problem (diagnostics show the newest), stop the commands unless on_stale is 'hold', log it
        (throttled by ProblemLog), wake the engine."""
        if not self.hold_on_stale:
            self.schedule.clear(followed=True)
        if self._alive():  # shutting down: the log's rosout publisher is gone
            self.problems.report(message, waiting)
        self._wake()

    def worker_failed(self, message: str) -> None:
        """A worker's unexpected error (it restarts every 0.5 s while it lasts): the commands stopped, the error on
        /diagnostics and in the log, throttled as every problem is (it used to be logged at each restart and never
        reached /diagnostics)."""
        self.schedule.clear(followed=True)
        if self._alive():
            self.problems.report(message, prefix="")


class RealTimeChunking:
    """Real-time chunking's run-time settings (``rtc.enabled``, ``rtc.max_guidance``) and the engine's guidance hook:
    the keyword arguments of Policy.run for an observation (rtc_target.guidance_arguments) from the chunk being
    executed and the last five latencies."""

    def __init__(self, schedule: ChunkSchedule, stats: NodeStats, rate_hz: float, enabled: bool, max_guidance: float):
        self.schedule, self.stats, self.rate_hz = schedule, stats, float(rate_hz)
        self.enabled, self.max_guidance = bool(enabled), float(max_guidance)

    def arguments(self, stamp: float) -> Dict[str, object]:
        current = self.schedule.current if self.enabled else None
        latencies = [ms * 1e-3 for ms in self.stats.recent_ms("latency", 5)]
        return guidance_arguments(current, stamp, latencies, self.rate_hz, self.max_guidance)

    def apply(self, changes: Dict[str, object]) -> None:
        """Run-time parameter changes (already validated): those of rtc.*."""
        if "rtc.enabled" in changes:
            self.enabled = bool(changes["rtc.enabled"])
        if "rtc.max_guidance" in changes:
            self.max_guidance = float(changes["rtc.max_guidance"])
