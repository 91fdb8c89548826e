"""torch.compile's start of the denoise step (PI0Model.compile_denoise), cold and warm, for gpu_report.

Cold start: the first compiled denoise with a fresh inductor cache directory (TORCHINDUCTOR_CACHE_DIR, and Triton's
cache inside it: TRITON_CACHE_DIR, which inductor otherwise sets for the whole process on its first compile and which
a user may have set) and no compiled code in this process (torch._dynamo.reset() and inductor's in-memory caches
cleared). Warm start: the same compile in a new process from that directory, what a node's restart pays:

    python -m turbopi_ros.tools.compile_start --preset pi0 --views 3 --prompt-len 20 --cache-dir DIR

A second compile in one process would reuse what torch._dynamo.reset() keeps (inductor's loaded modules and compiled
Triton kernels) and would not measure a warm start. The hits and misses of inductor's FX graph cache and of
AOTAutograd's cache say what each start found. The process prints one line, MARK and a JSON object: the first
compiled denoise's seconds, the counters, the model build's seconds and the actions (to compare with the cold
start's: same weights, inputs and kernels).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import torch

from .processes import run_reporting

MARK = "compile_start: "
CACHE_ENV = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")
REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_env(cache_dir: str) -> Dict[str, str]:
    """Inductor's cache directory and Triton's inside it (as torch._inductor.utils.fresh_cache lays them out)."""
    return {"TORCHINDUCTOR_CACHE_DIR": cache_dir, "TRITON_CACHE_DIR": os.path.join(cache_dir, "triton")}


@contextlib.contextmanager
def inductor_cache(cache_dir: str) -> Iterator[None]:
    """Within the block, inductor and Triton cache in ``cache_dir``; both variables are put back afterwards."""
    saved = {name: os.environ.get(name) for name in CACHE_ENV}
    os.environ.update(cache_env(cache_dir))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def forget_compiled() -> None:
    """Drop the code this process compiled: dynamo's caches and inductor's in-memory ones (loaded modules, compiled
    Triton kernels), which torch._dynamo.reset() keeps. Without inductor imported there is nothing of it to drop."""
    torch._dynamo.reset()
    utils = sys.modules.get("torch._inductor.utils")
    clear = getattr(utils, "clear_caches", None) or getattr(utils, "clear_inductor_caches", None)
    if clear is not None:
        clear()


def cache_counters() -> Dict[str, int]:
    """Inductor's FX graph cache and AOTAutograd's cache: hits, misses and bypasses (a graph the cache will not
    take: why a warm start still compiles) so far in this process."""
    from torch._dynamo.utils import counters

    return {name: int(counters[group][name]) for group, name in (
        ("inductor", "fxgraph_cache_hit"), ("inductor", "fxgraph_cache_miss"), ("inductor", "fxgraph_cache_bypass"),
        ("aot_autograd", "autograd_cache_hit"), ("aot_autograd", "autograd_cache_miss"),
        ("aot_autograd", "autograd_cache_bypass"))}


def first_compiled_denoise(model, cache, noise, steps: int, cache_dir: str) -> Tuple[float, torch.Tensor, Dict]:
    """compile_denoise(cache_dir) and the first denoise (which compiles, or loads from the cache): (its seconds,
    its actions, the FX graph cache's hits and misses during it)."""
    cuda = noise.device.type == "cuda"
    before = cache_counters()
    model.compile_denoise(cache_dir=cache_dir)
    if cuda:
        torch.cuda.synchronize(noise.device)
    t0 = time.perf_counter()
    actions = model.denoise(cache, noise, steps)
    if cuda:
        torch.cuda.synchronize(noise.device)
    seconds = time.perf_counter() - t0
    after = cache_counters()
    return seconds, actions, {name: after[name] - before[name] for name in after}


def cold_start(model, cache, noise, steps: int, cache_dir: str) -> Tuple[float, torch.Tensor, Dict]:
    """first_compiled_denoise with nothing compiled in this process and ``cache_dir`` (fresh) as the caches."""
    with inductor_cache(cache_dir):
        forget_compiled()
        return first_compiled_denoise(model, cache, noise, steps, cache_dir)


def warm_start(preset: str, views: int, prompt_len: int, steps: int, seed: int, device: str, cache_dir: str,
               backend: str = "inductor", threads: int = 0, timeout_s: float = 300.0) -> Dict[str, object]:
    """The warm start in a new process (this module's main) from ``cache_dir``: its printed result, plus
    ``process_s`` (the whole process: Python, torch, the model's build and the compile)."""
    cmd = [sys.executable, "-m", "turbopi_ros.tools.compile_start", "--preset", preset, "--views", str(views),
           "--prompt-len", str(prompt_len), "--steps", str(steps), "--seed", str(seed), "--device", device,
           "--cache-dir", cache_dir, "--backend", backend, "--threads", str(threads)]
    env = dict(os.environ, **cache_env(cache_dir))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return run_reporting(cmd, MARK, "the warm-start process", timeout_s, env=env, cwd=REPO_ROOT)


def parse_args(argv: Optional[list]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="compile_start", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", required=True)
    p.add_argument("--views", type=int, required=True)
    p.add_argument("--prompt-len", type=int, required=True)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda")
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--backend", choices=("inductor", "eager"), default="inductor",
                   help="eager: dynamo's eager backend (gpu_report's dry run: nothing is compiled or cached)")
    p.add_argument("--threads", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Optional[list] = None) -> int:
    """One warm start: the bfloat16 model gpu_report measures (same seed, so the same weights and inputs), then
    first_compiled_denoise."""
    from . import bench
    from .ablation import replaced
    from ..model.checkpoint import random_model
    from ..model.config import load_config

    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    device, config = torch.device(a.device), load_config(a.preset)
    model = random_model(config, seed=a.seed, device=device, dtype=torch.bfloat16)
    images, masks, tokens, token_mask, state, noise = bench.make_inputs(config, a.views, a.prompt_len, device, a.seed)
    with torch.inference_mode():
        cache = model.encode(images, masks, tokens, token_mask, state)
    build_s = time.perf_counter() - t0
    compile_fn = functools.partial(torch.compile, backend="eager") if a.backend == "eager" else torch.compile
    with inductor_cache(a.cache_dir), replaced(torch, "compile", compile_fn), torch.inference_mode():
        seconds, actions, counts = first_compiled_denoise(model, cache, noise, a.steps, a.cache_dir)
    print(MARK + json.dumps({"warm_start_s": seconds, "cache": counts, "build_s": build_s, "backend": a.backend,
                             "actions": actions.float().cpu().tolist()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
