"""The action expert's matmuls on a GPU: cuBLAS (F.linear) against a candidate Triton kernel for few rows.

The H200 kernel profile (docs/bench/kernel_profile_h200.txt) put the expert's four matmuls a layer (qkv, o_proj,
gate_up, down_proj; 50 rows each) at about 26 us a layer, 4.7 ms of the fused denoise, against about 8.7 us of weight
traffic at the measured copy rate. This tool asks whether a kernel written for that shape does better before any is
wired into the model: a tiled matmul of all M <= 64 rows in one row block, its output columns across programs and its
K split across programs too (split-K: float32 parts, then a second kernel sums them and rounds once), for a grid of
(columns a program, K a step, K splits). Each config against F.linear of the same bfloat16 inputs (max abs
difference, in bfloat16 ulps of the largest output), timed inside a CUDA graph of 50 calls
(attention_bench.graph_us).

    python -m turbopi_ros.tools.gemm_bench [--out docs/bench/gemm_<gpu>.txt] [--dry-run]

--dry-run runs the flow on the CPU under Triton's interpreter (TRITON_INTERPRET=1 set before Python starts) with
small shapes: it checks the kernels' parity; its times mean nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

from ..model.config import load_config
from ..model.fused import split_in_steps, triton, tl
from .device_bench import Printed, bench_device, graph_us, run_grid

BLOCK_M = 64
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


if triton is not None:
    @triton.jit
    def _few_rows_matmul_kernel(x_ptr, w_ptr, y_ptr, M, N, K, k_per_split,
                                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                                UPCAST: tl.constexpr):
        """Program (column block, K split): y[split, :, cols] = x[:, ks] @ w[cols, ks]^T in float32 (x [M, K],
        w [N, K] row-major, y [SPLITS, M, N] float32)."""
        pid_n = tl.program_id(0)
        split = tl.program_id(1)
        rows = tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < M
        cmask = cols < N
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        k_start = split * k_per_split
        k_stop = tl.minimum(k_start + k_per_split, K)
        for k0 in range(k_start, k_stop, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < k_stop
            x = tl.load(x_ptr + rows[:, None] * K + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
            w = tl.load(w_ptr + cols[:, None] * K + ks[None, :], mask=cmask[:, None] & kmask[None, :], other=0.0)
            if UPCAST:  # the interpreter's tl.dot takes no bfloat16: the same products in float32
                acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
            else:
                acc += tl.dot(x, tl.trans(w))
        tl.store(y_ptr + (split * M + rows[:, None]) * N + cols[None, :], acc,
                 mask=rmask[:, None] & cmask[None, :])

    @triton.jit
    def _sum_splits_kernel(p_ptr, y_ptr, MN, SPLITS, BLOCK: tl.constexpr):
        """y[i] = sum_s p[s, i], rounded once to y's dtype by the store."""
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < MN
        acc = tl.zeros([BLOCK], tl.float32)
        for s in range(0, SPLITS):
            acc += tl.load(p_ptr + s * MN + i, mask=m, other=0.0)
        tl.store(y_ptr + i, acc, mask=m)


def few_rows_matmul(x: torch.Tensor, w: torch.Tensor, block_n: int, block_k: int, splits: int,
                    num_warps: int = 4) -> torch.Tensor:
    """x [M, K] @ w [N, K]^T for M <= BLOCK_M, the candidate kernel (two launches with splits > 1)."""
    M, K = x.shape
    N = w.shape[0]
    if M > BLOCK_M:
        raise ValueError(f"few_rows_matmul takes at most {BLOCK_M} rows, got {M}")
    x, w = x.contiguous(), w.contiguous()
    k_per_split, splits = split_in_steps(K, splits, block_k)
    parts = torch.empty((splits, M, N), dtype=torch.float32, device=x.device)
    upcast = os.environ.get("TRITON_INTERPRET") == "1"
    _few_rows_matmul_kernel[(triton.cdiv(N, block_n), splits)](
        x, w, parts, M, N, K, k_per_split, BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_K=block_k, UPCAST=upcast,
        num_warps=num_warps)
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    _sum_splits_kernel[(triton.cdiv(M * N, 1024),)](parts, y, M * N, splits, BLOCK=1024, num_warps=4)
    return y


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
    for block_n, block_k, splits in grid:
        if block_k > k or splits * block_k > k:
            continue
        try:
            err = float((few_rows_matmul(x, w, block_n, block_k, splits).float() - ref.float()).abs().max())
            t = graph_us(lambda: few_rows_matmul(x, w, block_n, block_k, splits), device)
        except Exception as e:  # a config the compiler rejects is a finding, not the end of the table
            say(f"  {block_n:3d} columns, K step {block_k:3d}, {splits} splits: FAILED {type(e).__name__}: {e}"[:300])
            continue
        row["grid"].append({"block_n": block_n, "block_k": block_k, "splits": splits, "us": t, "err": err})
        say(f"  {block_n:3d} columns, K step {block_k:3d}, {splits} splits: {t:6.1f} us ({cublas_us / t:4.2f}x "
            f"F.linear), vs F.linear {err / step:.2f} bfloat16 ulps of the largest output")
    return row


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
