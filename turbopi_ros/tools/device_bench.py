"""What the GPU bench tools share (attention_bench, gemm_bench, kernel_profile): the device a run measures (a CUDA
GPU, or the CPU for a dry run), a per-call time inside a CUDA graph, and a printer that keeps the file up to date."""
from __future__ import annotations

import argparse
import os
from typing import Callable, List, Optional

import torch

from ..model import kernel_choice


class Printed:
    """say(line): print it and rewrite ``path`` (if any) with every line so far: a run cut short keeps what it
    measured."""

    def __init__(self, path: Optional[str]):
        self.path = path
        self.lines: List[str] = []

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)
        if self.path:
            with open(self.path, "w") as f:
                f.write("\n".join(self.lines) + "\n")


def bench_device(parser: argparse.ArgumentParser, dry_run: bool, interpreter: bool) -> torch.device:
    """The CUDA device, or for a dry run the CPU (with ``interpreter``: the Triton kernels on CPU tensors under
    Triton's interpreter, which must be on before Python starts, and their kernel choices timed on the host).
    Exits through ``parser`` where neither can run."""
    if dry_run:
        if interpreter:
            if os.environ.get("TRITON_INTERPRET") != "1":
                parser.error("--dry-run needs TRITON_INTERPRET=1 set before Python starts (Triton's interpreter)")
            from ..model import fused

            fused.use_triton_on_cpu(True)
            # the ops measure their configs as on a GPU, each timed once on the host: the flow, not the figures
            kernel_choice.CHOICES.time_on_cpu, kernel_choice.CHOICES.calls, kernel_choice.CHOICES.reps = True, 1, 1
        return torch.device("cpu")
    if not torch.cuda.is_available():
        parser.error("no CUDA device (--dry-run runs the flow on the CPU)")
    return torch.device("cuda")


def graph_us(fn: Callable[[], object], device: torch.device, calls: int = 50, reps: int = 5) -> float:
    """Microseconds a call: the best of ``reps`` replays of one CUDA graph of ``calls`` calls, as the model's kernel
    choice times its candidates (kernel_choice.graph_us); on CPU (a dry run) one call."""
    if device.type != "cuda":
        calls = reps = 1
    return kernel_choice.graph_us(fn, device, calls, reps)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"


def run_grid(tool: str, device: torch.device, cases, grid, bench_shape: Callable, say: Printed) -> None:
    """A Triton bench's run: its header (the machine, torch and Triton), then bench_shape(*case, device, grid, say)
    for each case, under inference mode."""
    import triton

    say(f"# {tool} on {device_name(device)}: torch {torch.__version__}, triton {triton.__version__}; us a call, the "
        "best of 5 replays of a CUDA graph of 50 calls")
    with torch.inference_mode():
        for case in cases:
            bench_shape(*case, device, grid, say)


