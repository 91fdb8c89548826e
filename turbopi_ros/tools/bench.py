"""turbopi-bench: where the time goes, fast path against openpi's formulation, measured side by side in one run.

    turbopi-bench --config ../shared/configs/medium_pi0.json --views 3 --prompt-len 12 --steps 10 --iters 10
    turbopi-bench --preset pi05 --device cuda --dtype bfloat16 --views 2 --cuda-graph

Prints (a) the stage breakdown vision / prefix cache / denoise / total (median and p90) of the fast path and of the
reference path; (b) the attention table: the depth x steps attention calls of one denoise - the fast path's maskless
SDPA over the compacted cache (queries: the action tokens), and openpi's masked attention over its padded cache
(queries: pi0's state token + the actions), eager as openpi runs it or SDPA given openpi's mask - timed two ways:
inside real denoise runs (what a denoise pays, caches as the layers leave them) and replayed back to back from the
captured inputs of one denoise (the attention kernels alone); (c) fast vs reference end to end with the max abs
difference of their actions from the same run; (d) the machine, with its load average; with --profile N, (e) the N
ops with the most self time in one fast and one reference denoise (torch.profiler); (f) the fast denoise with each
optimization undone, one at a time and all together (ablation.py); (g) each stage's and the end-to-end achieved GFLOP/s
(FLOPs from costmodel.py) and their fraction of this machine's matmul rate measured in the same run (the ceiling
probe of (b), also timed interleaved with the stages). --json FILE writes it all. --roofline prints the cost model's
FLOPs and bytes per stage and the roofline lower bounds on the devices of costmodel.DEVICES for the same setup,
without running anything.
Random weights (timing does not depend on values); the prompt has --prompt-len valid tokens padded to max_token_len.
Every measurement is interleaved with the ones it is compared with. On a machine shared with other work, --threads 1
gives steadier numbers: a multi-threaded op waits whenever one of its threads is descheduled.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from . import costmodel
from .ablation import ALL_REVERSED, REVERSALS, OpCounter, all_reversed, replaced, sdpa_repeated_kv
from ..model.checkpoint import random_model
from ..model import opcount
from ..model.config import load_config
from ..model.kernel_choice import CHOICES
from .machine import cpu_model
from ..model.reference import reference_denoise, reference_prefix


# CPU features that decide how fast float32 / bfloat16 matmuls can be.
MATMUL_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_flags() -> List[str]:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [flag for flag in MATMUL_FLAGS if flag in flags]


def machine() -> Dict[str, object]:
    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_flags": cpu_flags(), "torch": torch.__version__, "python": platform.python_version(), "gpu": None,
            "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


class Timer:
    """Wall times of several functions measured side by side: each iteration runs every function once, in an order
    that rotates, so drifts of a shared or throttled machine hit them all alike. CUDA is synchronized around calls."""

    def __init__(self, device: torch.device, warmup: int, iters: int):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.warmup, self.iters = warmup, iters

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)  # the timed GPU (cuda:N), not the current one

    def __call__(self, fns: Dict[str, Callable[[], object]], iters: int = 0) -> Dict[str, List[float]]:
        names = list(fns)
        times: Dict[str, List[float]] = {n: [] for n in names}
        total = self.warmup + (iters or self.iters)
        for i in range(total):
            for name in names[i % len(names):] + names[: i % len(names)]:
                self.sync()
                t0 = time.perf_counter()
                fns[name]()
                self.sync()
                if i >= self.warmup:
                    times[name].append(time.perf_counter() - t0)
        return times


def summary(times: List[float]) -> Dict[str, float]:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {"median_ms": statistics.median(ordered) * 1e3, "p90_ms": p90 * 1e3}


def make_inputs(config, views: int, prompt_len: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s, n = config.vision.image_size, 3
    images = (torch.rand((1, n, 3, s, s), generator=g) * 2 - 1).to(device)
    masks = torch.tensor([[i < views for i in range(n)]], device=device)
    L = config.max_token_len
    if not 1 <= prompt_len <= L:
        raise ValueError(f"--prompt-len must be in 1..{L} (max_token_len)")
    tokens = torch.zeros((1, L), dtype=torch.long)
    tokens[0, :prompt_len] = torch.randint(3, config.vlm.vocab_size, (prompt_len,), generator=g)
    tokens[0, 0] = 2
    token_mask = torch.zeros((1, L), dtype=torch.bool)
    token_mask[0, :prompt_len] = True
    state = (torch.rand((1, config.action_dim), generator=g) * 2 - 1).to(device)
    noise = torch.randn((1, config.action_horizon, config.action_dim), generator=g).to(device)
    return images, masks, tokens.to(device), token_mask.to(device), state, noise


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """openpi's 4-D float mask from a boolean [B, Lq, Lk] one: 0 where allowed, -2.3819763e38 elsewhere."""
    return torch.where(mask[:, None], 0.0, -2.3819763e38).to(dtype)


