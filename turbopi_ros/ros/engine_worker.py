"""The node's engine: one inference at a time on the newest fresh observation, each chunk handed on to be published.

Frames prepared on arrival (frames.py): the engine thread takes the newest inputs itself once it is free (a copy of
prepared frames). Otherwise a second thread prepares them just in time for the engine's next start (pipeline.py).
Either way an observation is checked (present, fresh, stamped, decodable) when it is taken and again before the
engine runs on it, never run twice, and never run while pacing (``inference_period_s``) holds the engine. A run that
takes far longer than usual is a stall (``stall``); a worker outlives any bug (restarted, the error logged).
"""
from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from ..policy.policy import ObservationError, Policy, PreparedObservation
from .conversions import InputError
from .frames import FramePreparer
from .inputs import InputBuffer, WaitingForInput
from .pipeline import PrepareTiming, LatestSlot
from .problems import failure

# An inference is stalled once it runs longer than max(STALL_MIN_S, STALL_FACTOR x the median of the last 20) (before a
# first chunk: FIRST_INFERENCE_STALL_S, which covers warm-up: lazy initialisation, a CUDA graph capture).
STALL_MIN_S, STALL_FACTOR, FIRST_INFERENCE_STALL_S = 1.0, 5.0, 60.0
PACING_POLL_S = 0.1  # on demand, the engine thread looks again at least this often while pacing holds it
WORKER_NICENESS = 10  # the worker_niceness parameter's default


@dataclasses.dataclass
class Prepared:
    prepared: PreparedObservation  # the policy's inputs, ready for the engine
    snapshot: Dict[str, object]  # the messages it came from (staleness is checked again before the engine runs)
    taken_at: float  # monotonic time the snapshot was taken
    prompt: str  # the prompt it was prepared with
    ready_at: float  # monotonic time it was ready for the engine (prepared)


@dataclasses.dataclass
class EngineHooks:
    """What the engine needs of the node: its clock, its state and where results and problems go."""
    now: Callable[[], float]  # the node's clock (s): input ages are measured on it
    prompt: Callable[[], str]
    enabled: Callable[[], bool]
    fail: Callable[..., None]  # fail(message, waiting=False): a problem, reported and throttled by the node
    guidance: Callable[[float], dict]  # keyword arguments of Policy.run for an observation stamped then (RTC)
    publish: Callable[..., None]  # publish(chunk, run_start=, taken_at=, ready_at=): monotonic times of the run, the
    # observation's inputs taken, it prepared
    worker_failed: Callable[[str], None]  # a worker's unexpected error (it restarts): logged, the commands stopped
    alive: Callable[[], bool]  # False once the ROS context is shut down
    # before the first inference with a prompt (and the next after recheck_prompt()), on the engine thread: whatever
    # it needs first (its graphs, warm_up.py); True when that took time, so that observation is dropped (it aged)
    new_prompt: Callable[[str], bool] = lambda prompt: False


