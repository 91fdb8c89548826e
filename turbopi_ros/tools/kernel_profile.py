"""Where a graphed stage's GPU time goes: the CUDA kernels of one replay, grouped by name, from torch.profiler.

For each preset (random weights, bfloat16, the most cameras): the denoise's CUDA graph plain, with the fused kernels,
and with the few-rows matmul too (model/few_rows_matmul.py), that one again with programmatic dependent launch
(model.pdl, where the GPU has it: the gaps between kernels are what it cuts), vision and the prefix cache graphed with
the fused kernels, and last the few-rows denoise graph on the expert's weights in FP8 (model.dtype fp8_weights, where
the GPU has FP8). Per stage: the wall time of a profiled replay, the sum of kernel times, the kernel count, the
kernels with the most time (count, mean), the time by kernel length (under 3 us, 6, 10, 30, longer) and the idle gaps
between consecutive kernels. The question it answers: is a stage bound by a few slow kernels (then a better kernel
helps) or by many short ones and the gaps between them (then fewer launches help).

    python -m turbopi_ros.tools.kernel_profile [--out docs/bench/kernel_profile_<gpu>.txt] [--presets pi0,pi05]
    python -m turbopi_ros.tools.kernel_profile --dry-run    # the CPU, tiny presets, eager: the ops' CPU times

A kernel's time is the profiler's device time; a replay is profiled 3 times and the figures are per replay.
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from typing import Callable, Dict, List

import torch

from . import bench
from .device_bench import Printed, bench_device, device_name
from .gpu_report import fused_call, sync
from ..model import fp8, fused
from ..model.checkpoint import random_model
from ..model.cuda_graph import CudaGraphDenoiser, CudaGraphEncoder, GraphPool, host_inputs

PROMPT_TOKENS = {"pi0": 20, "pi05": 80, "tiny": 20, "tiny_pi05": 80}
BUCKETS_US = (3, 6, 10, 30)


def profile_table(name: str, fn: Callable[[], object], device: torch.device, say, reps: int = 3,
                  top: int = 25) -> Dict[str, object]:
    """Profile ``reps`` calls of fn (after one unprofiled call); print and return the per-call figures."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync(device)
    cuda = device.type == "cuda"
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            fn()
        sync(device)
    wall_ms = (time.perf_counter() - t0) / reps * 1e3
    kind = DeviceType.CUDA if cuda else DeviceType.CPU
    events = [e for e in prof.events() if e.device_type == kind]

    def us(e) -> float:
        return e.device_time if cuda else e.cpu_time

    by_name: Dict[str, List[float]] = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        by_name[e.name][0] += us(e)
        by_name[e.name][1] += 1
    busy_ms = sum(t for t, _ in by_name.values()) / reps / 1e3
    out: Dict[str, object] = {"wall_ms": wall_ms, "kernel_ms": busy_ms, "kernels": len(events) // reps, "top": []}
    say(f"== {name}: wall {wall_ms:.2f} ms a replay (profiled), kernel time {busy_ms:.2f} ms, "
        f"{len(events) // reps} kernels")
    for kernel, (t, n) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]:
        out["top"].append({"name": kernel, "ms": t / reps / 1e3, "count": n // reps, "mean_us": t / n})
        say(f"  {t / reps / 1e3:8.3f} ms {n // reps:6d}x {t / n:8.2f} us  {kernel[:140]}")
    edges = (0,) + BUCKETS_US + (float("inf"),)
    buckets = []
    for lo, hi in zip(edges, edges[1:]):
        sel = [us(e) for e in events if lo <= us(e) < hi]
        buckets.append({"below_us": hi, "kernels": len(sel) // reps, "ms": sum(sel) / reps / 1e3})
    out["buckets"] = buckets
    say("  by length: " + ", ".join(f"<{b['below_us']:g} us: {b['kernels']} kernels {b['ms']:.2f} ms"
                                    for b in buckets))
    if cuda and len(events) > 1:
        spans = sorted((e.time_range.start, e.time_range.end) for e in events)
        gaps = sorted(max(0.0, b[0] - a[1]) for a, b in zip(spans, spans[1:]))
        out["gaps_ms"] = sum(gaps) / reps / 1e3
        out["gap_median_us"] = gaps[len(gaps) // 2]
        say(f"  gaps between kernels: {out['gaps_ms']:.2f} ms a replay, median {out['gap_median_us']:.2f} us, "
            f"p90 {gaps[int(len(gaps) * 0.9)]:.2f} us")
    return out


def profile_preset(preset: str, views: int, steps: int, device: torch.device, say) -> Dict[str, object]:
    model = random_model(preset, device=device, dtype="bfloat16")
    out: Dict[str, object] = {}
    with torch.inference_mode():
        images, masks, tokens, token_mask, state, noise = bench.make_inputs(model.config, views,
                                                                            PROMPT_TOKENS[preset], device)
        cache = model.encode(images, masks, tokens, token_mask, state)
        say(f"### {preset}, {views} cameras ({cache.num_cached} cached tokens), {steps} steps, bfloat16")
        if device.type != "cuda":  # the dry run: no graphs, the fused ops' CPU twins
            out["denoise eager fused"] = profile_table(
                "denoise eager fused", fused_call(model, lambda: model.denoise(cache, noise, steps)), device, say,
                reps=1, top=10)
            return out
        host_masks, host_tokens, host_token_mask = host_inputs(masks, tokens, token_mask)
        plain = CudaGraphDenoiser(model, pool=GraphPool(device))
        plain(cache, noise, steps)
        out["denoise graph"] = profile_table("denoise graph", lambda: plain(cache, noise, steps), device, say)
        pool = GraphPool(device)
        enc, den = CudaGraphEncoder(model, pool=pool), CudaGraphDenoiser(model, pool=pool)
        fused_call(model, lambda: den(cache, noise, steps))()  # captured with the fused kernels
        out["denoise graph fused"] = profile_table("denoise graph fused", lambda: den(cache, noise, steps), device,
                                                   say)
        rows = CudaGraphDenoiser(model, pool=pool)  # the few-rows matmul (its kernel choices are made as it captures)
        fused_call(model, lambda: rows(cache, noise, steps), few_rows_matmul=True)()
        out["denoise graph fused few-rows"] = profile_table("denoise graph fused few-rows",
                                                            lambda: rows(cache, noise, steps), device, say)
        linked = CudaGraphDenoiser(model, pool=pool)  # the same with programmatic dependent launch
        why = fused.pdl_unsupported(device)
        if why is None:
            fused_call(model, lambda: linked(cache, noise, steps), few_rows_matmul=True, pdl=True)()
            out["denoise graph fused few-rows pdl"] = profile_table("denoise graph fused few-rows pdl",
                                                                    lambda: linked(cache, noise, steps), device, say)
        else:
            say(f"  programmatic dependent launch: skipped ({why})")
        fused_call(model, lambda: enc.build_cache(enc.embed_images(images, host_masks), host_tokens,
                                                  host_token_mask, state))()
        image_tokens = enc.embed_images(images, host_masks)
        out["vision graph fused"] = profile_table("vision graph fused", lambda: enc.embed_images(images, host_masks),
                                                  device, say, top=12)
        out["prefix graph fused"] = profile_table(
            "prefix graph fused", lambda: enc.build_cache(image_tokens, host_tokens, host_token_mask, state), device,
            say, top=12)
        for graph in (plain, enc, den, rows, linked):
            graph.clear()
        try:  # last: the expert's weights quantized in place (refused where the GPU has no FP8)
            fp8.quantize_model(model, weights_only=True)
        except ValueError as e:
            say(f"  fp8 weights: skipped ({e})")
            return out
        w8 = CudaGraphDenoiser(model, pool=pool)
        fused_call(model, lambda: w8(cache, noise, steps), few_rows_matmul=True)()
        out["denoise graph fused few-rows fp8-weights"] = profile_table(
            "denoise graph fused few-rows fp8-weights", lambda: w8(cache, noise, steps), device, say)
        w8.clear()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="also write the printed report here")
    p.add_argument("--presets", default="pi0,pi05")
    p.add_argument("--views", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--dry-run", action="store_true", help="the CPU, tiny presets, 2 steps, eager (no graphs)")
    args = p.parse_args(argv)
    say = Printed(args.out)
    device = bench_device(p, args.dry_run, interpreter=False)
    presets = ["tiny", "tiny_pi05"] if args.dry_run else args.presets.split(",")
    steps = 2 if args.dry_run else args.steps
    say(f"# kernel_profile on {device_name(device)}: torch {torch.__version__}"
        + ("; CPU op times, no graphs" if args.dry_run else ""))
    for preset in presets:
        try:
            profile_preset(preset, args.views, steps, device, say)
        except Exception as e:  # one preset failing leaves the other's table
            say(f"### {preset}: FAILED {type(e).__name__}: {e}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