PARITY_TOL = 1e-4  # turbopi-verify's default tolerance
FAST, SDPA_MASK, EAGER = "maskless SDPA (fast path)", "SDPA with openpi's mask", "eager masked (openpi)"
MATMUL_PROBE = "matmul probe"
ABLATION_BASE = "none undone (fast path)"


def patched(module, name: str, wrap: Callable[[Callable], Callable]):
    """Within the block, ``module.name`` is ``wrap(original)``."""
    return replaced(module, name, wrap(getattr(module, name)))


def plain_call(model, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` on the plain path: the fused kernels off (vision's too), eager steps (the fused run's plain twin)."""
    def run():
        with plain_eager(model), replaced(model.vision, "fused", False):
            return fn()
    return run


@contextlib.contextmanager
def plain_eager(model):
    """Within the block the denoise runs its plain eager steps: neither a --compile'd step nor the --fused kernels
    call the Python functions the tables patch (the attention table and table (f) measure the plain path)."""
    with replaced(model.sampler, "compiled_velocity", None), replaced(model, "_fused", False):
        yield


def matmul_probe_for(model, batch: int, steps: int):
    """This machine's matmul rate on the denoise's own MLP shape: the action tokens through up_proj, as many matmuls
    as attention calls in one denoise. -> (fn, {"shape": [rows, in, out], "calls"}). Timed interleaved with what it is
    compared with: the attention replays (the attention ceiling of (b)) and the stages (the efficiency of (g))."""
    c = model.config
    gate_up = model.expert.layers[0].mlp.gate_up
    up = torch.split(gate_up.weight, gate_up.split_sizes, dim=0)[1]  # up_proj's rows of the fused gate/up weight
    x = torch.randn((batch * c.action_horizon, up.shape[1]), device=up.device, dtype=up.dtype)
    calls = c.expert.depth * steps

    def probe():
        for _ in range(calls):
            F.linear(x, up)
    return probe, {"shape": [int(x.shape[0]), int(up.shape[1]), int(up.shape[0])], "calls": calls}


def probe_gflop(probe: Dict[str, object]) -> float:
    """GFLOP/s of a timed probe: calls x 2 x rows x in x out over its median time."""
    rows, d_in, d_out = probe["shape"]
    return probe["calls"] * 2.0 * rows * d_in * d_out / probe["median_ms"] / 1e6


def attention_table(model, cache, prefix_pad, past, state, noise, timer: Timer, steps: int):
    """(b) The depth x steps attention calls of one denoise, timed two ways (AttentionTable)."""
    return AttentionTable(model, cache, prefix_pad, past, state, noise, timer, steps)()


class AttentionTable:
    """The depth x steps attention calls of one denoise, timed two ways, each interleaved across the three variants:

    in_denoise: real denoise runs (the fast path's ``model.denoise``, openpi's ``reference_denoise`` with its eager
        masked attention or with SDPA given openpi's mask in its place); each call is timed (synchronized on CUDA),
        a row is the median over runs of the per-denoise sum, and the whole denoise is timed too (attention share).
    replayed: the inputs of every call of one denoise are captured (copies), then replayed back to back; a row is
        the median time of one replay of all calls: the kernels alone, with the shapes and values a denoise has.
    Eager denoises only: a CUDA graph or a compiled step would not call the Python attention functions."""

    def __init__(self, model, cache, prefix_pad, past, state, noise, timer: Timer, steps: int):
        from ..model import pi0 as pi0_module
        from ..model import reference as reference_module

        self.model, self.cache, self.prefix_pad, self.noise, self.timer, self.steps = (model, cache, prefix_pad,
                                                                                      noise, timer, steps)
        dtype = model.dtype

        def sdpa_masked(q, k, v, mask):  # transformers' "sdpa" attention: K/V repeated, openpi's float mask added
            return sdpa_repeated_kv(q, k, v, additive_mask(mask, dtype))

        def fast_denoise():
            return model.denoise(cache, noise, steps)

        def openpi_denoise():
            return reference_denoise(model, prefix_pad, past, state, noise, steps)

        # (module, attribute, denoise, kernel to put in place of the attribute, None = keep it)
        self.variants = {FAST: (pi0_module, "maskless_attention", fast_denoise, None),
                         SDPA_MASK: (reference_module, "masked_eager_attention", openpi_denoise, sdpa_masked),
                         EAGER: (reference_module, "masked_eager_attention", openpi_denoise, None)}
        self.spent: Dict[str, List[float]] = {name: [] for name in self.variants}
        self.whole: Dict[str, List[float]] = {name: [] for name in self.variants}
        self.count: Dict[str, int] = {}
        self.captured: Dict[str, list] = {}

    def __call__(self) -> Dict[str, object]:
        # The matmul rate, timed with the replays: attention at that rate is the ceiling of the table.
        matmul_probe, probe_info = matmul_probe_for(self.model, self.noise.shape[0], self.steps)
        variants, timer = self.variants, self.timer
        with plain_eager(self.model), torch.inference_mode():
            timer({name: (lambda name=name: self.timed_run(name)) for name in variants})
            for name in variants:
                self.captured[name] = self.capture(name)
            fns = {name: (lambda name=name: self.replay(name)) for name in variants}
            fns[MATMUL_PROBE] = matmul_probe
            times_replay = timer(fns)
        in_denoise, replayed = self.rows(times_replay)
        probe = dict(probe_info, **summary(times_replay[MATMUL_PROBE]))
        probe["gflops"] = probe_gflop(probe)
        return self.result(in_denoise, replayed, probe)

    def timed_run(self, name: str) -> None:
        """One denoise of this variant, each attention call and the whole denoise timed."""
        module, attr, denoise, kernel = self.variants[name]
        timer = self.timer
        calls: List[float] = []

        def wrap(original):
            fn = kernel or original

            def timed(*args):
                timer.sync()
                t0 = time.perf_counter()
                out = fn(*args)
                timer.sync()
                calls.append(time.perf_counter() - t0)
                return out
            return timed

        with patched(module, attr, wrap):
            timer.sync()
            t0 = time.perf_counter()
            denoise()
            timer.sync()
            self.whole[name].append(time.perf_counter() - t0)
        self.spent[name].append(sum(calls))
        self.count[name] = len(calls)

    def capture(self, name: str):
        """-> (the variant's attention kernel, copies of the inputs of every call of one denoise)."""
        module, attr, denoise, kernel = self.variants[name]
        args_list: list = []

        def wrap(original):
            def keep(*args):
                args_list.append(tuple(a.clone() for a in args))
                return original(*args)
            return keep

        with patched(module, attr, wrap):
            denoise()
        return kernel or getattr(module, attr), args_list

    def replay(self, name: str) -> None:
        fn, args_list = self.captured[name]
        for args in args_list:
            fn(*args)

    def rows(self, times_replay):
        """-> (in_denoise, replayed): per variant, the summaries, calls, attention share, speedup and GFLOP/s."""
        iters = self.timer.iters
        in_denoise, replayed = {}, {}
        for name in self.variants:
            in_denoise[name] = summary(self.spent[name][-iters:])
            denoise_ms = summary(self.whole[name][-iters:])["median_ms"]
            in_denoise[name].update(calls=self.count[name], denoise_median_ms=denoise_ms,
                                    share_of_denoise=in_denoise[name]["median_ms"] / denoise_ms)
            replayed[name] = summary(times_replay[name])
            replayed[name]["calls"] = len(self.captured[name][1])
        flops = self.flops()
        for rows in (in_denoise, replayed):
            base = rows[EAGER]["median_ms"]
            for name, row in rows.items():
                row["speedup_vs_eager"] = base / row["median_ms"]
                row["gflops"] = flops[name] / row["median_ms"] / 1e6
        return in_denoise, replayed

    def shapes(self) -> Dict[str, int]:
        """Attention calls per denoise, and the queries and keys of one call: fast path and openpi's."""
        c = self.model.config
        H = c.action_horizon
        Ls = H + (0 if c.is_pi05 else 1)
        return {"calls": c.expert.depth * self.steps, "queries_fast": H, "keys_fast": self.cache.num_cached + H,
                "queries_openpi": Ls, "keys_openpi": int(self.prefix_pad.shape[1]) + Ls}

    def flops(self) -> Dict[str, float]:
        g, s, batch = self.model.config.expert, self.shapes(), self.noise.shape[0]
        flops = {FAST: attention_flops(s["calls"], batch, g.num_heads, s["queries_fast"], s["keys_fast"],
                                       g.head_dim)}
        flops[SDPA_MASK] = flops[EAGER] = attention_flops(s["calls"], batch, g.num_heads, s["queries_openpi"],
                                                          s["keys_openpi"], g.head_dim)
        return flops

    def result(self, in_denoise, replayed, probe) -> Dict[str, object]:
        flops = self.flops()
        at_matmul_rate_ms = flops[FAST] / probe["gflops"] / 1e6
        return dict(self.shapes(),
                    gflop_fast=flops[FAST] / 1e9, gflop_openpi=flops[EAGER] / 1e9,
                    in_denoise=in_denoise, replayed=replayed,
                    matmul_probe=probe,
                    fast_at_matmul_rate_ms=at_matmul_rate_ms,
                    ceiling_vs_eager_replayed=replayed[EAGER]["median_ms"] / at_matmul_rate_ms)


def attention_flops(calls: int, batch: int, heads: int, queries: int, keys: int, head_dim: int) -> float:
    """QK^T and PV of every call: 2 matmuls x 2 flops per multiply-add."""
    return 4.0 * calls * batch * heads * queries * keys * head_dim


def efficiency(costs: Dict[str, "costmodel.Cost"], stages: Dict[str, Dict[str, float]],
               matmul_gflops: float) -> Dict[str, object]:
    """(g) every fast stage and the end-to-end time against the work it did: the cost model's matrix FLOPs (matmuls
    and attention products, what a matmul unit runs) over the stage's median time, and that rate as a fraction of the
    matmul rate this machine reached in the same run (the probe of the attention ceiling, timed interleaved with the
    stages: on a shared machine a rate measured at another moment is not comparable)."""
    rows = {}
    for stage, cost in costs.items():
        ms = stages[stage]["median_ms"]
        gflops = cost.tensor_flops / ms / 1e6
        rows[stage] = {"gflop": cost.tensor_flops / 1e9, "elementwise_gflop": cost.elementwise_flops / 1e9,
                       "mbytes": cost.bytes / 1e6, "median_ms": ms, "gflops": gflops,
                       "fraction_of_matmul_rate": gflops / matmul_gflops,
                       "at_matmul_rate_ms": cost.tensor_flops / matmul_gflops / 1e6}
    return {"matmul_rate_gflops": matmul_gflops, "stages": rows}


def ablation_table(model, cache, noise, timer: Timer, steps: int) -> Dict[str, Dict[str, float]]:
    """(f) the fast denoise with each optimization undone (ablation.REVERSALS), then all of them, interleaved with
    the fast denoise itself: median / p90, the slowdown against the fast denoise, the max abs difference of the
    actions from the fast denoise's, and the aten ops one denoise dispatches (kernel launches, on a GPU without a
    graph). Eager denoises (no CUDA graph, no compile)."""
    variants = dict(REVERSALS, **{ALL_REVERSED: all_reversed})

    def undone(reversal):
        def run():
            with reversal(model, cache):
                return model.denoise(cache, noise, steps)
        return run

    fns = {ABLATION_BASE: lambda: model.denoise(cache, noise, steps)}
    fns.update({name: undone(reversal) for name, reversal in variants.items()})
    with plain_eager(model), torch.inference_mode():
        times = timer(fns)
        actions, ops = {}, {}
        for name, fn in fns.items():
            with OpCounter() as counter:
                actions[name] = fn().float()
            ops[name] = sum(counter.ops.values())
    rows = {name: summary(t) for name, t in times.items()}
    base = rows[ABLATION_BASE]["median_ms"]
    for name, row in rows.items():
        row["slowdown"] = row["median_ms"] / base
        row["max_abs_diff"] = float((actions[name] - actions[ABLATION_BASE]).abs().max())
        row["ops"] = ops[name]
    return rows


def profile_ops(fn: Callable[[], object], device: torch.device, top: int) -> Dict[str, object]:
    """torch.profiler over one call of fn (after one unprofiled call): the ops with the most self time (device time
    on CUDA, CPU time elsewhere), per call of fn, with their share of all ops' self time."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize(device)

    def self_us(event) -> float:
        if cuda:
            return float(getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0))
        return float(event.self_cpu_time_total)

    events = [e for e in prof.key_averages() if self_us(e) > 0]
    total = sum(self_us(e) for e in events)
    events.sort(key=self_us, reverse=True)
    return {"clock": "device" if cuda else "cpu", "total_ms": total / 1e3,
            "ops": [{"name": e.key, "self_ms": self_us(e) / 1e3, "calls": e.count, "share": self_us(e) / total}
                    for e in events[:top]]}


def workload(args, config) -> "costmodel.Workload":
    """The cost model's view of this run (bench inputs: batch 1, one prompt of --prompt-len valid tokens)."""
    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(args.dtype, args.dtype)
    return costmodel.Workload(config, args.views, args.prompt_len, args.steps, batch=1, dtype=dtype)


def run(args) -> Dict[str, object]:
    """Every table of one bench run (the JSON's content; report() prints it)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return BenchRun(args)()


class BenchRun:
    """One bench run: the model and its denoise (eager, compiled or a CUDA graph), one observation through both
    paths, and the tables measured on it."""

    def __init__(self, args):
        self.args, self.steps = args, args.steps
        self.device = device = torch.device(args.device)
        self.config = config = load_config(args.config or args.preset)
        # the name, not parse_dtype's torch dtype: fp8 and fp8_weights quantize (and are refused off FP8 GPUs)
        self.model = model = random_model(config, seed=args.seed, device=device, dtype=args.dtype)
        if args.fused:
            model.use_fused(True)
        if getattr(args, "few_rows_matmul", False):
            if not args.fused:
                raise ValueError("--few-rows-matmul runs in the fused denoise: add --fused")
            model.use_fused(True, few_rows_matmul=True)
        if getattr(args, "pdl", False):
            if not args.fused:
                raise ValueError("--pdl launches the fused kernels: add --fused")
            from ..model import fused
            fused.use_pdl(True, device)  # this process's launches (refused with the reason off a 9.0+ GPU)
        if args.compile:
            model.compile_denoise()
        self.inputs = make_inputs(config, args.views, args.prompt_len, device)
        self.timer = Timer(device, args.warmup, args.iters)
        self.denoise = model.denoise
        if args.cuda_graph:
            if device.type != "cuda":
                raise ValueError("--cuda-graph needs --device cuda")
            from ..model.cuda_graph import CudaGraphDenoiser

            self.denoise = CudaGraphDenoiser(model)

    def setup(self) -> Dict[str, object]:
        args, config = self.args, self.config
        return {"config": args.config or args.preset, "variant": config.variant, "device": str(self.device),
                "dtype": args.dtype, "views": args.views, "prompt_len": args.prompt_len,
                "max_token_len": config.max_token_len, "steps": self.steps, "iters": args.iters,
                "warmup": args.warmup, "cuda_graph": bool(args.cuda_graph), "compile": bool(args.compile),
                "fused": bool(args.fused), "few_rows_matmul": bool(getattr(args, "few_rows_matmul", False)),
                "pdl": bool(getattr(args, "pdl", False))}

    def __call__(self) -> Dict[str, object]:
        args, model, steps = self.args, self.model, self.steps
        result: Dict[str, object] = {"machine": machine(), "setup": self.setup()}
        a_fast, a_ref = self.stages(result)
        result["attention"] = attention_table(model, self.cache, self.prefix_pad, self.past, self.inputs[4],
                                              self.inputs[5], self.timer, steps)
        result["fast_vs_reference"] = fast_vs_reference(result, a_fast, a_ref)
        costs = costmodel.workload_cost(workload(args, self.config))
        result["cost_model"] = {stage: cost.to_dict() for stage, cost in costs.items()}
        result["efficiency"] = efficiency(costs, result["stages_fast"], result["matmul_probe"]["gflops"])
        result["ablation"] = ablation_table(model, self.cache, self.inputs[5], self.timer, steps)
        if args.op_counts:
            result["op_counts"] = opcount.compare(model, *self.inputs, num_steps=steps,
                                                  cuda_kernels=self.device.type == "cuda")
        if args.profile:
            result["profile"] = self.profiles()
        result["kernel_choices"] = CHOICES.to_dict()  # on a GPU: what the split kernels measured (kernel_choice.py)
        result["load_avg_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return result

    def stage_fns(self) -> Dict[str, Callable[[], object]]:
        """(a): the fast path's stages and openpi's, each a call on this run's observation."""
        model, denoise, steps = self.model, self.denoise, self.steps
        images, masks, tokens, token_mask, state, noise = self.inputs
        cache, image_tokens, prefix_pad, past = self.cache, self.image_tokens, self.prefix_pad, self.past
        return {
            "fast vision": lambda: model.embed_images(images, masks),
            "fast prefix_cache": lambda: model.build_cache(image_tokens, tokens, token_mask, state),
            "fast denoise": lambda: denoise(cache, noise, steps),
            "fast total": lambda: denoise(model.encode(images, masks, tokens, token_mask, state), noise, steps),
            "reference prefix (vision + prefix cache)": lambda: reference_prefix(model, images, masks, tokens,
                                                                                 token_mask),
            "reference denoise": lambda: reference_denoise(model, prefix_pad, past, state, noise, steps),
            "reference total": lambda: model.sample_actions(images, masks, tokens, token_mask, state, noise=noise,
                                                            num_steps=steps, path="reference"),
        }

    def unfused_fns(self) -> Dict[str, Callable[[], object]]:
        """With --fused: the fast path's stages on the plain path (eager: no graph, no compiled step)."""
        model, steps = self.model, self.steps
        images, masks, tokens, token_mask, state, noise = self.inputs
        fns = {"vision": lambda: model.embed_images(images, masks),
               "prefix_cache": lambda: model.build_cache(self.image_tokens, tokens, token_mask, state),
               "denoise": lambda: model.denoise(self.cache, noise, steps),
               "total": lambda: model.denoise(model.encode(images, masks, tokens, token_mask, state), noise, steps)}
        return {f"unfused {name}": plain_call(model, fn) for name, fn in fns.items()}

    def stages(self, result: Dict[str, object]):
        """(a) timed interleaved with the matmul probe; the observation's cache. -> (fast actions, reference
        actions) of the same noise."""
        model, denoise, steps = self.model, self.denoise, self.steps
        images, masks, tokens, token_mask, state, noise = self.inputs
        probe, probe_info = matmul_probe_for(model, 1, steps)
        with torch.inference_mode():
            self.image_tokens = model.embed_images(images, masks)
            self.cache = model.build_cache(self.image_tokens, tokens, token_mask, state)
            self.prefix_pad, self.past = reference_prefix(model, images, masks, tokens, token_mask)
            denoise(self.cache, noise, steps)  # a CUDA graph is captured / a compiled step compiled here, not timed
            fns = dict(self.stage_fns(), **{MATMUL_PROBE: probe})
            if self.args.fused:  # the plain path's stages in the same run: the fused kernels' ratio and parity
                fns.update(self.unfused_fns())
            times = self.timer(fns)
            a_fast = denoise(model.encode(images, masks, tokens, token_mask, state), noise, steps)
            if self.args.fused:
                a_plain = plain_call(model, fns["unfused total"])()
                result["fused_vs_unfused_max_abs_diff"] = float((a_fast.float() - a_plain.float()).abs().max())
            a_ref = model.sample_actions(images, masks, tokens, token_mask, state, noise=noise, num_steps=steps,
                                         path="reference")
        result["stages_fast"] = {k.split(" ", 1)[1]: summary(v) for k, v in times.items() if k.startswith("fast")}
        result["stages_reference"] = {k.split(" ", 1)[1]: summary(v) for k, v in times.items()
                                      if k.startswith("reference")}
        if self.args.fused:
            result["stages_unfused"] = {k.split(" ", 1)[1]: summary(v) for k, v in times.items()
                                        if k.startswith("unfused")}
        result["matmul_probe"] = dict(probe_info, **summary(times[MATMUL_PROBE]))
        result["matmul_probe"]["gflops"] = probe_gflop(result["matmul_probe"])
        result["cache"] = {"valid_prefix_tokens": self.cache.num_prefix, "cached_tokens": self.cache.num_cached,
                           "openpi_prefix_tokens": int(self.prefix_pad.shape[1])}
        return a_fast, a_ref

    def profiles(self) -> Dict[str, object]:
        """(e) the top ops of one fast and one reference denoise."""
        model, steps, device, top = self.model, self.steps, self.device, self.args.profile
        state, noise = self.inputs[4], self.inputs[5]
        with torch.inference_mode():
            return {"fast denoise": profile_ops(lambda: self.denoise(self.cache, noise, steps), device, top),
                    "reference denoise": profile_ops(
                        lambda: reference_denoise(model, self.prefix_pad, self.past, state, noise, steps), device,
                        top)}


def fast_vs_reference(result: Dict[str, object], a_fast: torch.Tensor, a_ref: torch.Tensor) -> Dict[str, object]:
    """(c) the speedups of the denoise and end to end, the max abs difference of the actions, and the denoise ratio
    if the fast path's attention cost nothing (from the in-denoise runs of table (b))."""
    med = lambda d, k: d[k]["median_ms"]  # noqa: E731
    f = {"denoise_speedup": med(result["stages_reference"], "denoise") / med(result["stages_fast"], "denoise"),
         "end_to_end_speedup": med(result["stages_reference"], "total") / med(result["stages_fast"], "total"),
         "max_abs_diff": float((a_fast.float() - a_ref.float()).abs().max()),
         "tolerance": PARITY_TOL}
    f["within_tolerance"] = f["max_abs_diff"] <= PARITY_TOL
    att = result["attention"]["in_denoise"]
    f["denoise_speedup_if_attention_were_free"] = (
        att[EAGER]["denoise_median_ms"] / (att[FAST]["denoise_median_ms"] - att[FAST]["median_ms"]))
    return f


def report(r: Dict[str, object]) -> str:
    """The printed tables of one run's result, in the order (a), (b), (c), (f), (g), (h), (e)."""
    lines = (_header_lines(r) + _stage_lines(r) + _attention_lines(r["attention"])
             + _parity_lines(r["fast_vs_reference"]) + _ablation_lines(r["ablation"]) + _efficiency_lines(r))
    if "op_counts" in r:
        lines += ["", "(h) kernels per stage, plain vs fused path (turbopi_ros/model/opcount.py): aten ops dispatched, "
                      "launches = those that launch a kernel on a GPU (no views, no allocations); a layer row is one "
                      "layer (expert: in one denoise step)"] + opcount.table(r["op_counts"])
    for name, prof in r.get("profile", {}).items():
        lines += ["", f"(e) {name}: top ops by self {prof['clock']} time, one denoise (all ops: "
                      f"{prof['total_ms']:.2f} ms)"]
        for op in prof["ops"]:
            lines.append(f"    {op['name'][:52]:<52} {op['self_ms']:9.2f} ms {op['share']:6.1%} {op['calls']:6d} calls")
    return "\n".join(lines)


def _header_lines(r: Dict[str, object]) -> List[str]:
    s, m = r["setup"], r["machine"]
    return [f"turbopi-bench: {s['config']} ({s['variant']}), {s['device']} {s['dtype']}, {s['views']} views, prompt "
            f"{s['prompt_len']}/{s['max_token_len']} tokens, {s['steps']} steps, {s['iters']} iterations"
            + (", CUDA graph" if s["cuda_graph"] else "") + (", torch.compile" if s["compile"] else "")
            + (", fused kernels" if s.get("fused") else "")
            + (", few-rows matmul" if s.get("few_rows_matmul") else "")
            + (", programmatic dependent launch" if s.get("pdl") else ""),
            f"machine: {m['cpu']} ({m['cpu_count']} cpus, {m['torch_threads']} torch threads; "
            f"{' '.join(m['cpu_flags']) or 'no flags read'}), GPU: {m['gpu']}, torch {m['torch']}, "
            f"python {m['python']}; load average {_load(m.get('load_avg_1min'))} at start, "
            f"{_load(r.get('load_avg_1min_end'))} at end", ""]


def _stage_lines(r: Dict[str, object]) -> List[str]:
    c = r["cache"]
    lines = [f"(a) stages, ms (median / p90); cache: {c['cached_tokens']} tokens cached ({c['valid_prefix_tokens']}"
             f" valid prefix) vs openpi's {c['openpi_prefix_tokens']}-token padded prefix"]
    unfused = r.get("stages_unfused", {})
    setup = r["setup"]
    plain = "unfused eager" if setup["cuda_graph"] or setup["compile"] else "unfused"  # those rows: no graph, compile
    for name, stages in (("fast", r["stages_fast"]), ("unfused", unfused), ("reference", r["stages_reference"])):
        for stage, v in stages.items():
            ratio = (f"   fused {unfused[stage]['median_ms'] / v['median_ms']:.2f}x vs {plain}"
                     if name == "fast" and stage in unfused else "")
            lines.append(f"    {name:<9} {stage:<31} {v['median_ms']:9.2f} / {v['p90_ms']:9.2f}{ratio}")
    if unfused:
        lines.append(f"    fused vs unfused actions: max abs diff {r['fused_vs_unfused_max_abs_diff']:.2e}")
    return lines


def _attention_lines(a: Dict[str, object]) -> List[str]:
    lines = ["", f"(b) attention calls of one denoise: {a['calls']} (depth x steps); fast: {a['queries_fast']} "
                 f"queries x "
                 f"{a['keys_fast']} keys, no mask; openpi: {a['queries_openpi']} queries x {a['keys_openpi']} keys, "
                 "masked",
             f"    {'':<27} {'inside denoise runs':^50}   {'replayed back to back':^36}",
             f"    {'variant':<27} {'median ms':>10} {'p90 ms':>8} {'vs eager':>9} {'of denoise':>11} {'GFLOP/s':>7} "
             f"  "
             f"{'median ms':>10} {'p90 ms':>8} {'vs eager':>8} {'GFLOP/s':>7}"]
    for name, row in a["in_denoise"].items():
        rep = a["replayed"][name]
        lines.append(f"    {name:<27} {row['median_ms']:10.2f} {row['p90_ms']:8.2f} {row['speedup_vs_eager']:8.2f}x "
                     f"{row['share_of_denoise']:10.0%} {row['gflops']:7.1f}   {rep['median_ms']:10.2f} "
                     f"{rep['p90_ms']:8.2f} {rep['speedup_vs_eager']:7.2f}x {rep['gflops']:7.1f}")
    p = a["matmul_probe"]
    lines.append(f"    ceiling: the fast path's {a['gflop_fast']:.2f} GFLOP (openpi's: {a['gflop_openpi']:.2f}) at "
                 f"this "
                 f"machine's matmul rate on the denoise's MLP shape {'x'.join(map(str, p['shape']))} "
                 f"({p['gflops']:.1f} GFLOP/s, same run) would take {a['fast_at_matmul_rate_ms']:.2f} ms: "
                 f"{a['ceiling_vs_eager_replayed']:.2f}x vs eager replayed")
    return lines


def _parity_lines(f: Dict[str, object]) -> List[str]:
    return ["", f"(c) fast vs reference: denoise {f['denoise_speedup']:.2f}x, end to end "
                f"{f['end_to_end_speedup']:.2f}x"
                f", max abs diff of the actions {f['max_abs_diff']:.2e} "
                f"({'within' if f['within_tolerance'] else 'OVER'} the {f['tolerance']:g} tolerance); "
                f"denoise ratio if the fast attention cost nothing (runs of (b)): "
                f"{f['denoise_speedup_if_attention_were_free']:.2f}x"]


def _ablation_lines(ablation: Dict[str, Dict[str, float]]) -> List[str]:
    lines = ["", "(f) each optimization undone in the fast denoise (turbopi_ros/ablation.py), interleaved; slowdown "
                 "vs "
                 "the fast denoise, max abs diff of the actions from it, aten ops per denoise",
             f"    {'variant':<43} {'median ms':>10} {'p90 ms':>9} {'slowdown':>9} {'max abs diff':>13} {'ops':>6}"]
    for name, row in ablation.items():
        lines.append(f"    {name:<43} {row['median_ms']:10.2f} {row['p90_ms']:9.2f} {row['slowdown']:8.3f}x "
                     f"{row['max_abs_diff']:13.2e} {row['ops']:6d}")
    return lines


def _efficiency_lines(r: Dict[str, object]) -> List[str]:
    e, p = r["efficiency"], r["matmul_probe"]
    lines = ["", f"(g) achieved rate vs this machine's matmul rate: {e['matmul_rate_gflops']:.1f} GFLOP/s on the "
                 f"denoise's MLP shape {'x'.join(map(str, p['shape']))} (the probe of (b), timed interleaved with the "
                 "stages of (a)); FLOPs: the cost model's matmuls + attention products (turbopi_ros/costmodel.py)",
             f"    {'fast stage':<14} {'GFLOP':>9} {'median ms':>10} {'GFLOP/s':>9} {'of matmul rate':>15} "
             f"{'at that rate, ms':>17}"]
    for stage, row in e["stages"].items():
        lines.append(f"    {stage:<14} {row['gflop']:9.3f} {row['median_ms']:10.2f} {row['gflops']:9.1f} "
                     f"{row['fraction_of_matmul_rate']:14.0%} {row['at_matmul_rate_ms']:17.2f}")
    return lines


def _load(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _check_arguments(p: argparse.ArgumentParser, args) -> None:
    """Refuse (argparse's usage error, exit 2) what would fail only after the run, or run on nothing."""
    if args.iters < 1 or args.warmup < 0 or args.threads < 0 or args.profile < 0:
        p.error("--iters must be positive; --warmup, --threads and --profile must not be negative")
    if args.json and args.roofline:
        p.error("--roofline prints the cost model and runs nothing: it writes no --json")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        p.error(f"--json {args.json}: its folder does not exist")
    if not args.roofline:
        from .verify import device_problem

        problem = device_problem(args.device)
        if problem:
            p.error(f"--device {args.device}: {problem}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="turbopi-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", help="pi0, pi05, tiny, tiny_pi05")
    p.add_argument("--config", default=None, help="model config JSON (overrides --preset)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, float16; on GPUs with FP8: fp8, fp8_weights "
                   "(model.dtype's values)")
    p.add_argument("--views", type=int, default=3, choices=(1, 2, 3), help="cameras present (of 3 slots)")
    p.add_argument("--prompt-len", type=int, default=12, help="valid prompt tokens (padded to max_token_len)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = torch's default); 1 is steadier on a machine shared with other work")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cuda-graph", action="store_true", help="denoise as a CUDA graph (cuda only)")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoise step")
    p.add_argument("--fused", action="store_true", help="time the fused layer kernels (PI0Model.use_fused)")
    p.add_argument("--few-rows-matmul", action="store_true",
                   help="with --fused: the expert's matmuls through model/few_rows_matmul.py (not measured yet)")
    p.add_argument("--pdl", action="store_true",
                   help="with --fused, on a GPU of compute capability 9.0+: launch the fused kernels with "
                        "programmatic dependent launch (model.pdl; not measured yet)")
    p.add_argument("--no-op-counts", dest="op_counts", action="store_false",
                   help="skip table (h), the ops / kernels per stage of the plain and the fused path")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also profile one fast and one reference denoise (torch.profiler) and print the top N ops")
    p.add_argument("--json", default=None, help="write all results to this file")
    p.add_argument("--roofline", action="store_true",
                   help="print the cost model (FLOPs and bytes per stage) and the roofline lower bounds on the devices "
                        "of turbopi_ros/costmodel.py for this setup, and exit (runs nothing)")
    args = p.parse_args(argv)
    _check_arguments(p, args)
    if args.roofline:
        try:
            w = workload(args, load_config(args.config or args.preset))
        except ValueError as e:
            print(f"turbopi-bench: {e}", file=sys.stderr)
            return 2
        print(costmodel.cost_table(w) + "\n\n" + costmodel.roofline_table(w))
        return 0
    threads = torch.get_num_threads()
    try:
        result = run(args)
    except ValueError as e:
        print(f"turbopi-bench: {e}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)  # main() may run inside another program (tests)
    print(report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
