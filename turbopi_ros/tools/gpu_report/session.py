"""What every part of the report reads and shares: the session (arguments, device, printed lines, time
budget), the commit measured, timing, the device's measured roofs, host waits, TF32 off and back,
memory and parity helpers."""
from __future__ import annotations

import contextlib
import gc
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from .. import bench
from ...model import fused
from ...model.cuda_graph import GraphPool


# Seconds on an H100 (not in a dry run): PART_S, what a part needs left to start (torch.compile: Budget's
# compile_reserve_s); EXPECT_S, what the parts that must come out take, kept free for them by the parts of less
# importance (the attention table and table (f), skipped first): kernel counts, capture, torch.compile's cold and
# warm start, fp8 (a later preset's stages: as long as this preset's took).
PART_S = {"attention": 30, "kernel counts": 20, "capture": 40, "table (f)": 40, "rtc": 25, "fp8 weights": 25,
          "fp8": 30}
EXPECT_S = {"kernel counts": 20, "capture": 15, "compile": 75, "fp8": 20}
REPO_ROOT = Path(__file__).resolve().parents[3]  # turbopi_ros/tools/gpu_report/session.py -> the repository


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


def fused_call(model, fn: Callable[[], object], few_rows_matmul: bool = False,
               pdl: bool = False) -> Callable[[], object]:
    """fn run with the model's fused kernels on, with ``few_rows_matmul`` its few-rows matmul too, with ``pdl`` their
    launches with programmatic dependent launch (fused.use_pdl: a graph keeps the launches of its capture); the
    switches put back after."""
    def run():
        was = model.fused, model.few_rows_matmul
        model.use_fused(True, few_rows_matmul=few_rows_matmul or was[1])
        try:
            with fused.pdl_launches(True, model.device) if pdl else contextlib.nullcontext():
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

