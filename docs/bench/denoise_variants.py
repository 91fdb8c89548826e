"""Fast-path denoise of one model config in three builds, interleaved in one process: float32 eager, float32 with
torch.compile'd steps, bfloat16 eager. Prints the median ms of each and the max abs difference of their actions
against the float32 eager ones. Usage (repo root):
    PYTHONPATH=. .venv/bin/python docs/bench/denoise_variants.py ../shared/configs/medium_pi0.json --threads 1
"""
import argparse
import statistics
import time

import torch

from turbopi_ros.tools.bench import make_inputs
from turbopi_ros.model.checkpoint import random_model
from turbopi_ros.model.config import load_config

p = argparse.ArgumentParser()
p.add_argument("config")
p.add_argument("--threads", type=int, default=0)
p.add_argument("--iters", type=int, default=10)
p.add_argument("--views", type=int, default=3)
p.add_argument("--prompt-len", type=int, default=12)
args = p.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
config = load_config(args.config)
fp32, compiled = random_model(config, seed=0), random_model(config, seed=0)
bf16 = random_model(config, seed=0, dtype=torch.bfloat16)
compiled.compile_denoise()
images, masks, tokens, token_mask, state, noise = make_inputs(config, args.views, args.prompt_len, "cpu")
builds = {"float32": fp32, "float32 + torch.compile": compiled, "bfloat16": bf16}
with torch.inference_mode():
    caches = {n: m.encode(images, masks, tokens, token_mask, state) for n, m in builds.items()}
    actions = {n: m.denoise(caches[n], noise, 10) for n, m in builds.items()}  # compiles here
    times = {n: [] for n in builds}
    names = list(builds)
    for i in range(args.iters + 1):
        for n in names[i % 3:] + names[:i % 3]:
            t0 = time.perf_counter()
            builds[n].denoise(caches[n], noise, 10)
            if i:
                times[n].append(time.perf_counter() - t0)
base = statistics.median(times["float32"])
print(f"fast-path denoise, {args.config}, {torch.get_num_threads()} threads, {args.iters} interleaved iterations")
for n in names:
    med = statistics.median(times[n])
    diff = float((actions[n].float() - actions["float32"]).abs().max())
    print(f"  {n:<26} {med * 1e3:9.2f} ms  {base / med:5.2f}x vs float32   max abs diff vs float32 {diff:.2e}")
