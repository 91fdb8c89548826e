"""The action expert's matmuls on a GPU: cuBLAS (F.linear) against model/few_rows_matmul.py's split-K kernel.

The H200 kernel profile (docs/bench/kernel_profile_h200.txt) put the expert's four matmuls a layer (qkv, o_proj,
gate_up, down_proj; 50 rows each) at about 26 us a layer, 4.7 ms of the fused denoise, against about 8.7 us of weight
traffic at the measured copy rate. few_rows_matmul takes all M <= 64 rows in one row block, its output columns
across programs and its K split across programs too (split-K: float32 parts, then a second kernel sums them and
rounds once). This tool times it for a grid of (columns a program, K a step, K splits), and the op as the model runs
it (few_rows_matmul.plan's config), each against F.linear of the same bfloat16 inputs (max abs difference, in
bfloat16 ulps of the largest output), inside a CUDA graph of 50 calls (device_bench.graph_us): which config
few_rows_matmul.plan should pick, and whether the kernel pays at all.

    python -m turbopi_ros.tools.gemm_bench [--out docs/bench/gemm_<gpu>.txt] [--dry-run]

--dry-run runs the flow on the CPU under Triton's interpreter (TRITON_INTERPRET=1 set before Python starts) with
small shapes: it checks the kernels' parity; its times mean nothing.
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

from ..model import few_rows_matmul
from ..model.config import load_config
from ..model.fused import triton
from ..model.kernel_choice import CHOICES
from .device_bench import Printed, bench_device, graph_us, run_grid

GRID = [(bn, bk, splits) for bn in (32, 64, 128) for bk in (64, 128) for splits in (1, 2, 4, 8)]


def expert_shapes(preset: str = "pi0") -> List[Tuple[str, int, int, int]]:
    """(name, rows, K, N) of one expert layer's matmuls in a denoise step."""
    c = load_config(preset)
    e = c.expert
    rows = c.action_horizon
    return [("qkv", rows, e.width, (e.num_heads + 2 * e.num_kv_heads) * e.head_dim),
            ("o_proj", rows, e.num_heads * e.head_dim, e.width),
            ("gate_up", rows, e.width, 2 * e.mlp_dim),
            ("down_proj", rows, e.mlp_dim, e.width)]


def bench_shape(name: str, rows: int, k: int, n: int, device, grid, say) -> Dict[str, object]:
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(rows, k, device=device, generator=g).to(torch.bfloat16)
    w = (torch.randn(n, k, device=device, generator=g) * k ** -0.5).to(torch.bfloat16)
    ref = F.linear(x, w)
    step = float(ref.float().abs().max()) * 2.0 ** -7  # one bfloat16 ulp of the largest output
    cublas_us = graph_us(lambda: F.linear(x, w), device)
    weight_mb = n * k * 2 / 1e6
    say(f"== {name}: {rows} x {k} @ {k} x {n} ({weight_mb:.1f} MB of weights): F.linear {cublas_us:.1f} us "
        f"({weight_mb / cublas_us:.2f} TB/s of weights)")
    row: Dict[str, object] = {"rows": rows, "k": k, "n": n, "cublas_us": cublas_us, "grid": []}
    err = float((few_rows_matmul.few_rows_linear(x, w).float() - ref.float()).abs().max())
    t = graph_us(lambda: few_rows_matmul.few_rows_linear(x, w), device)  # its first call measures its configs
    made = CHOICES.last("few_rows_linear")
    planned = few_rows_matmul.plan_for(x, w)
    chosen = made.chosen if made else f"default: {planned[0]} columns, K step {planned[1]}, {planned[2]} splits"
    row["op"] = {"chosen": chosen, "choice": made.line() if made else None, "us": t, "err": err}
    say(f"  the op (its choice: {chosen}): {t:6.1f} us ({cublas_us / t:4.2f}x F.linear), vs F.linear "
        f"{err / step:.2f} bfloat16 ulps of the largest output")
    if made:
        say(f"  choice: {made.line()}")
    row["fp8_weights"] = fp8_weights_op(x, w, t, cublas_us, device, say)
    for block_n, block_k, splits in grid:
        if block_k > k or splits * block_k > k:
            continue
        try:
            err = float((few_rows_matmul.launch(x, w, block_n, block_k, splits).float() - ref.float()).abs().max())
            t = graph_us(lambda: few_rows_matmul.launch(x, w, block_n, block_k, splits), device)
        except Exception as e:  # a config the compiler rejects is a finding, not the end of the table
            say(f"  {block_n:3d} columns, K step {block_k:3d}, {splits} splits: FAILED {type(e).__name__}: {e}"[:300])
            continue
        row["grid"].append({"block_n": block_n, "block_k": block_k, "splits": splits, "us": t, "err": err})
        say(f"  {block_n:3d} columns, K step {block_k:3d}, {splits} splits: {t:6.1f} us ({cublas_us / t:4.2f}x "
            f"F.linear), vs F.linear {err / step:.2f} bfloat16 ulps of the largest output")
    return row


def fp8_weights_op(x: torch.Tensor, w: torch.Tensor, bf16_us: float, cublas_us: float, device,
                   say) -> Dict[str, object]:
    """The op on the same weights in FP8 with row scales (model.dtype fp8_weights: half the bytes read), its own
    choice, against its twin scaled_linear, and its time against the op on bfloat16 weights."""
    from ..model.fp8 import quantize_rows

    q, s = quantize_rows(w)
    s = s[:, 0].contiguous()
    twin = few_rows_matmul.scaled_linear(x, q, s)
    step = float(twin.float().abs().max()) * 2.0 ** -7
    err = float((few_rows_matmul.few_rows_linear(x, q, None, s).float() - twin.float()).abs().max())
    t = graph_us(lambda: few_rows_matmul.few_rows_linear(x, q, None, s), device)
    made = CHOICES.last("few_rows_linear")
    say(f"  the op on FP8 weights (its choice: {made.chosen if made else 'default'}): {t:6.1f} us ({bf16_us / t:4.2f}x "
        f"the op on bfloat16, {cublas_us / t:4.2f}x F.linear, {q.numel() / 1e6 / t:.2f} TB/s of weights), vs its twin "
        f"{err / step:.2f} bfloat16 ulps of the largest output")
    return {"us": t, "err": err, "choice": made.line() if made else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="also write the printed table here")
    p.add_argument("--dry-run", action="store_true", help="CPU under Triton's interpreter, small shapes")
    args = p.parse_args(argv)
    if triton is None:
        p.error("needs Triton")
    say = Printed(args.out)
    device = bench_device(p, args.dry_run, interpreter=True)
    shapes = [("dry run", 50, 96, 80)] if args.dry_run else expert_shapes()
    grid = [(32, 32, 1), (64, 32, 2)] if args.dry_run else GRID
    run_grid("gemm_bench", device, shapes, grid, bench_shape, say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
