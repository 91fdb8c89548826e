"""FP8 weights against bfloat16 on the full-size random models, on a CPU: model/fp8.py's dequantized twin of
torch._scaled_mm (the same e4m3 rounding of weights and activations, float32 products, bfloat16 outputs; on a GPU the
report's fp8 part measures the real kernels), and the expert's weights alone in FP8 (model.dtype fp8_weights: the
twin of the few-rows kernels, few_rows_matmul.scaled_linear; bfloat16 activations). For each preset with 3 cameras
and the GPU report's prompt length (pi0 20 tokens, pi0.5 80), from the same noise: the actions of the float32 model
(the yardstick, freed before the next build), of the same weights rounded to bfloat16, of those with the expert's
weights in FP8 (then put back), and of those quantized to FP8; prints the max and mean abs differences and the
largest |action|. Usage (repo root):
    PYTHONPATH=. .venv/bin/python docs/bench/fp8_full_size.py [--presets pi0,pi05] [--steps 10] [--threads 2]
"""
import argparse
import time

import torch

from turbopi_ros.model import fp8
from turbopi_ros.model.checkpoint import random_model
from turbopi_ros.model.config import PRESETS
from turbopi_ros.tools.bench import make_inputs
from turbopi_ros.tools.gpu_report import PRESETS as PROMPT_LEN, _expert_linears
from turbopi_ros.tools.machine import cpu_model

p = argparse.ArgumentParser()
p.add_argument("--presets", default="pi0,pi05")
p.add_argument("--steps", type=int, default=10)
p.add_argument("--threads", type=int, default=0)
args = p.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_model()}")
for name in args.presets.split(","):
    config = PRESETS[name]
    images, masks, tokens, token_mask, state, noise = make_inputs(config, 3, PROMPT_LEN[name], "cpu")
    actions, linears = {}, {}
    for label in ("float32", "bfloat16", "fp8_weights", "fp8"):
        if label in ("float32", "bfloat16"):
            model = None
            model = random_model(config, seed=0, dtype=torch.float32 if label == "float32" else torch.bfloat16)
        elif label == "fp8_weights":
            originals = _expert_linears(model)
            linears[label] = fp8.quantize_model(model, check_device=False, weights_only=True)
        else:
            for owner, child_name, child in originals:  # the bfloat16 expert back, then everything in FP8
                setattr(owner, child_name, child)
            linears[label] = fp8.quantize_model(model, check_device=False)
        t0 = time.perf_counter()
        with torch.inference_mode():
            cache = model.encode(images, masks, tokens, token_mask, state)
            actions[label] = model.denoise(cache, noise, args.steps).float()
        print(f"{name} {label}: {time.perf_counter() - t0:.1f} s", flush=True)
    model = originals = None
    scale = float(actions["float32"].abs().max())
    print(f"{name}, 3 cameras, prompt {PROMPT_LEN[name]} tokens, {args.steps} steps, fp8_weights: "
          f"{linears['fp8_weights']} expert linears in FP8, fp8: {linears['fp8']} linears in FP8, |actions| up to "
          f"{scale:.2f}:", flush=True)
    for a, b in (("bfloat16", "float32"), ("fp8_weights", "float32"), ("fp8_weights", "bfloat16"),
                 ("fp8", "float32"), ("fp8", "bfloat16")):
        d = (actions[a] - actions[b]).abs()
        print(f"    {a} vs {b}: max abs {float(d.max()):.3e} ({float(d.max()) / scale:.1%} of the largest |action|), "
              f"mean abs {float(d.mean()):.3e}", flush=True)
