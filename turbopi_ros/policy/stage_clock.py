"""Marks between the model stages of one run, and the time each stage took.

On CUDA the marks are CUDA events recorded in the stream: timing the stages puts nothing on the host between them.
With the graphs (model.cuda_graph), whose encoder decides on masks and tokens Policy.run keeps on the host, the stages
are enqueued back to back and the host waits once, for the actions (test_graph_lengths proves no device value is
read; gpu_report counts the waits on CUDA). The eager engine reads the masks on the device (which cameras, how many
valid tokens), so it waits there. Elsewhere the marks are host times: on CPU each stage has finished when the call
that ran it returns."""
from __future__ import annotations

import time
from typing import List

import torch


class StageClock:
    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.on_cuda = self.device.type == "cuda"
        self._marks: List[object] = []

    def mark(self) -> None:
        """The end of one stage and the start of the next (the first mark: the start of the first)."""
        if self.on_cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))  # the model's GPU (cuda:N), not the current one
            self._marks.append(event)
        else:
            self._marks.append(time.perf_counter())

    def durations(self) -> List[float]:
        """Seconds between consecutive marks (on CUDA, once the device has reached the last mark)."""
        if len(self._marks) < 2:
            raise ValueError(f"stage durations need at least two marks, got {len(self._marks)}")
        if self.on_cuda:
            self._marks[-1].synchronize()
            return [a.elapsed_time(b) * 1e-3 for a, b in zip(self._marks, self._marks[1:])]
        return [b - a for a, b in zip(self._marks, self._marks[1:])]
