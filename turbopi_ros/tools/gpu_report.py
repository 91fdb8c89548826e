"""One command for a GPU (`bash scripts/gpu_report.sh`): full pi0 and pi0.5, bfloat16, measured end to end.

For each preset (random weights, built once on the device and reused by every variant):
  1. float32 on the device: openpi's reference path and the fast path from the same noise, cameras 1-3: the yardstick
     (and the fast path's exactness in float32 on this GPU);
  2. the same weights rounded to bfloat16 (what random_model(dtype="bfloat16") builds), cameras 1-3: the stages
     (vision, prefix cache, denoise eager and as a CUDA graph, totals, the reference), interleaved; the parity of the
     bfloat16 fast path against the float32 reference; the peak GPU memory of the fast path; the attention table of
     turbopi-bench; the efficiency of every stage against the cost model (costmodel.py): TFLOP/s, fraction of this
     GPU's matmul rate, and the roofline lower bound from this GPU's measured matmul rate and copy bandwidth (and from
     its published peaks where costmodel.DEVICES knows it);
  3. the fused layer kernels (model/fused.py, PI0Model.use_fused): every stage eager and graphed with them, their
     parity against the plain path;
  4. with the most cameras: kernels per stage, plain vs fused (model/opcount.py: aten ops dispatched, and the CUDA
     profiler's kernels); every prompt length of the preset captured up front in one shared pool (capture count,
     time, pool memory) and a run over changing pi0.5 states that must capture nothing more; torch.compile of the
     denoise step with a fresh inductor cache and nothing compiled before (cold start) and, in a new process, from
     that cache (warm start: tools/compile_start.py), eager and as a CUDA graph (the first preset only, unless
     --compile-all), turbopi-bench's table (f) (each optimization undone), real-time chunking's guided denoise
     plain and fused (its graphs, their parity); the expert's weights alone in FP8 (model.dtype fp8_weights): the
     fused few-rows total and denoise graphs on them against the same on bfloat16, interleaved, with parity; last,
     FP8 weights (model/fp8.py, on GPUs of compute capability >= 8.9): their timings and parity against bfloat16
     and the float32 reference.
Writes docs/bench/gpu_<device>.{txt,json} (both after every part, so an interrupted run keeps what it measured; on
SIGINT with the markdown rows) with the commit measured (git rev-parse HEAD; without .git: $TURBOPI_COMMIT or a file
named .commit in the repository root) and prints the markdown rows for docs/performance.md. A time budget
(--budget-s, default 450 s: under 8 minutes on an H100 with the model builds) skips what would not fit, saying so,
the attention table and table (f) first (PART_S, EXPECT_S). A part that fails is reported and the rest stands.

--dry-run runs the same flow on the CPU with the tiny presets, 1-2 cameras, 2 steps and one iteration per timing (CUDA
graphs skipped; torch.compile with dynamo's "eager" backend, so the capture is exercised without inductor's compile
time; graphs replayed as cuda_graph's static replay on CPU; FP8 through its dequantized twin): a check of everything
but the CUDA parts, in seconds (bfloat16 matmuls on a CPU without avx512_bf16 are slow,
openpi's eager masked attention most of all). Its numbers are not measurements. The tests run it.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from . import bench, compile_start, costmodel
from .ablation import replaced
from ..model.checkpoint import load_model, random_model, set_dtype
from ..model import fp8, fused, opcount
from ..model.config import load_config
from ..model.kernel_choice import CHOICES
from ..model.cuda_graph import (CudaGraphDenoiser, CudaGraphEncoder, CudaGraphGuidedDenoiser, GraphPool,
                                cached_lengths, host_inputs)
from ..model.reference import reference_denoise, reference_prefix
from ..model.rtc import Guidance, guided_denoise
from ..policy.prompt_lengths import prompt_lengths
from ..policy.tokenizer import ByteTokenizer

PRESETS = {"pi0": 20, "pi05": 80}  # preset -> valid prompt tokens (pi0.5: task + discretized state)
DRY_PRESETS = {"tiny": 20, "tiny_pi05": 80}
FAST_STAGE = {"vision": "vision", "prefix_cache": "prefix_cache", "vision graph": "vision",
              "prefix_cache graph": "prefix_cache", "denoise eager": "denoise",
              "denoise graph": "denoise", "total eager": "total", "total graph": "total",
              "denoise eager fused": "denoise", "total eager fused": "total", "vision graph fused": "vision",
              "prefix_cache graph fused": "prefix_cache", "denoise graph fused": "denoise",
              "total graph fused": "total", "denoise graph fused few-rows": "denoise"}
# the prompt and state size of the capture check: pi0.5's lengths over every state of STATE_DIMS values
CAPTURE_PROMPT = "pick up the cube and put it in the bowl"
STATE_DIMS = 7
# Seconds on an H100 (not in a dry run): PART_S, what a part needs left to start (torch.compile: Budget's
# compile_reserve_s); EXPECT_S, what the parts that must come out take, kept free for them by the parts of less
# importance (the attention table and table (f), skipped first): kernel counts, capture, torch.compile's cold and
# warm start, fp8 (a later preset's stages: as long as this preset's took).
PART_S = {"attention": 30, "kernel counts": 20, "capture": 40, "table (f)": 40, "rtc": 25, "fp8 weights": 25,
          "fp8": 30}
EXPECT_S = {"kernel counts": 20, "capture": 15, "compile": 75, "fp8": 20}
REPO_ROOT = Path(__file__).resolve().parents[2]  # turbopi_ros/tools/gpu_report.py -> the repository root


def commit_id(root: Path = REPO_ROOT) -> Dict[str, object]:
    """The commit measured. Named explicitly ($TURBOPI_COMMIT, else the first line of <root>/.commit: what a copy of the
    work tree carries to a lent machine), that wins; where root is also a git work tree's top its HEAD and whether
    the tree differs from it are kept beside ("git"), since a lent machine's copy may sit in a git tree of some other
    commit (the H200 run of 9c2ea32 named the session's starting commit, b78a8cd, "modified"). Else git's HEAD."""
    git: Optional[Dict[str, object]] = None
    try:
        head = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10)
        lines = head.stdout.splitlines()
        if head.returncode == 0 and len(lines) == 2 and Path(lines[0]).resolve() == Path(root).resolve():
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                   capture_output=True, text=True, timeout=10)
            git = {"commit": lines[1].strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    named, source = os.environ.get("TURBOPI_COMMIT", "").strip(), "TURBOPI_COMMIT"
    if not named:
        marker = root / ".commit"
        named, source = (marker.read_text().split("\n")[0].strip() if marker.is_file() else ""), ".commit"
    if named and (git is None or named != git["commit"]):
        out: Dict[str, object] = {"commit": named, "source": source, "dirty": None}
        if git is not None:
            out["git"] = git
        return out
    if git is not None:
        return {"commit": git["commit"], "source": "git", "dirty": git["dirty"]}
    return {"commit": None, "source": "unknown (no git, no TURBOPI_COMMIT, no .commit)", "dirty": None}


def fused_call(model, fn: Callable[[], object], few_rows_matmul: bool = False) -> Callable[[], object]:
    """fn run with the model's fused kernels on, and with ``few_rows_matmul`` its few-rows matmul too (and the
    switches put back)."""
    def run():
        was = model.fused, model.few_rows_matmul
        model.use_fused(True, few_rows_matmul=few_rows_matmul or was[1])
        try:
            return fn()
        finally:
            model.use_fused(*was)
    return run


class Report:
    """Lines printed as they come and kept for the .txt."""

    def __init__(self):
        self.lines: List[str] = []

    def __call__(self, line: str = "") -> None:
        self.lines.append(line)
        print(line, flush=True)


def _num(x: Optional[float], fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median ms of reps calls after one warm call (synchronized around each on CUDA)."""
    fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def measure_peaks(device: torch.device, dry: bool) -> Dict[str, Dict[str, object]]:
    """This device's bfloat16 matmul rate (one large square matmul) and copy bandwidth (a device-to-device copy of a
    large buffer: read + write): the roofs the stages are compared with. (Dry run: a small float32 matmul, the CPU's
    native type; the dry run's rates mean nothing.)"""
    n, dtype = (512, torch.float32) if dry else (8192, torch.bfloat16)
    a = torch.randn((n, n), device=device, dtype=dtype)
    b = torch.randn((n, n), device=device, dtype=dtype)
    mm_ms = timed_ms(lambda: torch.mm(a, b), device, 5 if dry else 20)
    numel = (8 << 20) if dry else (512 << 20)  # 16 MiB / 1 GiB of bfloat16
    x = torch.empty(numel, device=device, dtype=torch.bfloat16).fill_(1)
    y = torch.empty_like(x)
    copy_ms = timed_ms(lambda: y.copy_(x), device, 5 if dry else 20)
    moved = 2 * x.numel() * x.element_size()
    return {"matmul": {"shape": [n, n, n], "dtype": str(dtype).replace("torch.", ""), "median_ms": mm_ms,
                       "tflops": 2.0 * n ** 3 / mm_ms / 1e9},
            "copy": {"bytes_moved": moved, "median_ms": copy_ms, "gbs": moved / copy_ms / 1e6}}


def published_device(gpu_name: Optional[str]) -> Optional[str]:
    """The costmodel.DEVICES key of this GPU, where its name says which it is."""
    name = (gpu_name or "").lower()
    if "h100" in name:
        return "h100_pcie" if "pcie" in name else "h100_sxm"
    if "4090" in name:
        return "rtx4090"
    if "thor" in name:
        return "thor"
    if "orin" in name:
        return "orin"
    return None


