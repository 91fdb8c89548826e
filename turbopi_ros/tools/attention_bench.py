"""The denoise's attention on a GPU: SDPA against model/split_attention.py, each config timed inside a CUDA graph.

For each preset and cameras count, the shapes the fused denoise hands to the attention (the action tokens' heads
folded into query rows over one KV head: rows = action_horizon x heads, keys = cached prefix tokens + the action
tokens) and pi0's state-token pass (its heads over the prefix). Per shape: SDPA, split_attention as it chooses
(num_splits), then a grid of (splits, rows a tile, warps), each with its max abs difference from float32 SDPA of the
same bfloat16 inputs; and the split kernel's two launches timed apart (the partial pass, the combine).

    python -m turbopi_ros.tools.attention_bench [--out docs/bench/split_attention_<gpu>.txt] [--dry-run]

A time is the best of 5 replays of one CUDA graph of 50 calls, per call: what a call costs inside the denoise's graph,
without launch overheads. --dry-run runs the same on the CPU under Triton's interpreter with tiny shapes (set
TRITON_INTERPRET=1 before Python starts): it checks the flow and the parity; its times mean nothing.
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

from ..model import split_attention as sa
from ..model.config import load_config
from ..model.kernel_choice import CHOICES
from .device_bench import Printed, bench_device, graph_us, run_grid

# preset -> valid prompt tokens, as gpu_report measures them (pi0.5: task and discretized state)
PROMPT_TOKENS = {"pi0": 20, "pi05": 80}
GRID = [(splits, rows, warps) for rows, warps in ((32, 4), (16, 4), (64, 8)) for splits in (1, 4, 7, 10, 14)]


def shapes(preset: str, views: Tuple[int, ...]) -> List[Tuple[str, int, int, int]]:
    """(name, query rows, keys, head_dim) of the fused denoise's attention calls for ``preset``."""
    c = load_config(preset)
    state = 0 if c.is_pi05 else 1
    out = []
    for n in views:
        prefix = n * c.num_image_tokens + PROMPT_TOKENS[preset]
        out.append((f"{preset} {n} camera{'s' if n > 1 else ''} denoise", c.action_horizon * c.expert.num_heads,
                    prefix + state + c.action_horizon, c.expert.head_dim))
    if state:
        prefix = views[-1] * c.num_image_tokens + PROMPT_TOKENS[preset]
        out.append((f"{preset} {views[-1]} cameras state token", c.expert.num_heads,  # the expert, one token
                    prefix + 1, c.expert.head_dim))
    return out


def parts_us(q, k, v, scale: float, splits: int, rows: int, warps: int, device) -> Tuple[float, float]:
    """(partial, combine) microseconds of one split_attention config, each kernel alone."""
    parts = sa.partial(q, k, v, scale, splits, block_m=rows, num_warps=warps)
    return (graph_us(lambda: sa.partial(q, k, v, scale, splits, block_m=rows, num_warps=warps), device),
            graph_us(lambda: sa.combine(*parts, like=q), device))


def bench_shape(name: str, rows: int, keys: int, head_dim: int, device, grid, say) -> Dict[str, object]:
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, 1, rows, head_dim, device=device, generator=g).to(torch.bfloat16)
    cache = torch.randn(2, 1, 1, keys + 64, head_dim, device=device, generator=g).to(torch.bfloat16)
    k, v = cache[0, :, :, :keys], cache[1, :, :, :keys]  # strided slices of a longer cache, as in the engine
    scale = head_dim ** -0.5
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=scale)

    def err(out):
        return float((out.float() - ref).abs().max())

    sdpa_us = graph_us(lambda: F.scaled_dot_product_attention(q, k, v, scale=scale), device)
    split_us = graph_us(lambda: sa.split_attention(q, k, v, scale), device)  # its first call measures its configs
    made = CHOICES.last("split_attention")
    chosen = made.chosen if made else f"default: {sa.num_splits(q, keys)} splits of {sa.BLOCK_M}-row tiles"
    row = {"rows": rows, "keys": keys, "head_dim": head_dim, "sdpa_us": sdpa_us,
           "sdpa_err": err(F.scaled_dot_product_attention(q, k, v, scale=scale)),
           "split_us": split_us, "split_err": err(sa.split_attention(q, k, v, scale)), "chosen": chosen,
           "choice": made.line() if made else None, "grid": []}
    say(f"== {name}: {rows} query rows, {keys} keys, head_dim {head_dim}: SDPA {sdpa_us:.1f} us (vs float32 "
        f"{row['sdpa_err']:.2e}); split_attention {split_us:.1f} us ({sdpa_us / split_us:.2f}x SDPA, its choice: "
        f"{chosen}; vs float32 {row['split_err']:.2e})")
    if made:
        say(f"  choice: {made.line()}")
    for splits, tile_rows, warps in grid:
        if splits > -(-keys // sa.BLOCK_N):
            continue
        try:
            out = sa.launch(q, k, v, scale, splits, block_m=tile_rows, num_warps=warps)
            t = graph_us(lambda: sa.launch(q, k, v, scale, splits, block_m=tile_rows, num_warps=warps), device)
            partial, combine = parts_us(q, k, v, scale, splits, tile_rows, warps, device)
        except Exception as e:  # a config the compiler rejects is a finding, not the end of the table
            say(f"  splits {splits:2d}, {tile_rows}-row tiles, {warps} warps: FAILED {type(e).__name__}: {e}"[:400])
            continue
        row["grid"].append({"splits": splits, "tile_rows": tile_rows, "warps": warps, "us": t,
                            "partial_us": partial, "combine_us": combine, "err": err(out)})
        say(f"  splits {splits:2d}, {tile_rows:2d}-row tiles, {warps} warps: {t:6.1f} us ({sdpa_us / t:4.2f}x SDPA; "
            f"partial {partial:.1f} + combine {combine:.1f}), vs float32 {err(out):.2e}")
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="also write the printed table here")
    p.add_argument("--presets", default="pi0,pi05")
    p.add_argument("--views", default="1,3", help="cameras counts")
    p.add_argument("--dry-run", action="store_true", help="CPU under Triton's interpreter, tiny shapes")
    args = p.parse_args(argv)
    say = Printed(args.out)
    device = bench_device(p, args.dry_run, interpreter=True)
    if args.dry_run:
        cases = [("dry run", 40, 150, 16)]
        grid = [(1, 16, 4), (3, 32, 4)]
    else:
        views = tuple(int(v) for v in args.views.split(","))
        cases = [case for preset in args.presets.split(",") for case in shapes(preset, views)]
        grid = GRID
    run_grid("attention_bench", device, cases, grid, bench_shape, say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
