"""The benchmark's own pieces are correct (no timing assertions: benchmarks stay out of pass/fail)."""
import json

import torch

from turbopi_ros import bench
from turbopi_ros.model.gemma import masked_eager_attention, maskless_attention


def test_three_attention_formulations_agree_on_the_valid_tokens():
    """Maskless SDPA over the compacted keys == SDPA with openpi's mask == eager masked, over padded keys."""
    g = torch.Generator().manual_seed(0)
    B, Lq, H, D, valid, pad = 1, 6, 8, 16, 20, 9
    q = torch.randn(B, Lq, H, D, generator=g)
    k_valid, v_valid = torch.randn(B, 1, valid, D, generator=g), torch.randn(B, 1, valid, D, generator=g)
    # openpi's layout: padding (garbage keys) in the middle of the prefix, masked out
    keep = torch.ones(valid + pad, dtype=torch.bool)
    keep[5:5 + pad] = False
    k_pad = torch.randn(B, 1, valid + pad, D, generator=g) * 10
    v_pad = torch.randn(B, 1, valid + pad, D, generator=g) * 10
    k_pad[:, :, keep], v_pad[:, :, keep] = k_valid, v_valid
    mask = keep[None, None, :].expand(B, Lq, valid + pad)
    fast = maskless_attention(q, k_valid, v_valid)
    sdpa = bench.sdpa_with_mask(q, k_pad, v_pad, bench.additive_mask(mask, torch.float32))
    eager = masked_eager_attention(q, k_pad, v_pad, mask)
    assert torch.allclose(fast, sdpa, atol=1e-5) and torch.allclose(fast, eager, atol=1e-5)
    assert not torch.allclose(fast, maskless_attention(q, k_pad, v_pad), atol=1e-3)  # the mask matters


def test_bench_runs_and_writes_every_field(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = bench.main(["--preset", "tiny_pi05", "--views", "2", "--prompt-len", "7", "--steps", "2", "--iters", "1",
                     "--warmup", "0", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "(b) time inside the attention calls of one denoise: 8 calls" in text
    r = json.loads(out.read_text())
    assert set(r) >= {"machine", "setup", "stages_fast", "stages_reference", "cache", "attention",
                      "fast_vs_reference"}
    assert set(r["stages_fast"]) == {"vision", "prefix_cache", "denoise", "total"}
    assert r["cache"]["valid_prefix_tokens"] == 2 * 256 + 7 == r["cache"]["cached_tokens"]  # pi0.5: no state token
    assert r["cache"]["openpi_prefix_tokens"] == 3 * 256 + 200
    assert r["attention"]["queries_openpi"] == r["attention"]["queries_fast"] == 50
    # the attention rows were timed inside real denoise runs: depth x steps calls each
    assert {row["calls"] for row in r["attention"]["rows"].values()} == {4 * 2}
    assert r["fast_vs_reference"]["max_abs_diff"] <= 1e-5
    assert r["machine"]["torch"] == torch.__version__


def test_bad_arguments_are_reported():
    assert bench.main(["--preset", "tiny", "--prompt-len", "99", "--iters", "1"]) == 2
    assert bench.main(["--preset", "tiny", "--cuda-graph", "--iters", "1"]) == 2