def host_waits(fn: Callable[[], object], device: torch.device,
               sites: Optional[List[str]] = None) -> Optional[int]:
    """How many times one call of ``fn`` made the host wait for the device (torch.cuda's sync debug mode warns at
    each: a device value read, a blocking copy); None off CUDA. The all-graphed total should make none: its stages
    are enqueued back to back and the caller waits once, for the actions. ``sites`` (a list) gets where each wait
    came from ("file:line: message"): the H200 runs counted one in the first all-graphed total of a run, none after."""
    if device.type != "cuda":
        return None
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    waits = [w for w in caught if "synchroniz" in str(w.message)]
    if sites is not None:
        sites.extend(f"{w.filename}:{w.lineno}: {str(w.message)[:200]}" for w in waits)
    return len(waits)


@contextlib.contextmanager
def no_tf32():
    """Within the block, float32 matmuls and convolutions in full precision (TF32 off); afterwards the settings as
    they were, cuBLAS's ``fp32_precision`` included. Putting ``allow_tf32 = False`` back alone would not do: since
    torch 2.9 that setter leaves ``fp32_precision`` at "ieee" where it was "none", and inductor's FX graph cache keys on
    it, so the report's cold compile would store under a key a fresh process (the warm start) never looks up. Only the
    legacy flags are set otherwise: torch refuses to read them after a mix of the two APIs on cuDNN."""
    matmul = torch.backends.cuda.matmul
    saved = (matmul.allow_tf32, torch.backends.cudnn.allow_tf32, getattr(matmul, "fp32_precision", None))
    matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        if saved[2] is not None:
            matmul.fp32_precision = saved[2]


