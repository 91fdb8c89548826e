"""One preset: its model built once, the float32 yardstick, every cameras count in bfloat16, then the
parts with the most cameras as the budget allows."""
from __future__ import annotations

import gc
import time
from typing import Dict, Optional, Tuple

import torch

from .. import bench
from ...model.checkpoint import random_model, set_dtype
from ...model.config import load_config
from ...model.cuda_graph import CudaGraphDenoiser
from .fp8_parts import fp8_block, fp8_weights_block
from .parts import capture_block, compile_block, counts_block, rtc_block
from .printing import (print_ablation, print_capture, print_compile, print_counts, print_fp8,
                       print_fp8_weights, print_rtc, print_views)
from .session import EXPECT_S, PART_S, Session, max_abs, memory_gb, no_tf32, reset_peak
from .stages import Graphs, ViewsBlock


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

