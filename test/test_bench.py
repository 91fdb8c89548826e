"""The benchmark's own pieces are correct (no timing assertions: benchmarks stay out of pass/fail)."""
import json

import pytest
import torch

from engine_helpers import random_inputs, small_config
from turbopi_ros.tools import ablation, bench, costmodel
from turbopi_ros.model import reference
from turbopi_ros.model.checkpoint import random_model
from turbopi_ros.model.config import load_config
from turbopi_ros.model.gemma import masked_eager_attention, maskless_attention

VARIANTS = {bench.FAST, bench.SDPA_MASK, bench.EAGER}


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
    sdpa = ablation.sdpa_repeated_kv(q, k_pad, v_pad, bench.additive_mask(mask, torch.float32))
    eager = masked_eager_attention(q, k_pad, v_pad, mask)
    assert torch.allclose(fast, sdpa, atol=1e-5) and torch.allclose(fast, eager, atol=1e-5)
    assert not torch.allclose(fast, maskless_attention(q, k_pad, v_pad), atol=1e-3)  # the mask matters


def test_sdpa_with_openpis_mask_runs_openpis_denoise_exactly():
    """The table's "SDPA with openpi's mask" row times a correct denoise: put in place of openpi's eager attention
    (with pi0's state query and its block mask), it gives the reference's actions."""
    config = small_config("pi0")
    model = random_model(config, seed=1)
    images, masks, tokens, token_mask, state, noise = random_inputs(config, cameras=(True, False, True),
                                                                    valid_tokens=(4,))
    with torch.inference_mode():
        prefix_pad, past = reference.reference_prefix(model, images, masks, tokens, token_mask)
        eager = reference.reference_denoise(model, prefix_pad, past, state, noise, 3)
        with bench.patched(reference, "masked_eager_attention", lambda original: (
                lambda q, k, v, mask: ablation.sdpa_repeated_kv(q, k, v, bench.additive_mask(mask, q.dtype)))):
            sdpa = reference.reference_denoise(model, prefix_pad, past, state, noise, 3)
    assert reference.masked_eager_attention is masked_eager_attention  # restored
    assert (sdpa - eager).abs().max() <= 1e-5


def test_bench_with_the_fused_kernels_times_them_and_tables_the_plain_path(tmp_path):
    """--fused: the stages run the fused kernels, interleaved with the plain path's (the ratio and the parity in one
    run); the attention table and table (f) patch functions of the plain path, so they run it (the fused denoise
    calls none of them: the table divided by zero calls before)."""
    out = tmp_path / "bench.json"
    rc = bench.main(["--preset", "tiny", "--views", "1", "--prompt-len", "5", "--steps", "2", "--iters", "1",
                     "--warmup", "0", "--threads", "1", "--fused", "--no-op-counts", "--json", str(out)])
    r = json.loads(out.read_text())
    assert rc == 0 and r["setup"]["fused"] is True
    # the plain path's stages timed in the same run, and its actions: the fused kernels' twins agree
    assert set(r["stages_unfused"]) == set(r["stages_fast"]) == {"vision", "prefix_cache", "denoise", "total"}
    assert r["fused_vs_unfused_max_abs_diff"] <= 1e-5
    depth = load_config("tiny").expert.depth
    assert r["attention"]["in_denoise"][bench.FAST]["calls"] == 2 * depth  # depth x steps, on the plain path
    assert r["ablation"]