class EngineWorker:
    def __init__(self, policy: Policy, run: Callable, inputs: InputBuffer, frames: Optional[FramePreparer],
                 hooks: EngineHooks, inference_period_s: float = 0.0, niceness: int = WORKER_NICENESS):
        """``run``: the policy's run (or a wrapper of it: test-only faults); ``frames``: None prepares observations
        just in time on a thread of its own; ``niceness``: the CPU priority of both threads (yield_cpu)."""
        self.policy, self.inputs, self.frames, self.hooks = policy, inputs, frames, hooks
        self.niceness = int(niceness)
        self.inference_period_s = float(inference_period_s)
        self._run = run
        self.stop_event = threading.Event()
        self._new_data = threading.Event()
        self._slot: LatestSlot[Prepared] = LatestSlot()  # the prepared observation the engine takes next
        self._jit = PrepareTiming()  # when the just-in-time preparer prepares (claimed by the engine as it takes one)
        self._engine_waiting = threading.Event()  # the engine waits for a prepared observation
        self._last_key: Optional[tuple] = None  # (newest input stamp, prompt) of the last observation prepared
        self._prompt_run: Optional[str] = None  # the prompt of the last observation the engine ran (new_prompt)
        self._last_run_start = -math.inf
        self.inference_started: Optional[float] = None  # monotonic start of the inference in progress (stalls)
        self.dropped_stale = 0
        self.ages: Dict[str, float] = {}  # of the inputs of the newest observation taken (diagnostics)
        self._preparer = threading.Thread(target=self._prepare_loop, name="turbopi_observations", daemon=True)
        self._engine = threading.Thread(target=self._engine_loop, name="turbopi_inference", daemon=True)
        self._warm_up: Optional[Callable[[], None]] = None

    @property
    def superseded(self) -> int:
        return self._slot.superseded

    def wake(self) -> None:
        """New input, a new prompt, pacing or enabling changed: look again."""
        self._new_data.set()

    def recheck_prompt(self) -> None:
        """Call the new_prompt hook again before the next inference (what the prompt needs changed: a new beta)."""
        self._prompt_run = None
        self._new_data.set()

    def start(self, warm_up: Optional[Callable[[], None]] = None) -> None:
        """Start the threads; ``warm_up()``: run first on the engine thread (the node's warm_up.WarmUp), before any
        observation is taken."""
        self._warm_up = warm_up
        if self.frames is not None:  # the engine thread prepares each observation itself (_prepared_on_demand)
            self.frames.start()
        else:  # a preparing thread, just in time (_prepare_iterations)
            self._preparer.start()
        self._engine.start()

    def stop(self, timeout_s: float) -> bool:
        """Stop both threads; False when the engine was still busy after ``timeout_s`` (a long inference)."""
        self.stop_event.set()
        self._new_data.set()
        self._engine_waiting.set()
        if self._engine.ident is None:
            return True
        self._engine.join(timeout=timeout_s)
        stopped = not self._engine.is_alive()
        if self._preparer.ident is not None:
            self._preparer.join(timeout=1.0)
            stopped = stopped and not self._preparer.is_alive()
        return stopped

    def stall(self, engine_ms: List[float], paused_since: Callable[[float], bool]) -> Optional[str]:
        """A message while the inference in progress runs far longer than the recent ones (``engine_ms``), unless
        the whole node paused meanwhile (``paused_since(start)``: reported as such by the node); else None."""
        started = self.inference_started
        if started is None or paused_since(started):
            return None
        bound = FIRST_INFERENCE_STALL_S if not engine_ms else max(STALL_MIN_S,
                                                                   STALL_FACTOR * float(np.median(engine_ms)) * 1e-3)
        running = time.monotonic() - started
        if running <= bound:
            return None
        return (f"inference stalled: running for {running:.1f} s (more than {bound:.1f} s = max({STALL_MIN_S:g} s, "
                f"{STALL_FACTOR:g} x the median inference time))")

    # --- the two threads --------------------------------------------------------------------------------------------
    def _prepare_loop(self) -> None:
        yield_cpu(self.niceness)
        self._restarting(self._prepare_iterations, "observation worker")

    def _engine_loop(self) -> None:
        yield_cpu(self.niceness)
        if self._warm_up is not None and not self.stop_event.is_set():
            self._warm_up()
        self._restarting(self._engine_iterations, "inference worker")

    def _restarting(self, iterations, name: str) -> None:
        while not self.stop_event.is_set():
            try:
                iterations()
            except Exception as e:  # noqa: BLE001 - last resort: a worker must outlive any bug
                if self.stop_event.is_set() or not self.hooks.alive():
                    return  # shutting down
                self.hooks.worker_failed(f"{name}: {type(e).__name__}: {e}; restarting it")
                time.sleep(0.5)

    def _prepare_iterations(self) -> None:
        """Pipelined (frames not prepared on arrival): prepare the newest inputs into the slot once per engine run,
        just in time for the engine's end (or at once while it is idle)."""
        while not self.stop_event.is_set():
            if not self._new_data.wait(timeout=0.1):
                continue
            self._new_data.clear()
            if not self.hooks.enabled():
                continue
            not_before = self._last_run_start + self.inference_period_s
            delay = self._jit.prepare_delay(not_before)
            if delay > 0:  # just in time; but at once if the engine turns idle meanwhile (a run shorter than usual)
                self._engine_waiting.wait(delay)
                if self.stop_event.is_set():
                    return
            # read together with the engine's claim (see _prepared_in_slot): an observation the engine is taking is
            # seen either waiting or as the run in progress, never as neither (which looks like an idle engine)
            waiting, point = self._slot.peek(also=lambda: self._jit.jit_point(not_before))
            if waiting is not None and waiting.taken_at >= point:
                continue  # prepared as late as the engine's next start allows already: the engine takes it
            if point > time.monotonic():  # the engine took the last one since the delay was computed: not due yet
                self._new_data.set()
                continue
            item = self._prepare_newest()
            if item is not None:
                self._slot.put(item)

    def _prepare_newest(self) -> Optional[Prepared]:
        """Take the newest inputs, check them, convert and preprocess them (Policy.prepare). None when they are no
        newer than the last observation prepared, or bad (reported)."""
        snapshot, prompt = self.inputs.snapshot(), self.hooks.prompt()
        key = (self.inputs.newest_stamp(snapshot), prompt)
        if key == self._last_key:
            return None  # nothing newer than the last observation: never infer twice on one (chunk stamps are unique)
        taken_at, now = time.monotonic(), self.hooks.now()
        self.ages = self.inputs.ages(snapshot, now)
        try:
            obs = self.inputs.observation(snapshot, prompt, now,
                                          image_source=self.frames.source if self.frames else None)
            t0 = time.perf_counter()
            prepared = self.policy.prepare(obs)
            self._jit.prepared(time.perf_counter() - t0)
        except WaitingForInput as e:
            self.hooks.fail(str(e), waiting=True)
            self.stop_event.wait(0.05)
            return None
        except (InputError, ObservationError, ValueError) as e:
            self.hooks.fail(str(e))
            self.stop_event.wait(0.02)  # bad input may keep coming as fast as good input: do not spin on it
            return None
        self._last_key = key
        return Prepared(prepared, snapshot, taken_at, prompt, time.monotonic())

    def _prepared_on_demand(self) -> Optional[Prepared]:
        """Frames prepared on arrival: preparing an observation is a copy, so the engine thread prepares the newest
        inputs itself once it is free (and pacing allows): it idles for that copy, and never runs an observation
        that waited for it."""
        if not self._new_data.wait(timeout=0.1):
            return None
        self._new_data.clear()
        if not self.hooks.enabled():
            return None
        wait = self._last_run_start + self.inference_period_s - time.monotonic()
        if wait > 0:  # pacing: at most one inference per inference_period_s, on the newest inputs after it
            self.stop_event.wait(min(wait, PACING_POLL_S))
            self._new_data.set()  # look again then
            return None
        return self._prepare_newest()

    def _prepared_in_slot(self) -> Optional[Prepared]:
        """Pipelined: the observation the preparing thread put in the slot, once pacing allows. Taking it claims the
        engine (PrepareTiming.run_started), atomically, so the preparer's next one is timed for this run's end."""
        wait = self._last_run_start + self.inference_period_s - time.monotonic()
        if wait > 0:  # pacing: at most one inference per inference_period_s (the preparer aims at its end)
            self.stop_event.wait(min(wait, PACING_POLL_S))
            return None
        item = self._slot.take(timeout=0.0, claim=self._jit.run_started)
        if item is None:  # idle: let the preparer prepare at once (it also wakes on every new input)
            self._engine_waiting.set()
            self._new_data.set()
            item = self._slot.take(timeout=0.1, claim=self._jit.run_started)
        self._engine_waiting.clear()
        if item is not None and not self.hooks.enabled():
            self._jit.run_abandoned()
            return None
        return item

    def _engine_iterations(self) -> None:
        """Run the engine on each prepared observation that is still fresh, hand the chunk on."""
        while not self.stop_event.is_set():
            item = self._prepared_on_demand() if self.frames is not None else self._prepared_in_slot()
            if item is None:
                continue
            if item.prompt != self.hooks.prompt():  # prepared before a new prompt was set: never run the old task
                self._jit.run_abandoned()
                self._new_data.set()
                continue
            if item.prompt != self._prompt_run:
                if self.hooks.new_prompt(item.prompt):  # took time: run the newest observation instead
                    self._jit.run_abandoned()
                    self._new_data.set()
                    continue
                self._prompt_run = item.prompt
            stale = self.inputs.stale(item.snapshot, self.hooks.now())
            if stale:  # went stale while it waited: dropped, never acted on
                self._jit.run_abandoned()
                self.dropped_stale += 1
                # how long since it was taken tells a late input (taken already old) from a busy engine or machine
                waited = time.monotonic() - item.taken_at
                self.hooks.fail(f"observation went stale before inference: {stale}; it was taken {waited:.2f} s "
                                "earlier (preparing it, waiting for the engine)")
                continue
            chunk = self._run_once(item)
            if chunk is not None and self.hooks.enabled() and not self.stop_event.is_set():
                self.hooks.publish(chunk, run_start=self._last_run_start, taken_at=item.taken_at,
                                   ready_at=item.ready_at)

    def _run_once(self, item: Prepared):
        """The chunk of one prepared observation, or None when the engine failed (reported)."""
        self._last_run_start = self.inference_started = time.monotonic()
        try:
            return self._run(item.prepared, **self.hooks.guidance(item.prepared.stamp))
        except (InputError, ObservationError, ValueError) as e:
            self.hooks.fail(str(e))
        except Exception as e:  # noqa: BLE001 - an engine failure must not kill the node
            self.hooks.fail(failure("inference", e))
            self.stop_event.wait(0.02)
        finally:
            self.inference_started = None
            self._jit.run_ended()
        return None


def yield_cpu(niceness: int = WORKER_NICENESS) -> None:
    """Lower this thread's CPU priority to ``niceness`` (Linux: niceness is per thread, and threads it starts inherit
    it: the camera pool, torch's workers). The heavy work (preparation, inference) then yields the cores to the command
    stream and the executor when the machine is busy, so commands keep their deadlines; raising a priority needs
    privileges, lowering one does not, so a thread already nicer than ``niceness`` stays as it is. The cost: other
    processes at normal priority that keep the cores busy take them from the inference too (worker_niceness)."""
    try:
        tid = threading.get_native_id()
        if niceness > os.getpriority(os.PRIO_PROCESS, tid):
            os.setpriority(os.PRIO_PROCESS, tid, niceness)
    except (AttributeError, OSError):  # not Linux, or not allowed: the default priority
        pass
