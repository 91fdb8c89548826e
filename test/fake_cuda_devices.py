"""A stand-in for torch.cuda's streams, device guard and graph capture on a machine with no GPU, faithful to torch's
own logic where it decides which GPU a capture records: ``torch.cuda.Stream()`` and ``current_stream()`` are on the
current device; ``torch.cuda.graph`` without ``stream`` captures on one stream per process, made on the device that
was current when the first graph was made (torch/cuda/graphs.py: ``default_capture_stream = torch.cuda.Stream()``);
its context makes its stream's device current. What runs inside a capture records the current device, the GPU whose
work the capture would hold (an op on a tensor of another GPU runs there eagerly and is not captured)."""
from __future__ import annotations

import contextlib
from typing import List, Optional

import torch


class FakeCuda:
    def __init__(self, monkeypatch, current: int = 0):
        self.current = current
        self.captures: List[int] = []  # the device of each capture's stream
        self.default_capture_stream: Optional[FakeStream] = None
        self.synchronized: List[int] = []  # the device each torch.cuda.synchronize waited for
        fake = self
        for name, value in {
            "Stream": lambda device=None: FakeStream(fake._index(device)),
            "current_stream": lambda device=None: FakeStream(fake._index(device)),
            "stream": self._stream, "device": self._device, "graph": self._graph,
            "CUDAGraph": FakeGraph, "Event": lambda enable_timing=False: FakeEvent(fake),
            "graph_pool_handle": lambda: (0, 1),
            "memory_reserved": lambda device=None: 0,
            "synchronize": lambda device=None: self.synchronized.append(self._index(device)),
            "is_current_stream_capturing": lambda: False,
        }.items():
            monkeypatch.setattr(torch.cuda, name, value)

    def _index(self, device) -> int:
        if device is None:
            return self.current
        return device if isinstance(device, int) else (torch.device(device).index or 0)

    @contextlib.contextmanager
    def _device(self, device):
        was = self.current
        if device is not None:
            self.current = self._index(device)
        try:
            yield
        finally:
            self.current = was

    @contextlib.contextmanager
    def _stream(self, stream):
        with self._device(stream.device):
            yield

    @contextlib.contextmanager
    def _graph(self, graph, pool=None, stream=None, capture_error_mode="global"):
        if stream is None:
            if self.default_capture_stream is None:
                self.default_capture_stream = FakeStream(self.current)
            stream = self.default_capture_stream
        self.captures.append(stream.device)
        with self._stream(stream):
            yield


class FakeStream:
    def __init__(self, device: int):
        self.device = device

    def wait_stream(self, other) -> None:
        pass


class FakeGraph:
    def replay(self) -> None:
        pass


class FakeEvent:
    """torch.cuda.Event: record() without a stream records on the current device's current stream."""

    def __init__(self, cuda: FakeCuda):
        self.cuda = cuda
        self.device: Optional[int] = None

    def record(self, stream=None) -> None:
        self.device = stream.device if stream is not None else self.cuda.current
