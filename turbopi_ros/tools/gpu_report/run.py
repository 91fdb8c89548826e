"""The whole report: the machine and its roofs, every preset, the files written after each part, the
markdown rows; its command line."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Dict, List

import torch

from .. import bench
from ...model import fp8, fused
from ...model.kernel_choice import CHOICES
from .fixtures import default_fixtures, fixtures_block
from .preset import PresetReport
from .printing import print_fixtures
from .session import REPO_ROOT, Session, commit_id, measure_peaks, published_device, slug


PRESETS = {"pi0": 20, "pi05": 80}  # preset -> valid prompt tokens (pi0.5: task + discretized state)
DRY_PRESETS = {"tiny": 20, "tiny_pi05": 80}


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
                   "compile+graph | total eager / graph | total graph fused | total graph fused few-rows | total "
                   "graph fused few-rows pdl | roofline bound (measured peaks) | graph total / bound | bf16 fast vs "
                   "fp32 reference | peak memory |\n"
                   "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


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
                        f"{ms('total graph')} | {ms('total graph fused')} | {ms('total graph fused few-rows')} | "
                        f"{ms('total graph fused few-rows pdl')} | "
                        f"{e['bound_measured_peaks_ms']:.2f} | "
                        f"{e['bound_over_measured']:.0%} | "
                        f"{b['parity']['fast_bf16_vs_reference_fp32']:.2e} | "
                        + (f"{mem:.1f} GB" if mem is not None else "n/a") + " |")
    return rows


def parse_args(argv):
    p = argparse.ArgumentParser(prog="gpu_report", description="One command for a GPU: full pi0 and pi0.5, "
                                "bfloat16, measured end to end (scripts/gpu_report.sh)")
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
                        else str(REPO_ROOT / "docs" / "bench"))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    try:
        return Run(args)()
    finally:
        torch.set_num_threads(threads)