def test_bench_with_the_few_rows_matmul_runs_it_in_the_fused_denoise(tmp_path, monkeypatch, capsys):
    """--few-rows-matmul: the fused denoise's expert Linears go through few_rows_matmul's two ops (counted; on CPU
    they are F.linear and add_rms_norm, so the actions equal the plain path's); without --fused it is refused."""
    from turbopi_ros.model import few_rows_matmul

    calls = []
    for name in ("few_rows_linear", "few_rows_linear_add_rms_norm"):
        op = getattr(few_rows_matmul, name)
        monkeypatch.setattr(few_rows_matmul, name, lambda *a, op=op: calls.append(a[1].shape) or op(*a))
    args = ["--preset", "tiny", "--views", "1", "--prompt-len", "5", "--steps", "2", "--iters", "1", "--warmup", "0",
            "--threads", "1", "--no-op-counts", "--few-rows-matmul"]
    assert bench.main(args) == 2
    assert "--few-rows-matmul runs in the fused denoise: add --fused" in capsys.readouterr().err
    out = tmp_path / "bench.json"
    assert bench.main(args + ["--fused", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["setup"]["few_rows_matmul"] is True and r["fused_vs_unfused_max_abs_diff"] <= 1e-5
    assert len(calls) >= 4 * 2 * load_config("tiny").expert.depth  # four a layer a step, in every denoise timed
    assert any(shape[0] == load_config("tiny").action_dim for shape in calls)  # action_out_proj: the float32 heads


def test_bench_runs_and_writes_every_field(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = bench.main(["--preset", "tiny_pi05", "--views", "2", "--prompt-len", "7", "--steps", "2", "--iters", "1",
                     "--warmup", "0", "--threads", "1", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "(b) attention calls of one denoise: 8 (depth x steps)" in text
    assert "(h) kernels per stage, plain vs fused path" in text
    r = json.loads(out.read_text())
    oc = r["op_counts"]  # (h): both paths, every stage; the fused expert layer launches fewer kernels
    assert set(oc) == {"plain", "fused"} and set(oc["plain"]) == set(oc["fused"]) >= {"vision", "denoise"}
    assert oc["fused"]["expert_layer"]["launches"] < oc["plain"]["expert_layer"]["launches"]
    assert set(r) >= {"machine", "setup", "stages_fast", "stages_reference", "cache", "attention",
                      "fast_vs_reference", "load_avg_1min_end"}
    assert set(r["stages_fast"]) == {"vision", "prefix_cache", "denoise", "total"}
    assert set(r["stages_reference"]) == {"prefix (vision + prefix cache)", "denoise", "total"}
    for stage in list(r["stages_fast"].values()) + list(r["stages_reference"].values()):
        assert set(stage) == {"median_ms", "p90_ms"}
    assert r["cache"]["valid_prefix_tokens"] == 2 * 256 + 7 == r["cache"]["cached_tokens"]  # pi0.5: no state token
    assert r["cache"]["openpi_prefix_tokens"] == 3 * 256 + 200
    a = r["attention"]
    assert a["queries_openpi"] == a["queries_fast"] == 50  # pi0.5: no state query
    assert a["keys_fast"] == 2 * 256 + 7 + 50 and a["keys_openpi"] == 3 * 256 + 200 + 50
    # both tables cover every attention call of one denoise: depth x steps
    for table in ("in_denoise", "replayed"):
        assert set(a[table]) == VARIANTS
        assert {row["calls"] for row in a[table].values()} == {4 * 2}
        assert a[table][bench.EAGER]["speedup_vs_eager"] == 1.0
    assert all(0 < row["share_of_denoise"] <= 1 for row in a["in_denoise"].values())
    f = r["fast_vs_reference"]
    assert set(f) == {"denoise_speedup", "end_to_end_speedup", "max_abs_diff", "tolerance", "within_tolerance",
                      "denoise_speedup_if_attention_were_free"}
    assert f["within_tolerance"] and f["tolerance"] == 1e-4
    assert f["max_abs_diff"] <= 1e-5
    # attention FLOPs: 2 matmuls x 2 flops x calls x heads (8) x queries x keys x head_dim (16 in tiny_pi05)
    assert a["gflop_fast"] == pytest.approx(4 * 8 * 8 * 50 * (2 * 256 + 7 + 50) * 16 / 1e9)
    assert a["gflop_openpi"] == pytest.approx(4 * 8 * 8 * 50 * (3 * 256 + 200 + 50) * 16 / 1e9)
    for table in ("in_denoise", "replayed"):
        for name, row in a[table].items():
            flop = a["gflop_fast"] if name == bench.FAST else a["gflop_openpi"]
            assert row["gflops"] == pytest.approx(flop / row["median_ms"] * 1e3)
    probe = a["matmul_probe"]
    assert probe["shape"] == [50, 64, 128] and probe["calls"] == 8 and probe["gflops"] > 0  # tiny_pi05 expert
    assert a["fast_at_matmul_rate_ms"] == pytest.approx(a["gflop_fast"] / probe["gflops"] * 1e3)
    assert a["ceiling_vs_eager_replayed"] == pytest.approx(a["replayed"][bench.EAGER]["median_ms"]
                                                           / a["fast_at_matmul_rate_ms"])
    free = a["in_denoise"][bench.EAGER]["denoise_median_ms"] / (
        a["in_denoise"][bench.FAST]["denoise_median_ms"] - a["in_denoise"][bench.FAST]["median_ms"])
    assert f["denoise_speedup_if_attention_were_free"] == pytest.approx(free)
    # (f): the fast denoise, each reversal, all of them; the fast row is the reference of the others
    ab = r["ablation"]
    assert list(ab) == [bench.ABLATION_BASE, *ablation.REVERSALS, ablation.ALL_REVERSED]
    assert ab[bench.ABLATION_BASE]["slowdown"] == 1.0 and ab[bench.ABLATION_BASE]["max_abs_diff"] == 0.0
    for row in ab.values():
        assert set(row) == {"median_ms", "p90_ms", "slowdown", "max_abs_diff", "ops"} and row["max_abs_diff"] <= 1e-5
    # every reversal dispatches more ops than the fast denoise; undoing all five, more than any one
    base_ops = ab[bench.ABLATION_BASE]["ops"]
    assert all(ab[name]["ops"] > base_ops for name in ablation.REVERSALS)
    assert ab[ablation.ALL_REVERSED]["ops"] > max(ab[name]["ops"] for name in ablation.REVERSALS)
    assert "(f) each optimization undone" in text and "all five undone" in text
    # (g): each fast stage and the end-to-end time against the cost model's FLOPs and the probe's matmul rate
    e = r["efficiency"]
    sp = r["matmul_probe"]  # the same probe, timed with the stages
    assert sp["shape"] == probe["shape"] and sp["calls"] == probe["calls"]
    assert sp["gflops"] == pytest.approx(8 * 2 * 50 * 64 * 128 / sp["median_ms"] / 1e6)
    assert e["matmul_rate_gflops"] == sp["gflops"] and set(e["stages"]) == set(r["stages_fast"])
    probe = sp
    costs = costmodel.workload_cost(costmodel.Workload(load_config("tiny_pi05"), 2, 7, 2, dtype="float32"))
    for stage, row in e["stages"].items():
        assert row["gflop"] == pytest.approx(costs[stage].tensor_flops / 1e9)
        assert row["median_ms"] == r["stages_fast"][stage]["median_ms"]
        assert row["gflops"] == pytest.approx(row["gflop"] / row["median_ms"] * 1e3)
        assert row["fraction_of_matmul_rate"] == pytest.approx(row["gflops"] / probe["gflops"])
        assert row["at_matmul_rate_ms"] == pytest.approx(row["gflop"] / probe["gflops"] * 1e3)
        assert r["cost_model"][stage]["tensor_flops"] == costs[stage].tensor_flops
    assert e["stages"]["total"]["gflop"] == pytest.approx(sum(e["stages"][s]["gflop"] for s in costmodel.STAGES))
    assert "(g) achieved rate vs this machine's matmul rate" in text
    m = r["machine"]
    assert m["torch"] == torch.__version__ and m["torch_threads"] == 1
    assert set(m) >= {"cpu", "cpu_count", "cpu_flags", "gpu", "python", "load_avg_1min"}
    assert r["setup"]["views"] == 2 and r["setup"]["prompt_len"] == 7 and r["setup"]["max_token_len"] == 200


def test_a_config_json_with_pi0s_state_token(tmp_path, capsys):
    """--config takes a model config JSON; pi0 caches its state token and openpi queries it in every step."""
    path = tmp_path / "small.json"
    small_config("pi0", max_token_len=10, horizon=6).to_json(path)
    assert bench.main(["--config", str(path), "--views", "1", "--prompt-len", "3", "--steps", "2", "--iters", "1",
                       "--warmup", "0", "--threads", "1", "--profile", "3", "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["setup"]["variant"] == "pi0"
    assert r["cache"]["cached_tokens"] == r["cache"]["valid_prefix_tokens"] + 1 == 16 + 3 + 1
    a = r["attention"]
    assert a["queries_fast"] == 6 and a["queries_openpi"] == 7
    assert {row["calls"] for row in a["replayed"].values()} == {2 * 2}
    assert r["fast_vs_reference"]["max_abs_diff"] <= 1e-5
    assert set(r["profile"]) == {"fast denoise", "reference denoise"}
    for prof in r["profile"].values():
        assert prof["clock"] == "cpu" and 1 <= len(prof["ops"]) <= 3
        assert all(0 < op["share"] <= 1 and op["calls"] >= 1 for op in prof["ops"])
    assert "(e) fast denoise: top ops" in capsys.readouterr().out


def test_bad_arguments_are_reported(capsys):
    assert bench.main(["--preset", "tiny", "--prompt-len", "99", "--iters", "1"]) == 2
    assert bench.main(["--preset", "tiny", "--cuda-graph", "--iters", "1"]) == 2
    capsys.readouterr()
    # FP8 on this CPU: refused with the reason, not run in bfloat16 under its name
    for dtype in ("fp8", "fp8_weights"):
        assert bench.main(["--preset", "tiny", "--dtype", dtype, "--iters", "1"]) == 2
        assert f"model.dtype {dtype} needs a CUDA GPU" in capsys.readouterr().err


def test_roofline_prints_the_cost_model_and_the_bounds_without_running(capsys):
    assert bench.main(["--preset", "pi05", "--views", "2", "--prompt-len", "80", "--dtype", "bfloat16",
                       "--roofline"]) == 0
    text = capsys.readouterr().out
    w = costmodel.Workload(load_config("pi05"), 2, 80, 10, dtype="bfloat16")
    assert text.strip() == (costmodel.cost_table(w) + "\n\n" + costmodel.roofline_table(w)).strip()
    assert "Jetson AGX Thor" in text and "H100 SXM5" in text and "(vision/prefix/denoise)" in text
    assert "fp8_weights" in text  # the expert's weights alone in FP8, on every device with FP8
    assert bench.main(["--preset", "pi0", "--prompt-len", "99", "--roofline"]) == 2


def test_the_timer_waits_for_the_gpu_it_times(monkeypatch):
    """turbopi-bench / gpu_report --device cuda:N (N > 0): the timer synchronizes that GPU around each call, not the
    current one (cuda:0 unless set), which would time the launches alone."""
    from fake_cuda_devices import FakeCuda

    cuda = FakeCuda(monkeypatch, current=0)
    times = bench.Timer(torch.device("cuda:1"), warmup=0, iters=2)({"nothing": lambda: None})
    assert len(times["nothing"]) == 2 and cuda.synchronized and set(cuda.synchronized) == {1}, cuda.synchronized


def test_the_kernel_count_waits_for_the_gpu_it_counts(monkeypatch):
    """gpu_report's kernel counts of a model on cuda:N (N > 0): the profiled call is synchronized on that GPU, not
    on the current one, or kernels still running at the end would be missed."""
    import contextlib

    from fake_cuda_devices import FakeCuda
    from turbopi_ros.model import opcount

    cuda = FakeCuda(monkeypatch, current=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    @contextlib.contextmanager
    def profile(activities):
        yield type("Profile", (), {"events": lambda self: []})()

    monkeypatch.setattr(torch.profiler, "profile", profile)
    assert opcount.count_cuda_kernels(lambda: None, torch.device("cuda:1")) == 0
    assert cuda.synchronized == [1, 1], cuda.synchronized
