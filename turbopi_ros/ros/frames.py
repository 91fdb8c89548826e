"""Camera frames prepared as they arrive, so that an observation finds its images ready when it is taken.

An observation's images are the cameras' newest frames converted, resized and scaled for the model. Done when the
observation is taken, that work (1-4 ms for two or three cameras on a small x86) lies between taking the inputs and
starting the engine, and every chunk's observation-to-chunk latency pays it. Done as each frame arrives, on a thread
per camera while the engine runs, the observation only copies finished images: a fraction of a millisecond.

The cost is CPU: every frame is prepared, at the cameras' rate rather than the inference rate, except those a newer
frame replaces first (newest wins: a frame waits while its camera's previous one is being prepared, and a newer
arrival replaces it, counted as skipped). ``result(name, msg)`` returns exactly what preparing ``msg`` gives: the
finished result, or it waits for the one being prepared, or, for a frame that was never started (replaced, or taken
before its thread got to it), prepares it in the calling thread (counted as late). An error (a frame that does not
decode) is kept and raised by ``result``, where the observation is taken, as it would have been raised there.
"""
from __future__ import annotations

import collections
import functools
import threading
import time
from typing import Callable, Deque, Dict, Optional, Sequence, Tuple

import numpy as np

KEEP = 2  # finished frames kept per camera: the newest, and the one an observation taken just before it holds


class FramePreparer:
    """prepare(name, msg) -> a prepared image, run on a thread per camera as frames are submitted.

    thread_init: called first on each camera thread (e.g. to lower its CPU priority)."""

    def __init__(self, cameras: Sequence[str], prepare: Callable[[str, object], object],
                 thread_init: Optional[Callable[[], None]] = None):
        self.cameras = list(cameras)
        self._prepare, self._thread_init = prepare, thread_init
        self._cond = threading.Condition()
        self._waiting: Dict[str, object] = {}  # camera -> its newest frame not started yet
        self._working: Dict[str, object] = {}  # camera -> the frame its thread prepares now
        self._done: Dict[str, Deque[Tuple[object, object, Optional[Exception]]]] = {
            n: collections.deque(maxlen=KEEP) for n in self.cameras}
        self._seconds: Deque[float] = collections.deque(maxlen=50)
        self._threads = []
        self._closed = False
        self.prepared = self.skipped = self.late = 0

    def start(self) -> None:
        for name in self.cameras:
            thread = threading.Thread(target=self._work, args=(name,), name=f"turbopi_frames_{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, name: str, msg) -> None:
        """A frame of camera ``name`` arrived: prepare it once its thread is free (unless a newer one comes first)."""
        with self._cond:
            if name in self._waiting:
                self.skipped += 1
            self._waiting[name] = msg
            self._cond.notify_all()

    def source(self, name: str, msg):
        """An Observation's image source for ``msg``: the prepared image itself when it is ready, else a zero-argument
        callable returning it (result(); it raises what preparing the frame raised)."""
        with self._cond:
            done = self._finished(name, msg)
        if done is not None and done[1] is None:
            return done[0]
        return functools.partial(self.result, name, msg)

    def result(self, name: str, msg):
        """``msg`` (a frame of camera ``name``) prepared: see the module docstring. Raises what preparing it raised."""
        with self._cond:
            while True:
                done = self._finished(name, msg)
                if done is not None:
                    value, error = done
                    if error is not None:
                        raise error
                    return value
                if self._working.get(name) is not msg or self._closed:
                    break
                self._cond.wait(0.1)
            if self._waiting.get(name) is msg:
                del self._waiting[name]  # not started: prepared here rather than after the camera's current frame
            self.late += 1
        value, error = self._run(name, msg)
        if error is not None:
            raise error
        return value

    def median_ms(self) -> Optional[float]:
        """Median time of the last 50 frames prepared on the cameras' threads (None before the first)."""
        with self._cond:
            return float(np.median(self._seconds)) * 1e3 if self._seconds else None

    def close(self, timeout_s: float = 1.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=timeout_s)

    def _finished(self, name: str, msg) -> Optional[Tuple[object, Optional[Exception]]]:
        """(value, error) of ``msg`` if it is among the camera's kept results, else None. Call under the lock."""
        return next(((value, error) for frame, value, error in self._done[name] if frame is msg), None)

    def _run(self, name: str, msg):
        """(value, None) or (None, the exception); kept as the camera's newest result."""
        try:
            value, error = self._prepare(name, msg), None
        except Exception as e:  # noqa: BLE001 - raised by result(), where the observation is taken
            value, error = None, e
        with self._cond:
            self._done[name].append((msg, value, error))
            self._cond.notify_all()
        return value, error

    def _work(self, name: str) -> None:
        if self._thread_init is not None:
            self._thread_init()
        while True:
            with self._cond:
                while name not in self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                msg = self._working[name] = self._waiting.pop(name)
            started = time.perf_counter()
            self._run(name, msg)
            with self._cond:
                del self._working[name]
                self._seconds.append(time.perf_counter() - started)
                self.prepared += 1
                self._cond.notify_all()