def memory_gb(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


class Budget:
    """The report's wall-clock budget and what it left out: a later optional part is skipped (and listed) when too
    little time is left for it, and a part that fails is recorded in its block and the report's errors without
    stopping the rest."""

    def __init__(self, budget_s: float, say: Report):
        self.budget_s = budget_s
        self.say = say
        self.started = time.perf_counter()
        self.skipped: List[str] = []
        self.errors: List[str] = []
        self.compile_reserve_s = 150.0  # grows to 1.5x the first compile's time once one has run

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    def left_s(self) -> float:
        return self.budget_s - self.elapsed_s()

    def fits(self, what: str, need_s: float, keep_s: float = 0.0) -> bool:
        """Whether ``what`` may start: need_s left for it, and keep_s more for the parts that matter more and are
        still to come (a part of less importance is skipped first); if not, it is listed as skipped."""
        if self.left_s() >= need_s + keep_s:
            return True
        kept = f" and {keep_s:.0f} s kept for the parts that matter more" if keep_s else ""
        self.skipped.append(f"{what}: {self.left_s():.0f} s of the {self.budget_s:.0f} s budget left, "
                            f"{need_s:.0f} s reserved for it{kept}")
        self.say(f"    skipped {what} (time budget)")
        return False

    def skip_once(self, what: str) -> None:
        if what not in self.skipped:
            self.skipped.append(what)

    def failed(self, out: Dict[str, object], what: str, e: Exception) -> Dict[str, object]:
        message = f"{type(e).__name__}: {e}".splitlines()[0][:400]
        out.setdefault("errors", []).append(f"{what}: {message}")
        self.errors.append(f"{what}: {message}")
        return out


class Session:
    """What every measurement reads: the parsed arguments, the device (the CPU in a dry run), the printed report and
    the budget. ``cpu_graphs`` (tests): on CPU, the graphs in cuda_graph's static-replay mode, so that the CUDA
    graphs' part of the flow runs there (its times are eager re-runs, not graph replays)."""

    def __init__(self, args, cpu_graphs: bool = False):
        self.args = args
        self.dry = args.dry_run
        self.device = torch.device("cpu" if self.dry else args.device)
        self.say = Report()
        self.budget = Budget(args.budget_s, self.say)
        self.cpu_graphs = cpu_graphs and self.device.type == "cpu"
        self.checkpoint: Callable[[], None] = lambda: None  # Run: writes the files with what is measured so far

    @property
    def graphs(self) -> bool:
        """Whether the stages are also measured as graphs: CUDA graphs on CUDA, static replay with cpu_graphs."""
        return self.device.type == "cuda" or self.cpu_graphs

    def graph_pool(self) -> GraphPool:
        """A new memory pool (and capture book) for graphs."""
        return GraphPool(self.device, static_replay_on_cpu=self.cpu_graphs)

    def timer(self) -> bench.Timer:
        """The stage tables' timer."""
        return bench.Timer(self.device, self.args.warmup, self.args.iters)

    def table_timer(self) -> bench.Timer:
        """The attention and (f) tables' timer: one warm-up call (none in a dry run)."""
        return bench.Timer(self.device, 0 if self.dry else 1, self.args.attention_iters)

    def free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class Graphs:
    """The CUDA graphs of one preset's bfloat16 model (none off CUDA unless Session.cpu_graphs): the denoiser, the
    encoder (vision and prefix cache), an encoder and denoiser sharing one pool for the fused kernels, and a fused
    denoiser with the few-rows matmul (model/few_rows_matmul.py)."""

    def __init__(self, s: Session, model):
        self.denoiser = self.encoder = self.fused = self.few_rows = None
        if s.graphs:
            self.encoder = CudaGraphEncoder(model, pool=s.graph_pool())
            self.denoiser = CudaGraphDenoiser(model, pool=s.graph_pool())
            fused_pool = s.graph_pool()
            self.fused = (CudaGraphEncoder(model, pool=fused_pool), CudaGraphDenoiser(model, pool=fused_pool))
            self.few_rows = CudaGraphDenoiser(model, pool=s.graph_pool())

    def clear(self) -> None:
        for graph in (self.denoiser, self.encoder, self.few_rows) + (self.fused or ()):
            if graph is not None:
                graph.clear()


class ViewsBlock:
    """One cameras count of one bfloat16 preset: every stage timed interleaved (eager, graphed, fused), the parity
    against the float32 reference, the peak memory, the attention table (most cameras only) and the efficiency
    against the cost model. A group of variants that fails (a capture, a fused kernel) is reported in the block's
    errors and left out; the eager stages and the other groups stand."""

    def __init__(self, s: Session, model, config, views: int, prompt_len: int, graphs: Graphs):
        self.s, self.model, self.config, self.views, self.prompt_len = s, model, config, views, prompt_len
        self.graphs, self.steps = graphs, s.args.steps
        (self.images, self.masks, self.tokens, self.token_mask, self.state,
         self.noise) = bench.make_inputs(config, views, prompt_len, s.device, s.args.seed)
        # what the graphed encoders decide on, on the host as Policy.run gives them: no host wait between stages
        self.host_masks, self.host_tokens, self.host_token_mask = host_inputs(self.masks, self.tokens, self.token_mask)
        self.out: Dict[str, object] = {}
        self.attention_s = 0.0  # what the attention table took (not a stage's time: PresetReport.stages_s)

    def __call__(self, ref32: torch.Tensor, peaks, published, keep_s: Callable[[], float] = lambda: 0.0):
        """-> (the block's results, (cache, noise) of its observation). ``keep_s()``: the time the attention table
        must leave for the parts that matter more (Budget.fits), asked when the table is to start."""
        model, out, g = self.model, self.out, self.graphs
        with torch.inference_mode():
            self.image_tokens = model.embed_images(self.images, self.masks)
            self.cache = model.build_cache(self.image_tokens, self.tokens, self.token_mask, self.state)
            self.prefix_pad, self.past = reference_prefix(model, self.images, self.masks, self.tokens,
                                                          self.token_mask)
            fns = self.eager_fns()
            graphed = g.denoiser is not None and self.add(fns, "CUDA graph of the denoise", self.graph_fns)
            self.add(fns, "fused kernels", self.fused_fns)
            if g.fused is not None:  # everything graphed, with the fused kernels
                self.add(fns, "fused kernels in CUDA graphs", self.fused_graph_fns)
            if g.few_rows is not None:
                self.add(fns, "few-rows matmul in the fused denoise graph", self.few_rows_fns)
            if g.encoder is not None:  # vision and prefix cache as CUDA graphs too: everything graphed
                self.add(fns, "CUDA graphs of vision and the prefix cache",
                         functools.partial(self.encoder_fns, graphed))
            times = self.s.timer()(fns)
            parity = self.parity(fns, ref32)
        out["times"] = {name: bench.summary(t) for name, t in times.items()}
        out["parity"] = parity
        self.attention(keep_s)
        w = costmodel.Workload(self.config, self.views, self.prompt_len, self.steps, dtype="bfloat16")
        out["efficiency"] = efficiency(w, out["times"], peaks, published)
        out["cache_tokens"] = self.cache.num_cached
        return out, (self.cache, self.noise)

    def encode(self):
        return self.model.encode(self.images, self.masks, self.tokens, self.token_mask, self.state)

    def add(self, fns: Dict[str, Callable[[], object]], what: str, make: Callable[[], Dict]) -> bool:
        """Add the variants ``make()`` returns (it captures their graphs) after one call of each (a fused kernel's
        compile, outside the timed calls); if any of that raises, report it and add none of them."""
        try:
            new = make()
            for fn in new.values():
                fn()
        except Exception as e:
            self.s.budget.failed(self.out, what, e)
            return False
        fns.update(new)
        return True

    def eager_fns(self) -> Dict[str, Callable[[], object]]:
        model, cache, noise, steps = self.model, self.cache, self.noise, self.steps
        return {
            "vision": lambda: model.embed_images(self.images, self.masks),
            "prefix_cache": lambda: model.build_cache(self.image_tokens, self.tokens, self.token_mask, self.state),
            "denoise eager": lambda: model.denoise(cache, noise, steps),
            "total eager": lambda: model.denoise(self.encode(), noise, steps),
            "reference denoise": lambda: reference_denoise(model, self.prefix_pad, self.past, self.state, noise,
                                                           steps),
            "reference total": lambda: model.sample_actions(self.images, self.masks, self.tokens, self.token_mask,
                                                            self.state, noise=noise, num_steps=steps,
                                                            path="reference"),
        }

    def graph_fns(self) -> Dict[str, Callable[[], object]]:
        graph, cache, noise, steps = self.graphs.denoiser, self.cache, self.noise, self.steps
        t0 = time.perf_counter()
        graph(cache, noise, steps)  # captured here, not in a timed call
        self.out["graph_capture_s"] = time.perf_counter() - t0
        return {"denoise graph": lambda: graph(cache, noise, steps),
                "total graph": lambda: graph(self.encode(), noise, steps)}

    def fused_fns(self) -> Dict[str, Callable[[], object]]:
        model, cache, noise, steps = self.model, self.cache, self.noise, self.steps
        return {"denoise eager fused": fused_call(model, lambda: model.denoise(cache, noise, steps)),
                "total eager fused": fused_call(model, lambda: model.denoise(self.encode(), noise, steps))}

    def fused_graph_fns(self) -> Dict[str, Callable[[], object]]:
        f_enc, f_den = self.graphs.fused
        images, state = self.images, self.state
        masks, tokens, token_mask = self.host_masks, self.host_tokens, self.host_token_mask

        def f_total():
            return f_den(f_enc.build_cache(f_enc.embed_images(images, masks), tokens, token_mask, state),
                         self.noise, self.steps)

        t0 = time.perf_counter()
        fused_call(self.model, f_total)()  # captured here (with the fused path on), not in a timed call
        self.out["fused_graph_capture_s"] = time.perf_counter() - t0
        f_tokens = f_enc.embed_images(images, masks)
        return {"vision graph fused": lambda: f_enc.embed_images(images, masks),
                "prefix_cache graph fused": lambda: f_enc.build_cache(f_tokens, tokens, token_mask, state),
                "denoise graph fused": lambda: f_den(self.cache, self.noise, self.steps),
                "total graph fused": f_total}

    def few_rows_fns(self) -> Dict[str, Callable[[], object]]:
        """The fused denoise graph with the expert's matmuls through few_rows_matmul (opt-in: PI0Model.use_fused's
        few_rows_matmul): the same graph as "denoise graph fused" but for those kernels."""
        graph = self.graphs.few_rows
        run = fused_call(self.model, lambda: graph(self.cache, self.noise, self.steps), few_rows_matmul=True)
        t0 = time.perf_counter()
        run()  # captured here, not in a timed call
        self.out["few_rows_graph_capture_s"] = time.perf_counter() - t0
        return {"denoise graph fused few-rows": run}

    def encoder_fns(self, total: bool) -> Dict[str, Callable[[], object]]:
        """Vision and the prefix cache graphed; with ``total`` (the denoise's graph works), the all-graphed total."""
        encoder, graph, cache = self.graphs.encoder, self.graphs.denoiser, self.cache
        images, state = self.images, self.state
        masks, tokens, token_mask = self.host_masks, self.host_tokens, self.host_token_mask
        graphed_tokens = encoder.embed_images(images, masks)  # captured here, not in a timed call
        n = cache.num_cached  # the cache's tail is scratch for the action tokens: not compared
        self.out["encoder_vs_eager"] = max_abs(
            encoder.build_cache(graphed_tokens, tokens, token_mask, state).keys[..., :n, :], cache.keys[..., :n, :])
        fns = {"vision graph": lambda: encoder.embed_images(images, masks),
               "prefix_cache graph": lambda: encoder.build_cache(graphed_tokens, tokens, token_mask, state)}
        if total:
            fns["total graph"] = lambda: graph(encoder.build_cache(encoder.embed_images(images, masks), tokens,
                                                                   token_mask, state), self.noise, self.steps)
            fns["total graph"]()  # captured here
            sites: List[str] = []
            self.out["host_waits_total_graph"] = host_waits(fns["total graph"], self.s.device, sites)
            self.out["host_wait_sites_total_graph"] = sites
        return fns

    def parity(self, fns: Dict[str, Callable[[], object]], ref32: torch.Tensor) -> Dict[str, float]:
        """The max abs differences (bfloat16 fast, graphed, fused, reference; float32 reference) and, on the way, the
        peak memory of one observation: what is allocated (weights, this block's tensors, captured graphs) plus the
        run's own peak."""
        model, device, out = self.model, self.s.device, self.out
        reset_peak(device)
        fast = model.denoise(self.encode(), self.noise, self.steps)
        out["peak_memory_gb"] = memory_gb(device)
        parity = {}
        if "denoise graph" in fns:
            reset_peak(device)
            if "vision graph" in fns:
                enc, masks, tokens, token_mask = (self.graphs.encoder, self.host_masks, self.host_tokens,
                                                  self.host_token_mask)
            else:
                enc, masks, tokens, token_mask = model, self.masks, self.tokens, self.token_mask
            graphed = self.graphs.denoiser(enc.build_cache(enc.embed_images(self.images, masks), tokens,
                                                           token_mask, self.state), self.noise, self.steps)
            out["peak_memory_gb_graph"] = memory_gb(device)
            parity["graph_vs_eager"] = max_abs(graphed, fast)
        if "total eager fused" in fns:
            fused_actions = fns["total eager fused"]()
            parity["fused_vs_plain_bf16"] = max_abs(fused_actions, fast)
            parity["fused_bf16_vs_reference_fp32"] = max_abs(fused_actions, ref32)
            if "total graph fused" in fns:
                parity["fused_graph_vs_fused_eager"] = max_abs(fns["total graph fused"](), fused_actions)
        if "denoise graph fused few-rows" in fns and "denoise graph fused" in fns:
            parity["few_rows_vs_fused_graph"] = max_abs(fns["denoise graph fused few-rows"]().clone(),
                                                        fns["denoise graph fused"]().clone())
        if "vision graph" in fns:
            parity.update(self.caches_after(fast))
        # = sample_actions(path="reference")
        ref = reference_denoise(model, self.prefix_pad, self.past, self.state, self.noise, self.steps)
        parity.update({"fast_bf16_vs_reference_fp32": max_abs(fast, ref32),
                       "reference_bf16_vs_reference_fp32": max_abs(ref, ref32),
                       "fast_bf16_vs_reference_bf16": max_abs(fast, ref),
                       "reference_fp32_max_abs": float(ref32.abs().max())})
        return parity

    def caches_after(self, fast: torch.Tensor) -> Dict[str, float]:
        """After the timed calls: the graphed encoder's cache and this block's first eager cache (what the eager and
        compiled denoises read) against a fresh eager one. The last H100 run's encoder_vs_eager (the first replay
        after capture) was nan or 0.5 while the graphed actions equalled the eager ones: these say which cache was
        off, and whether it still is."""
        enc, fresh = self.graphs.encoder, self.encode()
        n = fresh.num_cached
        graphed = enc.build_cache(enc.embed_images(self.images, self.masks), self.tokens, self.token_mask, self.state)
        return {"encoder_graph_cache_vs_fresh_eager": max_abs(graphed.keys[..., :n, :], fresh.keys[..., :n, :]),
                "block_eager_cache_vs_fresh_eager": max_abs(self.cache.keys[..., :n, :], fresh.keys[..., :n, :]),
                "block_eager_cache_actions_vs_fast": max_abs(self.model.denoise(self.cache, self.noise, self.steps),
                                                             fast)}

    def attention(self, keep_s: Callable[[], float]) -> None:
        """turbopi-bench's attention table, with the most cameras only, when the budget leaves it keep_s()."""
        s = self.s
        if self.views == max(s.args.views) and s.budget.fits(
                f"{self.config.variant} {self.views} views attention table", 0 if s.dry else PART_S["attention"],
                keep_s()):
            t0 = time.perf_counter()
            try:
                self.out["attention"] = bench.attention_table(self.model, self.cache, self.prefix_pad, self.past,
                                                              self.state, self.noise, s.table_timer(), self.steps)
            except Exception as e:
                s.budget.failed(self.out, "attention table", e)
            self.attention_s = time.perf_counter() - t0


def _bound_ms(costs, stage: str, matmul_tflops: float, bandwidth_gbs: float) -> float:
    """The roofline lower bound of one stage (of every stage, for "total") at these roofs."""
    stages = costmodel.STAGES if stage == "total" else (stage,)
    return sum(costmodel.stage_bound(costs[s], matmul_tflops, bandwidth_gbs)["bound_ms"] for s in stages)


def efficiency(w, times, peaks, published) -> Dict[str, object]:
    """Every fast timing against the cost model: achieved TFLOP/s and its fraction of this GPU's measured matmul
    rate; the roofline lower bound from the measured rate and copy bandwidth (and from the published peaks) and
    how far the measured time is from it."""
    costs = costmodel.workload_cost(w)
    mm, bw = peaks["matmul"]["tflops"], peaks["copy"]["gbs"]
    spec = costmodel.DEVICES.get(published) if published else None
    rows = {}
    for name, stage in FAST_STAGE.items():
        if name not in times:
            continue
        ms, cost = times[name]["median_ms"], costs[stage]
        bound = _bound_ms(costs, stage, mm, bw)
        bound_pub = _bound_ms(costs, stage, spec.peak_tflops["bfloat16"], spec.bandwidth_gbs) if spec else None
        tflops = cost.tensor_flops / ms / 1e9
        rows[name] = {"gflop": cost.tensor_flops / 1e9, "gbytes": cost.compulsory_bytes / 1e9, "median_ms": ms,
                      "tflops": tflops, "fraction_of_matmul_rate": tflops / mm,
                      "bound_measured_peaks_ms": bound, "bound_over_measured": bound / ms,
                      "bound_published_ms": bound_pub}
    return rows


# --- torch.compile, kernel counts, capture and fp8, with the most cameras ------------------------------------------
def _warm_start(s: Session, target, compiled: torch.Tensor, out: Dict[str, object]) -> None:
    """The warm start, in a new process from the cold start's cache (compile_start.warm_start): its first compiled
    denoise, what the process took in all, what the FX graph cache found, its actions against the cold start's."""
    preset, views, prompt_len = target
    s.free_memory()  # the new process builds the model too
    r = compile_start.warm_start(preset, views, prompt_len, s.args.steps, s.args.seed, str(s.device),
                                 out["inductor_cache_dir"], "eager" if s.dry else "inductor", s.args.threads,
                                 timeout_s=min(300.0, max(60.0, s.budget.left_s())))
    out["warm_start_s"] = r["warm_start_s"]
    out["warm_start"] = {"process_s": r["process_s"], "build_s": r["build_s"], "cache": r["cache"],
                         "actions_vs_cold": max_abs(torch.tensor(r["actions"]), compiled.float().cpu())}


def compile_block(s: Session, model, state_tuple, graph_cls, target) -> Dict[str, object]:
    """torch.compile of the denoise step (PI0Model.compile_denoise): its cold start in this process (a fresh inductor
    cache, nothing compiled before: compile_start.cold_start), then the compiled denoise eager and captured in a CUDA
    graph, timed interleaved with the eager denoise, and the compiled actions against the eager ones; last, the warm
    start in a new process (``target``: (preset, views, prompt length) of ``state_tuple``'s observation). A failure
    (no working inductor/triton, a capture error, the warm start) is reported, not raised: the rest stands."""
    steps = s.args.steps
    cache, noise = state_tuple
    out: Dict[str, object] = {"backend": "eager (dry run)" if s.dry else "inductor"}
    compile_fn = functools.partial(torch.compile, backend="eager") if s.dry else torch.compile
    with bench.plain_eager(model), replaced(torch, "compile", compile_fn), torch.inference_mode():
        try:
            eager = model.denoise(cache, noise, steps)
            out["inductor_cache_dir"] = tempfile.mkdtemp(prefix="turbopi_inductor_")
            out["compile_s"], compiled, out["cold_start_cache"] = compile_start.cold_start(
                model, cache, noise, steps, out["inductor_cache_dir"])
            out["cold_start_s"] = out["compile_s"]
            out["compiled_vs_eager"] = max_abs(compiled, eager)
        except Exception as e:
            return s.budget.failed(out, "torch.compile", e)

        def eager_denoise():
            with bench.plain_eager(model):
                return model.denoise(cache, noise, steps)

        fns = {"denoise compiled": lambda: model.denoise(cache, noise, steps), "denoise eager": eager_denoise}
        if graph_cls is not None:
            try:
                cgraph = graph_cls(model)
                t0 = time.perf_counter()
                out["compiled_graph_vs_eager"] = max_abs(cgraph(cache, noise, steps), eager)
                out["graph_capture_s"] = time.perf_counter() - t0
                fns["denoise compiled + graph"] = lambda: cgraph(cache, noise, steps)
            except Exception as e:
                s.budget.failed(out, "torch.compile + CUDA graph", e)
        times = s.timer()(fns)
    out["times"] = {name: bench.summary(t) for name, t in times.items()}
    try:
        _warm_start(s, target, compiled, out)
    except Exception as e:
        s.budget.failed(out, "torch.compile warm start (new process)", e)
    return out


def counts_block(s: Session, model, config, views: int, prompt_len: int) -> Dict[str, object]:
    """Kernels per stage and per layer, plain vs fused: aten ops dispatched (and, on CUDA, the profiler's
    kernels) for vision, the prefix cache, one denoise step and the whole denoise."""
    inputs = bench.make_inputs(config, views, prompt_len, s.device, s.args.seed)
    out: Dict[str, object] = {}
    if s.device.type == "cuda":
        try:
            return opcount.compare(model, *inputs, num_steps=s.args.steps, cuda_kernels=True)
        except Exception as e:  # the profiler's count failed: keep the dispatched ops at least
            s.budget.failed(out, "CUDA kernel counts (profiler)", e)
    try:
        out.update(opcount.compare(model, *inputs, num_steps=s.args.steps))
    except Exception as e:
        return s.budget.failed(out, "kernel counts", e)
    return out


def _changing_states(s: Session, config, tok, enc, den, views: int, prompt_len: int) -> Dict[str, object]:
    """Observations whose pi0.5 state changes every time, through the captured encoder and denoiser: the prompt
    lengths seen and the median replayed total (ms)."""
    import numpy as np

    a, device = s.args, s.device
    images, masks, _, _, _, noise = bench.make_inputs(config, views, prompt_len, device, a.seed)
    masks = masks.cpu()  # the encoder decides on the host (host_inputs), as in Policy.run
    rng = np.random.default_rng(a.seed)
    state = np.zeros(STATE_DIMS)
    seen, times = [], []
    for _ in range(3 if s.dry else 12):
        state = np.clip(state + rng.normal(0, 0.4, STATE_DIMS), -1, 1)
        tokens, mask = tok.encode(CAPTURE_PROMPT, state if config.is_pi05 else None)
        state_t = torch.zeros((1, config.action_dim), device=device)
        state_t[0, :STATE_DIMS] = torch.from_numpy(state).float()
        _, tokens_t, mask_t = host_inputs(masks, torch.from_numpy(tokens.astype(np.int64))[None],
                                          torch.from_numpy(mask)[None])
        sync(device)
        t1 = time.perf_counter()
        with torch.inference_mode():
            den(enc.build_cache(enc.embed_images(images, masks), tokens_t, mask_t, state_t), noise, a.steps)
        sync(device)
        times.append((time.perf_counter() - t1) * 1e3)
        seen.append(int(mask.sum()))
    return {"lengths_seen": seen, "replayed_total_ms_median": sorted(times)[len(times) // 2]}


def capture_block(s: Session, model, config, views: int, prompt_len: int) -> Dict[str, object]:
    """Every prompt length the capture prompt can produce (pi0.5: over every state of STATE_DIMS values; byte
    tokenizer) captured before ready in one shared pool, then a run whose pi0.5 state changes every observation:
    it must capture nothing more. Capture count, time, pool memory, replayed totals."""
    out: Dict[str, object] = {}
    try:
        pool = GraphPool(s.device, static_replay_on_cpu=s.dry)
        enc, den = CudaGraphEncoder(model, pool=pool), CudaGraphDenoiser(model, pool=pool)
        tok = ByteTokenizer(config.vlm.vocab_size, config.max_token_len, config.variant)
        lengths = prompt_lengths(tok, CAPTURE_PROMPT, STATE_DIMS if config.is_pi05 else None)
        t0 = time.perf_counter()
        with torch.inference_mode():
            enc.warm_up((views,), lengths)
            den.warm_up(cached_lengths(config, (views,), lengths), num_steps=s.args.steps)
        sync(s.device)
        pool.mark_ready()
        out["warm_up_s"] = time.perf_counter() - t0
        out["prompt_lengths"] = lengths
        seen = _changing_states(s, config, tok, enc, den, views, prompt_len)
        out.update(pool.stats.to_dict())
        out.update(seen)
        if out["captures_after_ready"]:
            s.budget.errors.append(f"{config.variant}: {out['captures_after_ready']} captures after ready")
    except Exception as e:
        return s.budget.failed(out, "capture every length", e)
    return out


FP8_MODES = ("fp8", fp8.WEIGHTS_ONLY)  # model.dtype's FP8 values: everything in FP8, the expert's weights alone


def _fp8_refusal(s: Session, mode: str) -> Optional[Dict[str, object]]:
    """The part's result where this device cannot run FP8 ``mode`` (said once), else None (a dry run: the twins)."""
    ok, why = fp8.fp8_support(s.device, mode)
    if ok or s.dry:
        return None
    s.budget.skip_once(why)
    return {"skipped": why}


def _eager_total(model, inputs, steps) -> Callable[[], torch.Tensor]:
    """One observation's actions through the model as it is now (bench.make_inputs's ``inputs``)."""
    images, masks, tokens, token_mask, state, noise = inputs
    return lambda: model.denoise(model.encode(images, masks, tokens, token_mask, state), noise, steps)


def _total_graphed(model, pool: GraphPool, inputs, steps, fused_kernels: bool,
                   few_rows: bool = False) -> Callable[[], object]:
    """The total as CUDA graphs on the model's current weights (the FP8 parts'), plain or with the fused kernels
    (and ``few_rows``: the few-rows matmul; captured by its first call)."""
    images, masks, tokens, token_mask, state, noise = inputs
    masks, tokens, token_mask = host_inputs(masks, tokens, token_mask)  # as Policy.run gives them
    enc, den = CudaGraphEncoder(model, pool=pool), CudaGraphDenoiser(model, pool=pool)

    def graphed():
        return den(enc.build_cache(enc.embed_images(images, masks), tokens, token_mask, state), noise, steps)

    return fused_call(model, graphed, few_rows) if fused_kernels else graphed


def _expert_linears(model) -> List[Tuple[torch.nn.Module, str, torch.nn.Module]]:
    """(owner, name, module) of every linear fp8.quantize_model(weights_only=True) replaces, to put them back."""
    return [(owner, name, child) for layer in model.expert.layers for owner in layer.modules()
            for name, child in owner.named_children() if name in fp8.QUANTIZED]


def _few_rows_variants(s: Session, model, inputs, steps, tag: str):
    """(label, make) of the fused few-rows total and denoise on the model's current weights: CUDA graphs where the
    session has them, else eager."""
    images, masks, tokens, token_mask, state, noise = inputs
    if not s.graphs:
        total = _eager_total(model, inputs, steps)
        return [(f"total eager fused few-rows {tag}", lambda: fused_call(model, total, True))]

    def denoise_graph():
        cache, den = model.encode(images, masks, tokens, token_mask, state), CudaGraphDenoiser(model,
                                                                                              pool=s.graph_pool())
        return fused_call(model, lambda: den(cache, noise, steps), True)

    return [(f"total graph fused few-rows {tag}",
             functools.partial(_total_graphed, model, s.graph_pool(), inputs, steps, True, True)),
            (f"denoise graph fused few-rows {tag}", denoise_graph)]


def fp8_weights_block(s: Session, model, config, views: int, prompt_len: int,
                      ref32: torch.Tensor) -> Dict[str, object]:
    """FP8 weights only (model.dtype fp8_weights: the expert's linears as fp8.FP8WeightLinear, read by the few-rows
    matmul at half bfloat16's bytes): the fused few-rows total and denoise graphs on them and on the bfloat16
    weights, timed interleaved, with the parity against bfloat16 and the float32 reference. The bfloat16 linears
    are put back after (the fp8 block follows). Refused devices report why."""
    refused = _fp8_refusal(s, fp8.WEIGHTS_ONLY)
    if refused:
        return refused
    out: Dict[str, object] = {"kernels": "twin on CPU (dry run)" if s.dry else "few_rows_matmul on FP8 weights"}
    steps, inputs = s.args.steps, bench.make_inputs(config, views, prompt_len, s.device, s.args.seed)
    total, originals = _eager_total(model, inputs, steps), _expert_linears(model)
    try:
        with torch.inference_mode():
            bf16 = total()
            out["parity"] = {"bf16_vs_reference_fp32": max_abs(bf16, ref32)}
            fns = try_variants(s, out, _few_rows_variants(s, model, inputs, steps, "bf16"), bf16, "eager bf16")
            out["quantized_linears"] = fp8.quantize_model(model, check_device=not s.dry, weights_only=True)
            actions = total()
            out["parity"].update(fp8_weights_vs_bf16=max_abs(actions, bf16),
                                 fp8_weights_vs_reference_fp32=max_abs(actions, ref32))
            fns.update(try_variants(s, out, _few_rows_variants(s, model, inputs, steps, "fp8-weights"), actions,
                                    "eager fp8-weights"))
            times = s.timer()(fns)
        out["times"] = {k: bench.summary(v) for k, v in times.items()}
    except Exception as e:
        return s.budget.failed(out, "fp8 weights", e)
    finally:
        for owner, name, child in originals:
            setattr(owner, name, child)
        model.clear_step_conditioning()
    return out


def fp8_block(s: Session, model, config, views: int, prompt_len: int, ref32: torch.Tensor) -> Dict[str, object]:
    """FP8 weights (last: the model's weights are quantized in place): eager and graphed totals, plain and fused,
    and the parity against the bfloat16 fast path and the float32 reference. Refused devices report why; a variant
    that fails (a fused kernel, a capture) is reported and the others stand."""
    refused = _fp8_refusal(s, "fp8")
    if refused:
        return refused
    out: Dict[str, object] = {"kernels": "dequantized twin on CPU (dry run)" if s.dry else "torch._scaled_mm"}
    steps, inputs = s.args.steps, bench.make_inputs(config, views, prompt_len, s.device, s.args.seed)
    total = _eager_total(model, inputs, steps)
    try:
        with torch.inference_mode():
            bf16 = total()
            out["quantized_linears"] = fp8.quantize_model(model, check_device=not s.dry)
            actions = total()
            out["parity"] = {"fp8_vs_bf16": max_abs(actions, bf16),
                             "fp8_vs_reference_fp32": max_abs(actions, ref32),
                             "bf16_vs_reference_fp32": max_abs(bf16, ref32)}
            fns = {"total eager fp8": total}
            variants = [("total eager fused fp8", lambda: fused_call(model, total))]
            if s.graphs:
                variants += [(label, functools.partial(_total_graphed, model, s.graph_pool(), inputs, steps, on))
                             for label, on in (("total graph fp8", False), ("total graph fused fp8", True))]
            fns.update(try_variants(s, out, variants, actions, "eager fp8"))
            times = s.timer()(fns)
        out["times"] = {k: bench.summary(v) for k, v in times.items()}
    except Exception as e:
        return s.budget.failed(out, "fp8", e)
    return out


def try_variants(s: Session, out: Dict[str, object], variants, reference: torch.Tensor,
                 against: str) -> Dict[str, Callable[[], object]]:
    """(label, make) pairs, make() -> fn: each fn called once (a graph is captured, a fused kernel compiled; its
    seconds in out["first_call_s"]) and again for out["parity"][f"{label} vs {against}"]. Returns the fns that
    worked; a variant that fails is reported in ``out`` and left out, the others stand."""
    fns: Dict[str, Callable[[], object]] = {}
    for label, make in variants:
        try:
            fn = make()
            t0 = time.perf_counter()
            fn()
            out.setdefault("first_call_s", {})[label] = time.perf_counter() - t0
            out["parity"][f"{label} vs {against}"] = max_abs(fn(), reference)
            fns[label] = fn
        except Exception as e:
            s.budget.failed(out, label, e)
    return fns


def _guided_graph(model, pool: GraphPool, cache, noise, guidance, steps, fused_kernels: bool) -> Callable[[], object]:
    """The guided denoise as a graph in ``pool``, plain or with the fused kernels (captured by its first call)."""
    den = CudaGraphGuidedDenoiser(model, pool=pool)
    call = functools.partial(den, cache, noise, guidance, steps)
    return fused_call(model, call) if fused_kernels else call


def rtc_block(s: Session, model, config, views: int, prompt_len: int) -> Dict[str, object]:
    """Real-time chunking's guided denoise (model/rtc.py: each step's forward and backward pass), plain and with the
    fused kernels and their backwards (model/fused_grad.py): graphed (CudaGraphGuidedDenoiser, one pool each) and
    timed interleaved where graphs run, else eager; each variant's actions against the plain eager guided denoise.
    A variant that fails is reported and the others stand."""
    steps = s.args.steps
    images, masks, tokens, token_mask, state, noise = bench.make_inputs(config, views, prompt_len, s.device,
                                                                        s.args.seed)
    g = torch.Generator().manual_seed(s.args.seed)
    guidance = Guidance(target=torch.randn(tuple(noise.shape), generator=g).to(s.device),
                        weights=torch.rand(tuple(noise.shape), generator=g).to(s.device))
    out: Dict[str, object] = {"max_guidance": guidance.max_guidance, "parity": {}}
    try:
        with torch.inference_mode():
            cache = model.encode(images, masks, tokens, token_mask, state)
            eager = functools.partial(guided_denoise, model, cache, noise, guidance, steps)
            plain = eager()
            out["parity"]["guided_vs_unguided"] = max_abs(plain, model.denoise(cache, noise, steps))
            variants = [("guided eager fused", lambda: fused_call(model, eager))]
            if s.graphs:
                variants += [(label, functools.partial(_guided_graph, model, s.graph_pool(), cache, noise, guidance,
                                                       steps, on))
                             for label, on in (("guided graph", False), ("guided graph fused", True))]
            fns = try_variants(s, out, variants, plain, "guided eager")
            if s.graphs:  # eager, each call is thousands of launches: only the graphs are timed
                fns = {label: fn for label, fn in fns.items() if "graph" in label}
            else:
                fns = {"guided eager": eager, **fns}
            times = s.timer()(fns)
        out["times"] = {k: bench.summary(v) for k, v in times.items()}
    except Exception as e:
        return s.budget.failed(out, "rtc", e)
    return out


def default_fixtures() -> Optional[Path]:
    """openpi's reference fixtures: ../shared/fixtures/openpi beside the repository, else .fixtures/openpi inside it
    (a copy that travels to a lent machine: docs/performance.md, "The command"); None when neither is there."""
    for root in (REPO_ROOT.parent / "shared" / "fixtures" / "openpi", REPO_ROOT / ".fixtures" / "openpi"):
        if (root / "pi0_case_a.npz").is_file():
            return root
    return None


def _fixture_actions(s: Session, root: Path, variant: str, dtype: str, case) -> torch.Tensor:
    """The fast path's actions on openpi's case a with the weights in ``dtype`` (fp8: quantized; in a dry run the
    dequantized twin of torch._scaled_mm on the CPU)."""
    from .verify import run_case

    stem = root / f"{variant}_tiny"
    twin = dtype in FP8_MODES and s.dry  # on the CPU: bfloat16 weights quantized here, unchecked
    model = load_model(stem.with_suffix(".safetensors"), config=str(stem.with_suffix(".json")), device=s.device,
                       dtype="bfloat16" if twin else dtype)
    if twin:
        fp8.quantize_model(model, check_device=False, weights_only=dtype == fp8.WEIGHTS_ONLY)
    return run_case(model, case).float()


def fixtures_block(s: Session, root: Optional[Path]) -> Dict[str, object]:
    """openpi's fixtures (tiny models; openpi's own actions) through the fast path on this device in float32,
    bfloat16 and the FP8 modes (FP8_MODES): each one's max abs difference from openpi's actions, and the FP8
    modes' from bfloat16's. Seconds."""
    if root is None:
        why = "no openpi fixtures (../shared/fixtures/openpi, or a copy in .fixtures/openpi)"
        s.budget.skip_once(why)
        return {"skipped": why}
    from .verify import load_case

    out: Dict[str, object] = {"root": str(root)}
    support = {mode: fp8.fp8_support(s.device, mode) for mode in FP8_MODES}
    dtypes = ("float32", "bfloat16") + tuple(mode for mode, (ok, _) in support.items() if ok or s.dry)
    for variant in ("pi0", "pi05"):
        try:
            case = load_case(root / f"{variant}_case_a.npz", device=s.device)
            actions = {dtype: _fixture_actions(s, root, variant, dtype, case) for dtype in dtypes}
            row = {f"{dtype}_vs_openpi": max_abs(a, case["actions"]) for dtype, a in actions.items()}
            row["openpi_max_abs"] = float(case["actions"].abs().max())  # for scale
            for mode, (_, why) in support.items():  # each FP8 mode against bfloat16, or why it did not run
                if mode in actions:
                    row[f"{mode}_vs_bfloat16"] = max_abs(actions[mode], actions["bfloat16"])
                else:
                    row[mode] = why
            out[variant] = row
        except Exception as e:
            s.budget.failed(out, f"openpi fixtures, {variant}", e)
    return out


# --- one preset ------------------------------------------------------------------------------------------------------
class PresetReport:
    """One preset: its model built once in float32 (the yardstick), rounded to bfloat16 and measured per cameras
    count, then, with the most cameras, kernel counts, capture, torch.compile, table (f) and fp8 as the budget
    allows, the attention table and table (f) (what matters least) only when they leave the time the parts that must
    come out still need, in this preset and the later ones (Budget.fits' keep_s). ``entry`` is filled as the parts
    finish, and Session.checkpoint() writes it after each (an interrupted run keeps them)."""

    def __init__(self, s: Session, name: str, prompt_len: int, peaks, published, entry: Optional[Dict] = None):
        self.s, self.name, self.prompt_len, self.peaks, self.published = s, name, prompt_len, peaks, published
        self.config = load_config(name)
        self.most = max(s.args.views)
        self.entry: Dict[str, object] = entry if entry is not None else {}
        self.entry.update({"variant": self.config.variant, "prompt_len": prompt_len, "views": {}})
        self.t0 = time.perf_counter()
        self.stages_s: Optional[float] = None  # build, yardstick and bfloat16 stages (no attention table)

    def __call__(self) -> Dict[str, object]:
        s, entry, config = self.s, self.entry, self.config
        self.t0 = t0 = time.perf_counter()
        reset_peak(s.device)
        model = random_model(config, seed=s.args.seed, device=s.device, dtype=torch.float32)
        entry["params"] = sum(p.numel() for p in model.parameters())
        entry["build_fp32_s"] = time.perf_counter() - t0
        s.say(f"\n== {self.name} ({config.variant}, {entry['params'] / 1e6:.1f} M parameters, prompt "
              f"{self.prompt_len} tokens) ==")
        ref32 = self.fp32_yardstick(model)
        self.to_bfloat16(model)
        graphs = Graphs(s, model)
        if graphs.denoiser is None:
            s.budget.skip_once("CUDA graphs: not a CUDA device (dry run)")
        last = None
        for views in s.args.views:
            block = ViewsBlock(s, model, config, views, self.prompt_len, graphs)
            entry["views"][views], last = block(ref32[views], self.peaks, self.published, lambda: self.keep_s(()))
            print_views(s.say, views, entry["views"][views])
            s.checkpoint()
        self.stages_s = time.perf_counter() - t0 - block.attention_s
        graphs.clear()
        self.most_views_parts(model, graphs, last, ref32[self.most])
        entry["total_s"] = time.perf_counter() - t0
        return entry

    def must_parts(self, name: str) -> Tuple[str, ...]:
        """The parts after the stages that must come out for preset ``name`` (EXPECT_S's keys)."""
        return ("kernel counts", "capture") + (("compile",) if self.compiles(name) else ()) + ("fp8",)

    def compiles(self, name: str) -> bool:
        """torch.compile runs for the first preset (every preset with --compile-all)."""
        a = self.s.args
        return bool(a.compile) and (name == next(iter(a.presets)) or a.compile_all)

    def keep_s(self, done: Tuple[str, ...]) -> float:
        """Seconds to keep for the must-have parts still to come (none in a dry run): this preset's not in ``done``,
        and every later preset's stages (as long as this preset's took) and parts."""
        if self.s.dry:
            return 0.0
        names = list(self.s.args.presets)
        stages = self.stages_s if self.stages_s is not None else time.perf_counter() - self.t0
        mine = sum(EXPECT_S[p] for p in self.must_parts(self.name) if p not in done)
        return mine + sum(stages + sum(EXPECT_S[p] for p in self.must_parts(name))
                          for name in names[names.index(self.name) + 1:])

    def fp32_yardstick(self, model) -> Dict[int, torch.Tensor]:
        """openpi's formulation (and the fast path) from the same noise, in full precision (TF32 off): the reference
        actions per cameras count."""
        s, config, steps = self.s, self.config, self.s.args.steps
        ref32, fp32_parity = {}, {}
        with no_tf32(), torch.inference_mode():
            for views in s.args.views:
                inputs = bench.make_inputs(config, views, self.prompt_len, s.device, s.args.seed)
                ref32[views] = model.sample_actions(*inputs[:5], noise=inputs[5], num_steps=steps,
                                                    path="reference").float()
                fast = model.sample_actions(*inputs[:5], noise=inputs[5], num_steps=steps, path="fast")
                fp32_parity[views] = max_abs(fast, ref32[views])
        self.entry["fp32_peak_memory_gb"] = memory_gb(s.device)
        self.entry["fp32_fast_vs_reference"] = fp32_parity
        s.say(f"    float32 on {s.device}: fast vs reference max abs diff " +
              ", ".join(f"{v} views {d:.2e}" for v, d in fp32_parity.items()))
        return ref32

    def to_bfloat16(self, model) -> None:
        """The same weights rounded to bfloat16, the float32 copies freed."""
        set_dtype(model, torch.bfloat16)
        gc.collect()
        if self.s.device.type == "cuda":
            torch.cuda.empty_cache()
            self.entry["weights_gb"] = torch.cuda.memory_allocated(self.s.device) / 1e9

    def most_views_parts(self, model, graphs: Graphs, last, ref32: torch.Tensor) -> None:
        """Kernel counts, capture of every prompt length, torch.compile, table (f) (only if it leaves the time the
        must-have parts still need) and fp8 (last: it quantizes the weights in place), each when the budget has room
        for it, each written as it finishes."""
        s, entry, config, name, most = self.s, self.entry, self.config, self.name, self.most
        need = {part: 0 if s.dry else seconds for part, seconds in PART_S.items()}
        if s.budget.fits(f"{name} kernel counts ({most} views)", need["kernel counts"]):
            entry["kernel_counts"] = counts_block(s, model, config, most, self.prompt_len)
            print_counts(s.say, entry["kernel_counts"])
            s.checkpoint()
        if s.budget.fits(f"{name} capture of every prompt length ({most} views)", need["capture"]):
            entry["capture"] = capture_block(s, model, config, most, self.prompt_len)
            print_capture(s.say, entry["capture"])
            s.checkpoint()
        self.compile(model, graphs.denoiser is not None, last)
        if s.budget.fits(f"{name} table (f) ({most} views)", need["table (f)"],
                         self.keep_s(("kernel counts", "capture", "compile"))):
            try:
                entry["ablation"] = bench.ablation_table(model, last[0], last[1], s.table_timer(), s.args.steps)
            except Exception as e:
                entry["ablation"] = s.budget.failed({}, "table (f)", e)
            print_ablation(s.say, entry["ablation"])
            s.checkpoint()
        if s.budget.fits(f"{name} real-time chunking ({most} views)", need["rtc"],
                         self.keep_s(("kernel counts", "capture", "compile"))):
            entry["rtc"] = rtc_block(s, model, config, most, self.prompt_len)
            print_rtc(s.say, entry["rtc"])
            s.checkpoint()
        if s.budget.fits(f"{name} fp8 weights ({most} views)", need["fp8 weights"], self.keep_s(("kernel counts",
                                                                                               "capture", "compile"))):
            entry["fp8_weights"] = fp8_weights_block(s, model, config, most, self.prompt_len, ref32)
            print_fp8_weights(s.say, entry["fp8_weights"])
            s.checkpoint()
        if s.budget.fits(f"{name} fp8 ({most} views)", need["fp8"]):
            entry["fp8"] = fp8_block(s, model, config, most, self.prompt_len, ref32)
            print_fp8(s.say, entry["fp8"])

    def compile(self, model, graphed: bool, last) -> None:
        """torch.compile for the first preset (every preset with --compile-all), within the reserve the budget keeps
        for it (1.5x the last compile block's time: cold start, timings, warm start)."""
        s, a = self.s, self.s.args
        if a.compile and not self.compiles(self.name):
            s.budget.skip_once("torch.compile of the presets after the first (--compile-all to run it for every "
                               "preset)")
        elif a.compile and s.budget.fits(f"{self.name} torch.compile ({self.most} views)",
                                         10 if s.dry else s.budget.compile_reserve_s):
            graph_cls = (lambda m: CudaGraphDenoiser(m, pool=s.graph_pool())) if graphed else None
            t0 = time.perf_counter()
            self.entry["compile"] = compile_block(s, model, last, graph_cls, (self.name, self.most, self.prompt_len))
            print_compile(s.say, self.entry["compile"])
            s.budget.compile_reserve_s = max(s.budget.compile_reserve_s, 1.5 * (time.perf_counter() - t0))
            if hasattr(torch, "_dynamo"):
                torch._dynamo.reset()  # drop the compiled code (and its hold on this model) before the next preset
            s.checkpoint()


# --- the printed lines -----------------------------------------------------------------------------------------------
def print_views(say: Report, views: int, b: Dict) -> None:
    t, p = b["times"], b["parity"]
    print_errors(say, b)
    med = lambda k: f"{t[k]['median_ms']:.2f}" if k in t else "n/a"  # noqa: E731
    say(f"  {views} views ({b['cache_tokens']} cached tokens), median ms: vision {med('vision')} / graph "
        f"{med('vision graph')}, prefix {med('prefix_cache')} / graph {med('prefix_cache graph')}, denoise eager "
        f"{med('denoise eager')} / graph {med('denoise graph')}, total eager "
        f"{med('total eager')} / graph {med('total graph')}; reference denoise {med('reference denoise')}, total "
        f"{med('reference total')}")
    say(f"    fused kernels: denoise eager {med('denoise eager fused')} / graph {med('denoise graph fused')}, "
        f"vision graph {med('vision graph fused')}, prefix graph {med('prefix_cache graph fused')}, total eager "
        f"{med('total eager fused')} / graph {med('total graph fused')}; fused vs plain (bf16) max abs diff "
        f"{_num(p.get('fused_vs_plain_bf16'), '.2e')}, fused vs fp32 reference "
        f"{_num(p.get('fused_bf16_vs_reference_fp32'), '.2e')}")
    if "denoise graph fused few-rows" in t:
        say(f"    few-rows matmul (model/few_rows_matmul.py): denoise graph fused {med('denoise graph fused few-rows')}"
            f" against {med('denoise graph fused')} without; max abs diff of their actions "
            f"{_num(p.get('few_rows_vs_fused_graph'), '.2e')}")
    say(f"    bf16 fast vs fp32 reference max abs diff {p['fast_bf16_vs_reference_fp32']:.3e} (bf16 reference: "
        f"{p['reference_bf16_vs_reference_fp32']:.3e}; |actions| up to {p['reference_fp32_max_abs']:.2f}); graph "
        f"vs eager {_num(p.get('graph_vs_eager'), '.2e')} (encoder graph's cache vs eager "
        f"{_num(b.get('encoder_vs_eager'), '.2e')}, after the timed calls "
        f"{_num(p.get('encoder_graph_cache_vs_fresh_eager'), '.2e')}, the block's eager cache then "
        f"{_num(p.get('block_eager_cache_vs_fresh_eager'), '.2e')}); peak memory eager "
        f"{_num(b.get('peak_memory_gb'), '.2f')}"
        f" GB, graph {_num(b.get('peak_memory_gb_graph'), '.2f')} GB; host waits in one all-graphed total "
        f"{_num(b.get('host_waits_total_graph'), 'd')}"
        + "".join(f" [{site}]" for site in b.get("host_wait_sites_total_graph") or []))
    print_efficiency(say, b["efficiency"])
    att = b.get("attention")
    if att:
        r = att["replayed"]
        say("    attention, replayed, ms: " + ", ".join(f"{k} {v['median_ms']:.2f} ({v['speedup_vs_eager']:.2f}x)"
                                                       for k, v in r.items()))


def print_efficiency(say: Report, efficiency_rows: Dict) -> None:
    for name, e in efficiency_rows.items():
        pub = e["bound_published_ms"]
        say(f"    {name:<24} {e['gflop']:9.1f} GFLOP {e['median_ms']:9.2f} ms {e['tflops']:8.2f} TFLOP/s "
            f"({e['fraction_of_matmul_rate']:5.1%} of the matmul rate); roofline bound "
            f"{e['bound_measured_peaks_ms']:.2f}"
            f" ms measured peaks ({e['bound_over_measured']:5.1%} of it reached)"
            + (f", {pub:.2f} ms published" if pub is not None else ""))


def print_errors(say: Report, c: Dict) -> None:
    for error in c.get("errors", []):
        say(f"    FAILED {error}")


def print_counts(say: Report, c: Dict) -> None:
    print_errors(say, c)
    if "plain" in c:
        say("    kernels per stage (aten ops dispatched, GPU launches among them; a layer row is one layer):")
        for row in opcount.table(c):
            say(row)


def print_capture(say: Report, c: Dict) -> None:
    print_errors(say, c)
    if "captures" in c:
        pool = c.get("pool_reserved_bytes")
        say(f"    every prompt length captured before ready: {len(c['prompt_lengths'])} lengths, "
            f"{c['captures']} graphs in {c['capture_s']:.1f} s (warm-up {c['warm_up_s']:.1f} s), pool "
            + (f"{pool / 1e6:.0f} MB" if pool is not None else "n/a")
            + f", static buffers {c['static_bytes'] / 1e6:.1f} MB; changing states (lengths "
            f"{sorted(set(c['lengths_seen']))}): {c['captures_after_ready']} captures after ready, total "
            f"{c['replayed_total_ms_median']:.2f} ms median")


def print_fp8(say: Report, c: Dict) -> None:
    print_errors(say, c)
    if "skipped" in c:
        say(f"    fp8: skipped ({c['skipped']})")
    elif "times" in c:
        p = c["parity"]
        say(f"    fp8 ({c['kernels']}, {c['quantized_linears']} linears): "
            + ", ".join(f"{k} {v['median_ms']:.2f} ms" for k, v in c["times"].items())
            + f"; max abs diff vs bf16 {p['fp8_vs_bf16']:.3e}, vs fp32 reference "
            f"{p['fp8_vs_reference_fp32']:.3e} (bf16: {p['bf16_vs_reference_fp32']:.3e})")


def print_fp8_weights(say: Report, c: Dict) -> None:
    print_errors(say, c)
    if "skipped" in c:
        say(f"    fp8 weights: skipped ({c['skipped']})")
        return
    if "times" not in c:
        return
    t, p = c["times"], c["parity"]
    ratios = []
    for what in ("total graph fused few-rows", "denoise graph fused few-rows", "total eager fused few-rows"):
        if f"{what} bf16" in t and f"{what} fp8-weights" in t:
            ratios.append(f"{what} {t[f'{what} bf16']['median_ms']:.2f} -> {t[f'{what} fp8-weights']['median_ms']:.2f}"
                          f" ms ({t[f'{what} bf16']['median_ms'] / t[f'{what} fp8-weights']['median_ms']:.2f}x)")
    say(f"    fp8 weights only ({c['kernels']}, {c['quantized_linears']} expert linears): " + "; ".join(ratios)
        + f"; max abs diff vs bf16 {p['fp8_weights_vs_bf16']:.3e}, vs fp32 reference "
        f"{p['fp8_weights_vs_reference_fp32']:.3e} (bf16: {p['bf16_vs_reference_fp32']:.3e})")


def print_rtc(say: Report, c: Dict) -> None:
    print_errors(say, c)
    if "times" not in c:
        return
    t, p = c["times"], c["parity"]
    ratio = ""
    if "guided graph" in t and "guided graph fused" in t:
        ratio = f" (fused {t['guided graph']['median_ms'] / t['guided graph fused']['median_ms']:.2f}x)"
    say("    real-time chunking, guided denoise: " + ", ".join(f"{k} {v['median_ms']:.2f} ms" for k, v in t.items())
        + ratio + "; max abs diff vs eager guided: "
        + ", ".join(f"{k.replace(' vs guided eager', '')} {v:.2e}" for k, v in p.items() if k.endswith("eager"))
        + f" (guidance moved the actions by {p['guided_vs_unguided']:.2e})")


def print_compile(say: Report, c: Dict) -> None:
    print_errors(say, c)
    if "times" not in c:
        return
    t, w = c["times"], c.get("warm_start", {})
    say(f"    torch.compile ({c['backend']}, cold start {c['compile_s']:.1f} s with a fresh inductor cache "
        f"({_cache_found(c.get('cold_start_cache'))}), warm start {_num(c.get('warm_start_s'), '.1f')} s from it in "
        f"a new process ({_cache_found(w.get('cache'))}; {_num(w.get('process_s'), '.1f')} s with Python, torch and "
        "the model): denoise ms " + ", ".join(f"{k} {v['median_ms']:.2f}" for k, v in t.items())
        + f"; compiled vs eager max abs diff {c['compiled_vs_eager']:.2e}")


def _cache_found(counts: Optional[Dict[str, int]]) -> str:
    if not counts:
        return "FX graph cache n/a"
    def of(kind: str) -> str:
        return ", ".join(f"{counts.get(f'{kind}_{what}', 0)} {word}"
                         for what, word in (("hit", "hits"), ("miss", "misses"), ("bypass", "bypassed")))
    return f"FX graph cache {of('fxgraph_cache')}; AOTAutograd cache {of('autograd_cache')}"


def print_fixtures(say: Report, c: Dict) -> None:
    if "skipped" in c:
        return say(f"openpi fixtures: skipped ({c['skipped']})")
    print_errors(say, c)
    for variant in ("pi0", "pi05"):
        row = c.get(variant)
        if row:
            say(f"openpi fixtures, {variant} case a, fast path vs openpi's actions, max abs diff: "
                + ", ".join(f"{k.split('_vs_')[0]} {v:.2e}" for k, v in row.items() if k.endswith("_vs_openpi"))
                + "".join(f"; {mode} vs bfloat16 {row[f'{mode}_vs_bfloat16']:.2e}" if f"{mode}_vs_bfloat16" in row
                          else f"; {mode}: {row.get(mode)}" for mode in FP8_MODES)
                + f" (|actions| up to {row['openpi_max_abs']:.2f})")


def print_ablation(say: Report, rows: Dict) -> None:
    if "errors" in rows:
        return print_errors(say, rows)
    say("    (f) each optimization undone, denoise eager, ms: " + ", ".join(
        f"{k.split(' ->')[0]} {r['median_ms']:.2f} ({r['slowdown']:.2f}x, {r['ops']} ops)" for k, r in rows.items()))


# --- the whole report ------------------------------------------------------------------------------------------------
class Run:
    """One report: the machine and its measured roofs, then every preset (one failing does not lose the others),
    the JSON and the text written after each part, the markdown rows and what was skipped at the end (also when
    interrupted by SIGINT, e.g. ``timeout -s INT``)."""

    def __init__(self, args):
        self.s = Session(args)

    def __call__(self) -> int:
        s = self.s
        if s.device.type == "cuda" and not torch.cuda.is_available():
            print(f"gpu_report: torch {torch.__version__} at {sys.executable} has no CUDA device; run with a CUDA "
                  "build of torch (PYTHON=/path/to/python bash scripts/gpu_report.sh), or pass --dry-run",
                  file=sys.stderr)
            return 2
        if s.args.threads:
            torch.set_num_threads(s.args.threads)
        # A process started in the background by a non-interactive shell inherits SIGINT ignored, and Python then
        # installs no handler of its own: the time limit's SIGINT (timeout -s INT) must stop the report all the same
        signal.signal(signal.SIGINT, signal.default_int_handler)
        result, stem = self.start()
        s.checkpoint = lambda: self.finish(result, stem, partial=True)
        try:
            result["fixtures"] = fixtures_block(s, s.args.fixtures)  # seconds: tiny models
            print_fixtures(s.say, result["fixtures"])
            s.checkpoint()
            for preset, prompt_len in s.args.presets.items():
                result["models"][preset] = {}
                self.preset(result["models"][preset], preset, prompt_len, result["peaks"],
                            result["published_device"])
                s.checkpoint()
        except KeyboardInterrupt:  # a time limit (timeout -s INT): keep what was measured, with its rows
            s.budget.errors.append(f"interrupted after {s.budget.elapsed_s():.0f} s: what follows the last part "
                                   "printed is missing")
            self.finish(result, stem, partial=False)
            return 130
        self.finish(result, stem, partial=False)
        return 1 if s.budget.errors else 0

    def preset(self, entry: Dict[str, object], name: str, prompt_len: int, peaks, published) -> None:
        """PresetReport into ``entry``; a failure (e.g. out of memory) is added to it (with what was measured before
        it) and does not lose the other presets."""
        try:
            PresetReport(self.s, name, prompt_len, peaks, published, entry)()
        except Exception as e:
            self.s.budget.errors.append(f"{name}: {type(e).__name__}: {e}")
            self.s.say(f"    {name} FAILED: {type(e).__name__}: {e}")
            entry["error"] = traceback.format_exc()
        finally:
            self.s.free_memory()

    def machine(self):
        """-> (bench.machine() with the GPU's, the name for the files, the costmodel.DEVICES key or None)."""
        device = self.s.device
        machine = bench.machine()
        if device.type != "cuda":
            return machine, "dryrun-cpu", None
        props = torch.cuda.get_device_properties(device)
        machine.update(gpu=props.name, gpu_capability=f"{props.major}.{props.minor}",
                       gpu_memory_gb=props.total_memory / 1e9, cuda=torch.version.cuda)
        return machine, machine["gpu"], published_device(machine["gpu"])

    def start(self):
        """The header lines and the measured roofs. -> (the result to fill, the stem of the files)."""
        s, say, device = self.s, self.s.say, self.s.device
        machine, name, published = self.machine()
        out_dir = Path(s.args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        commit = commit_id()
        git = commit.get("git")
        say(f"gpu_report: commit {commit['commit']} ({commit['source']}" + (", modified" if commit["dirty"] else "")
            + (f"; the git tree around it is at {git['commit']}{', modified' if git['dirty'] else ''}" if git else "")
            + ")")
        say(f"gpu_report: {name} ({device}); torch {torch.__version__}, CUDA {machine.get('cuda')}; CPU "
            f"{machine['cpu']}"
            f" ({' '.join(machine['cpu_flags'])}); load average {machine['load_avg_1min']}"
            + ("; DRY RUN (CPU, tiny presets)" if s.dry else ""))
        peaks = measure_peaks(device, s.dry)
        say(f"this device, measured: {peaks['matmul']['dtype']} matmul {peaks['matmul']['tflops']:.3g} TFLOP/s "
            f"({'x'.join(map(str, peaks['matmul']['shape']))}), copy {peaks['copy']['gbs']:.0f} GB/s; published "
            "peaks: " + (f"costmodel.DEVICES[{published!r}]" if published else "not in costmodel.DEVICES"))
        fp8_ok, fp8_why = fp8.fp8_support(device)
        say(f"fused kernels: {fused.backend(device)}; fp8: {'supported' if fp8_ok else fp8_why}")
        result: Dict[str, object] = {"commit": commit_id(), "machine": machine, "peaks": peaks,
                                     "published_device": published, "setup": self.setup(), "models": {}}
        return result, out_dir / f"gpu_{slug(name)}"

    def setup(self) -> Dict[str, object]:
        s, a = self.s, self.s.args
        return {"dry_run": s.dry, "device": str(s.device), "dtype": "bfloat16", "views": a.views,
                "steps": a.steps, "iters": a.iters, "warmup": a.warmup, "attention_iters": a.attention_iters,
                "seed": a.seed, "budget_s": a.budget_s, "compile": a.compile, "compile_all": a.compile_all,
                "presets": dict(a.presets), "fused_backend": fused.backend(s.device)}

    def finish(self, result: Dict, stem: Path, partial: bool) -> None:
        """Write the .json and the .txt (what was printed); at the end (not ``partial``) with the markdown rows,
        what was skipped and the errors. Each file is replaced whole (written beside, then renamed)."""
        budget, say = self.s.budget, self.s.say
        result["skipped"], result["errors"] = budget.skipped, budget.errors
        result["kernel_choices"] = CHOICES.to_dict()
        result["elapsed_s"] = budget.elapsed_s()
        result["load_avg_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        if not partial:
            say("\nmarkdown rows for docs/performance.md:")
            for row in markdown_rows(result):
                say(row)
            say(f"\nkernel choices (model/kernel_choice.py; measured when first run, us a call in a CUDA graph): "
                f"{len(CHOICES.choices())}")
            for c in CHOICES.choices():
                say(f"  {c.line()}")
            for s in budget.skipped:
                say(f"skipped: {s}")
            for e in budget.errors:
                say(f"ERROR: {e}")
            say(f"elapsed {result['elapsed_s']:.0f} s; load average at end {result['load_avg_1min_end']}")
        _replace(stem.with_suffix(".txt"), "\n".join(say.lines) + "\n")
        _replace(stem.with_suffix(".json"), json.dumps(result, indent=1, default=str) + "\n")
        if not partial:
            say(f"wrote {stem}.txt and {stem}.json")


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole: beside it first, then renamed over it."""
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    os.replace(part, path)


MARKDOWN_HEADER = ("| GPU | model | cameras | vision eager / graph | prefix cache eager / graph | denoise eager / "
                   "graph / "
                   "compile+graph | total eager / graph | total graph fused | roofline bound (measured peaks) | "
                   "graph total / bound | bf16 fast vs fp32 reference | peak memory |\n"
                   "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def markdown_rows(result: Dict) -> List[str]:
    """One row per preset and cameras count: median ms of each stage, the bound, parity, memory."""
    gpu = result["machine"].get("gpu") or "CPU (dry run)"
    rows = [MARKDOWN_HEADER]
    for preset, m in result["models"].items():
        if "views" not in m:
            continue
        most = max(m["views"]) if m["views"] else None
        comp = m.get("compile", {}).get("times", {})
        for views, b in m["views"].items():
            t = b["times"]
            ms = lambda k, src=t: f"{src[k]['median_ms']:.2f}" if k in src else "n/a"  # noqa: E731
            cg = ms("denoise compiled + graph", comp) if views == most and comp else "-"
            e = b["efficiency"].get("total graph") or b["efficiency"]["total eager"]
            mem = b.get("peak_memory_gb")
            rows.append(f"| {gpu} | {preset} | {views} | {ms('vision')} / {ms('vision graph')} | "
                        f"{ms('prefix_cache')} / {ms('prefix_cache graph')} | "
                        f"{ms('denoise eager')} / {ms('denoise graph')} / {cg} | {ms('total eager')} / "
                        f"{ms('total graph')} | {ms('total graph fused')} | {e['bound_measured_peaks_ms']:.2f} | "
                        f"{e['bound_over_measured']:.0%} | "
                        f"{b['parity']['fast_bf16_vs_reference_fp32']:.2e} | "
                        + (f"{mem:.1f} GB" if mem is not None else "n/a") + " |")
    return rows


def parse_args(argv):
    p = argparse.ArgumentParser(prog="gpu_report", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the whole flow on the CPU with the tiny presets")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out-dir", default=None, help="default docs/bench (dry run: a temporary directory)")
    p.add_argument("--views", default=None, help="camera counts, comma separated (default 1,2,3; dry run 1,2)")
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default 10; dry run 2)")
    p.add_argument("--iters", type=int, default=None, help="timed iterations per table (default 10; dry run 1)")
    p.add_argument("--warmup", type=int, default=None, help="default 3; dry run 0")
    p.add_argument("--attention-iters", type=int, default=None, help="default 10; dry run 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; dry run 1, steady on a shared machine)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    p.add_argument("--compile-all", action="store_true",
                   help="torch.compile (cold and warm start) for every preset, not only the first (dry run: always)")
    p.add_argument("--fixtures", type=Path, default=None,
                   help="openpi's fixtures folder (default ../shared/fixtures/openpi, else .fixtures/openpi)")
    p.add_argument("--budget-s", type=float, default=450.0,
                   help="wall-clock budget: later optional parts (compile, tables) are skipped when it runs short")
    args = p.parse_args(argv)
    dry = args.dry_run
    args.views = args.views or ("1,2" if dry else "1,2,3")
    try:
        args.views = sorted({int(v) for v in args.views.split(",")})
    except ValueError:
        p.error(f"--views must be comma-separated integers, got {args.views!r}")
    if not args.views or not set(args.views) <= {1, 2, 3}:
        p.error(f"--views must be among 1,2,3, got {args.views}")
    args.presets = dict(DRY_PRESETS if dry else PRESETS)
    args.fixtures = args.fixtures or default_fixtures()
    args.compile_all = args.compile_all or dry
    args.steps = args.steps or (2 if dry else 10)
    args.threads = args.threads if args.threads is not None else (1 if dry else 0)
    args.iters = args.iters or (1 if dry else 10)
    args.warmup = args.warmup if args.warmup is not None else (0 if dry else 3)
    args.attention_iters = args.attention_iters or (1 if dry else 10)
    if args.out_dir is None:
        import tempfile

        args.out_dir = (os.path.join(tempfile.gettempdir(), "turbopi_gpu_report_dryrun") if dry
                        else str(Path(__file__).resolve().parents[2] / "docs" / "bench"))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    try:
        return Run(args)()
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main())
