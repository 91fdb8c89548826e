"""scripts/gpu_report.sh: the whole GPU report flow, run on the CPU with the tiny presets (--dry-run).

Everything but the CUDA parts (graph capture, peak GPU memory) runs for real: the float32 yardstick, the bfloat16
conversion and its parity, the stage timings, the attention table, the cost-model efficiency, torch.compile (dynamo's
eager backend), table (f), the files and the markdown rows. About 25 s of CPU time (one thread).
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from turbopi_ros.tools import bench, costmodel, gpu_report
from turbopi_ros.tools.ablation import ALL_REVERSED
from turbopi_ros.model.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """The dry run through the lent machine's one-shot script (scripts/gpu_report_device.sh: gpu_report.sh under
    a timeout, its environment and log beside the report)."""
    out = tmp_path_factory.mktemp("gpu_report")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_report_device.sh"), str(out), "--dry-run"],
                          capture_output=True, text=True, env=dict(os.environ, PYTHON=sys.executable), timeout=600)
    return proc, out


def test_dry_run_runs_the_attention_table_and_the_kernel_profile_after_the_report(dry_run):
    """The device script's three tools after the report, in their dry runs: split_attention's kernels under Triton's
    interpreter against float32 SDPA (every config within bfloat16 rounding), gemm_bench's few-rows matmul (its grid
    and the op) against F.linear, and the fused denoise's ops profiled per preset, its split attention among them."""
    proc, out = dry_run
    log = (out / "gpu_report.log").read_text()
    assert all(f"{tool} exit status 0" in log for tool in ("attention_bench", "gemm_bench", "kernel_profile")), log
    # then the suite's CUDA tests (they skip on a CPU), their output in the log
    assert "CUDA tests exit status 0" in log and re.search(r"\d+ passed, 20 skipped", log), log[-3000:]
    # the device tool brings back at most 8 files: the tools' stderr and the tests' output are in the log
    assert sorted(p.name for p in out.iterdir()) == ["attention_bench.txt", "gemm_bench.txt", "gpu_dryrun-cpu.json",
                                                      "gpu_dryrun-cpu.txt", "gpu_env.txt", "gpu_report.log",
                                                      "kernel_profile.txt"], list(out.iterdir())
    assert "warning:" not in log, log[-3000:]
    gemm = (out / "gemm_bench.txt").read_text()
    ulps = [float(u) for u in re.findall(r"vs F.linear ([0-9.]+) bfloat16 ulps", gemm)]
    assert len(ulps) == 3 and all(u <= 2 for u in ulps), gemm  # the few-rows matmul: within bfloat16 rounding
    assert "the op (its choice: " in gemm and "choice: few_rows_linear [50x" in gemm, gemm  # measured as on a GPU
    assert "rejected" not in gemm, gemm
    fp8 = [float(u) for u in re.findall(r"vs its twin ([0-9.]+) bfloat16 ulps", gemm)]
    assert "the op on FP8 weights (its choice: " in gemm and len(fp8) == 1 and fp8[0] <= 2, gemm
    table = (out / "attention_bench.txt").read_text()
    errs = [float(e) for e in re.findall(r"vs float32 ([0-9.e+-]+)\)?", table)]
    assert "split_attention" in table and len(errs) == 4 and all(0 <= e <= 1e-2 for e in errs), table
    assert "choice: split_attention [B1 G1 M" in table and "rejected" not in table, table
    profile = (out / "kernel_profile.txt").read_text()
    assert profile.count("== denoise eager fused") == 2 and "turbopi::split_attention" in profile, profile
    # the fused ops among the top ten by time (which ones and in what order moves between torch versions: 2.15 put
    # aten ops ahead of gelu_gate)
    assert "FAILED" not in profile and len(set(re.findall(r"turbopi::\w+", profile))) >= 3, profile


def test_dry_run_writes_the_report_and_the_markdown_rows(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = (out / "gpu_dryrun-cpu.txt").read_text()
    assert text.strip() in proc.stdout  # the .txt is what was printed
    r = json.loads((out / "gpu_dryrun-cpu.json").read_text())
    assert r["setup"]["dry_run"] and r["setup"]["views"] == [1, 2] and r["setup"]["steps"] == 2
    assert set(r["models"]) == {"tiny", "tiny_pi05"} and r["errors"] == []
    assert any("CUDA graphs" in s for s in r["skipped"])
    assert r["peaks"]["matmul"]["tflops"] > 0 and r["peaks"]["copy"]["gbs"] > 0
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| CPU (dry run) |")]
    assert len(rows) == 4 and gpu_report.MARKDOWN_HEADER.splitlines()[0] in proc.stdout
    for preset, m in r["models"].items():
        config = load_config(preset)
        # the float32 fast path is exact against openpi's formulation; bfloat16 is within its rounding
        assert all(d <= 1e-4 for d in m["fp32_fast_vs_reference"].values())
        assert set(m["views"]) == {"1", "2"}
        for views, b in m["views"].items():
            assert set(b["times"]) == {"vision", "prefix_cache", "denoise eager", "total eager", "reference denoise",
                                       "reference total", "denoise eager fused", "total eager fused"}
            p = b["parity"]
            assert p["fused_vs_plain_bf16"] <= 1e-2 and p["fused_bf16_vs_reference_fp32"] <= 5e-2
            assert 0 < p["fast_bf16_vs_reference_fp32"] <= 5e-2 and 0 < p["reference_bf16_vs_reference_fp32"] <= 5e-2
            assert b["peak_memory_gb"] is None  # CPU
            if views == "2":  # the attention table: with the most cameras only
                assert {row["calls"] for row in b["attention"]["replayed"].values()} == {config.expert.depth * 2}
            else:
                assert "attention" not in b
            cost = costmodel.workload_cost(costmodel.Workload(config, int(views), m["prompt_len"], 2))
            for name, e in b["efficiency"].items():
                stage = gpu_report.FAST_STAGE[name]
                assert e["gflop"] == pytest.approx(cost[stage].tensor_flops / 1e9)
                assert e["tflops"] == pytest.approx(e["gflop"] / e["median_ms"])
                assert e["fraction_of_matmul_rate"] == pytest.approx(e["tflops"] / r["peaks"]["matmul"]["tflops"])
                assert e["bound_over_measured"] == pytest.approx(e["bound_measured_peaks_ms"] / e["median_ms"])
        c = m["compile"]
        assert c["compiled_vs_eager"] <= 1e-6 and set(c["times"]) == {"denoise compiled", "denoise eager"}
        assert c["cold_start_s"] > 0 and c["warm_start_s"] > 0 and c["inductor_cache_dir"]
        # the warm start ran in a new process, on the same weights and inputs (dynamo's eager backend: no cache)
        assert c["warm_start"]["process_s"] > c["warm_start_s"] and c["warm_start"]["actions_vs_cold"] == 0
        assert ALL_REVERSED in m["ablation"]
        k = m["kernel_counts"]  # plain vs fused, every stage and layer
        assert k["fused"]["expert_layer"]["launches"] <= 10 < k["plain"]["expert_layer"]["launches"]
        assert all(k["fused"][s]["ops"] < k["plain"][s]["ops"] for s in k["plain"])
        cap = m["capture"]  # every length captured up front, nothing after ready while the state changes
        assert cap["captures_after_ready"] == 0 and cap["ready"]
        assert set(cap["lengths_seen"]) <= set(cap["prompt_lengths"])
        assert cap["captures"] == 1 + 2 * len(cap["prompt_lengths"])
        assert len(cap["prompt_lengths"]) == (15 if config.is_pi05 else 1)
        f8 = m["fp8"]
        assert f8["quantized_linears"] > 0 and 0 < f8["parity"]["fp8_vs_bf16"] < 0.2
        assert set(f8["times"]) == {"total eager fp8", "total eager fused fp8"}
        w8 = m["fp8_weights"]  # the expert's weights alone in FP8: 4 linears a layer, then put back for fp8
        assert w8["quantized_linears"] == 4 * config.expert.depth
        assert 0 < w8["parity"]["fp8_weights_vs_bf16"] < 0.2
        assert set(w8["times"]) == {"total eager fused few-rows bf16", "total eager fused few-rows fp8-weights"}
        assert f8["quantized_linears"] > w8["quantized_linears"]
        rtc = m["rtc"]  # bfloat16: fused guided within rounding of plain guided; the guidance a real change
        assert set(rtc["times"]) == {"guided eager", "guided eager fused"}
        assert rtc["parity"]["guided eager fused vs guided eager"] < 0.1 * rtc["parity"]["guided_vs_unguided"]
    assert r["commit"]["commit"] and r["commit"]["source"] in ("git", "TURBOPI_COMMIT", ".commit")
    assert f"gpu_report: commit {r['commit']['commit']}" in text
    log = (out / "gpu_report.log").read_text()  # what it printed, with the tools' stderr and the tests' output
    assert log.startswith(proc.stdout[:proc.stdout.index("gpu_report exit status")])
    assert all(line in log for line in proc.stdout.splitlines())
    assert f"torch {torch.__version__}" in (out / "gpu_env.txt").read_text()


def test_refuses_a_machine_without_cuda_unless_dry(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the real report would run")
    assert gpu_report.main(["--out-dir", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_report.main(["--dry-run", "--views", "0,4"])


def test_commit_without_git(tmp_path, monkeypatch):
    """A copy of the work tree without .git: $TURBOPI_COMMIT, else the .commit file carried in."""
    monkeypatch.delenv("TURBOPI_COMMIT", raising=False)
    assert gpu_report.commit_id(tmp_path)["commit"] is None
    (tmp_path / ".commit").write_text("abc123\n")
    assert gpu_report.commit_id(tmp_path) == {"commit": "abc123", "source": ".commit", "dirty": None}
    monkeypatch.setenv("TURBOPI_COMMIT", "def456")
    assert gpu_report.commit_id(tmp_path)["commit"] == "def456"


def test_commit_is_looked_up_in_the_repository_root():
    """The .commit carried into a copy of the work tree lies in its root (what scripts/gpu_report.sh runs in)."""
    assert gpu_report.REPO_ROOT == REPO and (gpu_report.REPO_ROOT / "scripts" / "gpu_report.sh").is_file()
    assert gpu_report.commit_id() == gpu_report.commit_id(REPO)


def test_commit_of_a_copy_inside_another_repository(tmp_path, monkeypatch):
    """A copy without .git that lies inside some other git work tree names its own commit (.commit), not the outer
    repository's HEAD; an empty .commit (``git rev-parse HEAD > .commit`` where there is no git) names nothing."""
    monkeypatch.delenv("TURBOPI_COMMIT", raising=False)
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, env=env)
    subprocess.run(["git", "-C", str(tmp_path), "commit", "-q", "--allow-empty", "-m", "outer"], check=True, env=env)
    outer = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert gpu_report.commit_id(tmp_path) == {"commit": outer, "source": "git", "dirty": False}
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / ".commit").write_text("")
    assert gpu_report.commit_id(copy)["commit"] is None
    (copy / ".commit").write_text("abc123\n")
    assert gpu_report.commit_id(copy) == {"commit": "abc123", "source": ".commit", "dirty": None}


def test_a_named_commit_wins_over_the_git_tree_it_was_copied_into(tmp_path, monkeypatch):
    """A lent machine's copy may sit in a git tree of another commit (the H200 run of 9c2ea32 reported the session's
    starting commit, "modified"): the .commit carried in (or $TURBOPI_COMMIT) names the commit, git's view is kept
    beside it; a .commit equal to git's HEAD is git's (with its dirty flag)."""
    monkeypatch.delenv("TURBOPI_COMMIT", raising=False)
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, env=env)
    (tmp_path / "f").write_text("1")
    subprocess.run(["git", "-C", str(tmp_path), "add", "f"], check=True, env=env)
    subprocess.run(["git", "-C", str(tmp_path), "commit", "-q", "-m", "base"], check=True, env=env)
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    (tmp_path / "f").write_text("2")  # the copied-in tree differs from HEAD
    (tmp_path / ".commit").write_text("abc123\n")
    assert gpu_report.commit_id(tmp_path) == {"commit": "abc123", "source": ".commit", "dirty": None,
                                              "git": {"commit": head, "dirty": True}}
    monkeypatch.setenv("TURBOPI_COMMIT", "def456")
    assert gpu_report.commit_id(tmp_path)["commit"] == "def456"
    monkeypatch.delenv("TURBOPI_COMMIT")
    (tmp_path / ".commit").write_text(head + "\n")
    assert gpu_report.commit_id(tmp_path) == {"commit": head, "source": "git", "dirty": True}


def test_published_device_and_file_names():
    assert gpu_report.published_device("NVIDIA H100 80GB HBM3") == "h100_sxm"
    assert gpu_report.published_device("NVIDIA H100 PCIe") == "h100_pcie"
    assert gpu_report.published_device("NVIDIA GeForce RTX 4090") == "rtx4090"
    assert gpu_report.published_device("NVIDIA Thor") == "thor"
    assert gpu_report.published_device("Orin") == "orin"
    assert gpu_report.published_device("NVIDIA A100-SXM4-80GB") is None
    assert gpu_report.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def _session(tmp_path, *argv, cpu_graphs=True):
    args = gpu_report.parse_args(["--dry-run", "--views", "1", "--out-dir", str(tmp_path), *argv])
    torch.set_num_threads(args.threads)
    return gpu_report.Session(args, cpu_graphs=cpu_graphs)


def test_fp8_and_bf16_on_the_openpi_fixtures(tmp_path, openpi_fixtures):
    """The report's first part: openpi's fixtures through the fast path in float32 (parity: within 1e-4 of openpi's
    actions), bfloat16, FP8 (on CPU the dequantized twin of torch._scaled_mm) and FP8 weights alone (the twin of
    the few-rows kernels), each against openpi's actions and the FP8 ones against bfloat16; without the fixtures, a
    skip that says why."""
    s = _session(tmp_path)
    out = gpu_report.fixtures_block(s, openpi_fixtures)
    for variant in ("pi0", "pi05"):
        row = out[variant]
        scale = row["openpi_max_abs"]
        assert row["float32_vs_openpi"] <= 1e-4
        assert 1e-4 < row["bfloat16_vs_openpi"] < 0.05 * scale
        assert row["bfloat16_vs_openpi"] < row["fp8_vs_openpi"] < 0.1 * scale  # e4m3 rounds coarser than bf16
        assert 0 < row["fp8_vs_bfloat16"] < 0.1 * scale
        # the expert's weights alone, activations left in bfloat16: closer to bfloat16 than FP8 everywhere
        assert 0 < row["fp8_weights_vs_bfloat16"] < row["fp8_vs_bfloat16"]
    gpu_report.print_fixtures(s.say, out)
    assert "openpi fixtures, pi05 case a" in "\n".join(s.say.lines) and s.budget.errors == []
    assert gpu_report.fixtures_block(s, None)["skipped"].startswith("no openpi fixtures")


def test_the_graphed_flow_on_cpu(tmp_path, monkeypatch):
    """Everything the report does with CUDA graphs, run through cuda_graph's static replay on CPU
    (Session.cpu_graphs): the graphed and fused-graphed stages of a block and their parity, compile + graph, the
    FP8 graphs, the printed lines and the markdown rows. A static replay runs the captured function again into the
    same outputs, so every graphed result must equal its eager one exactly. Programmatic dependent launch is let
    through here as a GPU of compute capability 9.0 would (on CPU the ops run their twins: nothing is launched), so
    its graphs, their parity and their lines are checked too, and the switch is put back."""
    from turbopi_ros.model import fused

    monkeypatch.setattr(fused, "pdl_unsupported", lambda device: None)
    s = _session(tmp_path)
    threads = torch.get_num_threads()
    try:
        peaks = gpu_report.measure_peaks(s.device, True)
        entry = gpu_report.PresetReport(s, "tiny", 20, peaks, None)()
    finally:
        torch.set_num_threads(threads)
    assert s.budget.errors == [] and not any("CUDA graphs" in skipped for skipped in s.budget.skipped)
    b = entry["views"][1]
    assert set(b["times"]) == {"vision", "prefix_cache", "denoise eager", "total eager", "reference denoise",
                               "reference total", "denoise graph", "total graph", "denoise eager fused",
                               "total eager fused", "vision graph fused", "prefix_cache graph fused",
                               "denoise graph fused", "total graph fused", "vision graph", "prefix_cache graph",
                               "denoise graph fused few-rows", "prefix_cache graph fused few-rows",
                               "total graph fused few-rows", "denoise graph fused few-rows pdl",
                               "total graph fused few-rows pdl"}
    assert not fused.pdl_enabled()  # put back after each call
    p = b["parity"]
    assert p["pdl_vs_few_rows_graph"] == 0 == p["pdl_total_vs_few_rows_total_graph"]
    assert p["graph_vs_eager"] == 0 and b["encoder_vs_eager"] == 0 and p["fused_graph_vs_fused_eager"] == 0
    assert p["few_rows_vs_fused_graph"] == 0  # on CPU without the interpreter the few-rows op is F.linear
    assert p["few_rows_total_vs_fused_total_graph"] == 0
    assert p["encoder_graph_cache_vs_fresh_eager"] == p["block_eager_cache_vs_fresh_eager"] == 0
    assert p["block_eager_cache_actions_vs_fast"] == 0
    assert "host_waits_total_graph" in b and b["host_waits_total_graph"] is None  # counted on CUDA only
    assert b["host_wait_sites_total_graph"] == []  # where each wait came from (CUDA)
    assert set(b["efficiency"]) == set(b["times"]) - {"reference denoise", "reference total"}
    c = entry["compile"]
    assert c["compiled_graph_vs_eager"] == 0 and set(c["times"]) == {"denoise compiled", "denoise eager",
                                                                    "denoise compiled + graph"}
    assert c["warm_start"]["actions_vs_cold"] == 0
    f8 = entry["fp8"]
    assert set(f8["times"]) == {"total eager fp8", "total eager fused fp8", "total graph fp8",
                                "total graph fused fp8"}
    assert f8["parity"]["total graph fp8 vs eager fp8"] == 0 == f8["parity"]["total graph fused fp8 vs eager fp8"]
    w8 = entry["fp8_weights"]
    assert set(w8["times"]) == {f"{what} graph fused few-rows {tag}" for what in ("total", "denoise")
                                for tag in ("bf16", "fp8-weights")}
    assert w8["parity"]["total graph fused few-rows fp8-weights vs eager fp8-weights"] == 0
    assert w8["parity"]["total graph fused few-rows bf16 vs eager bf16"] == 0
    assert entry["capture"]["captures_after_ready"] == 0
    rtc = entry["rtc"]
    assert set(rtc["times"]) == {"guided graph", "guided graph fused"}
    assert rtc["parity"]["guided graph vs guided eager"] == 0
    assert rtc["parity"]["guided graph fused vs guided eager"] < 0.1 * rtc["parity"]["guided_vs_unguided"]
    text = "\n".join(s.say.lines)
    assert "graph vs eager 0.00e+00 (encoder graph's cache vs eager 0.00e+00" in text
    assert "real-time chunking, guided denoise: guided graph " in text and "(fused " in text
    assert "programmatic dependent launch (model.pdl), few-rows graphs with it / without: denoise " in text
    rows = gpu_report.markdown_rows({"machine": {}, "models": {"tiny": entry}})
    assert len(rows) == 2 and "n/a" not in rows[1].split("|")[6]  # denoise eager / graph / compile+graph
    assert "n/a" not in rows[1].split("|")[10]  # total graph fused few-rows pdl


def test_a_failing_group_is_reported_and_the_rest_stands(tmp_path, monkeypatch):
    """A fused kernel that fails (say Triton on a GPU it never ran on) costs its variants, eager and graphed, not
    the block: the plain stages, their graphs and their parity stand, and the failure is in the block's errors."""
    from turbopi_ros.model import fused
    from turbopi_ros.model.checkpoint import random_model

    def broken(*args, **kwargs):
        raise RuntimeError("fused kernel failed to compile")

    s = _session(tmp_path)
    config = load_config("tiny")
    model = random_model(config, seed=0, dtype=torch.bfloat16)
    inputs = bench.make_inputs(config, 1, 20, "cpu", 0)
    ref32 = model.sample_actions(*inputs[:5], noise=inputs[5], num_steps=2, path="reference").float()
    peaks = gpu_report.measure_peaks(s.device, True)
    monkeypatch.setattr(fused, "gemma_stack", broken)
    b, _ = gpu_report.ViewsBlock(s, model, config, 1, 20, gpu_report.Graphs(s, model))(ref32, peaks, None)
    assert [e.split(":")[0] for e in b["errors"]] == ["fused kernels", "fused kernels in CUDA graphs",
                                                      "few-rows matmul in the fused graphs"]
    assert not model.few_rows_matmul
    assert s.budget.errors == b["errors"] and not model.fused  # the switch is put back
    assert "needs a CUDA GPU, the model runs on cpu" in b["pdl_skipped"]  # no programmatic dependent launch here
    assert {"denoise graph", "total graph", "vision graph", "prefix_cache graph"} <= set(b["times"])
    assert not any("fused" in name for name in b["times"]) and b["parity"]["graph_vs_eager"] == 0
    assert "fused_vs_plain_bf16" not in b["parity"]
    gpu_report.print_views(s.say, 1, b)
    assert "    FAILED fused kernels: RuntimeError: fused kernel failed to compile" in s.say.lines


def test_budget_keeps_time_for_what_matters_more():
    """A part of less importance (attention table, table (f)) starts only if it leaves the time the must-have parts
    still to come are expected to take: this preset's and every later preset's stages and parts."""
    say = gpu_report.Report()
    budget = gpu_report.Budget(450.0, say)
    budget.started -= 350  # 100 s left (a little less by the time it is read)
    assert budget.fits("fp8", 30) and budget.fits("table (f)", 40, 55)
    assert not budget.fits("attention table", 30, 80)
    assert budget.skipped == ["attention table: 100 s of the 450 s budget left, 30 s reserved for it and 80 s kept "
                              "for the parts that matter more"]
    s = gpu_report.Session(gpu_report.parse_args(["--out-dir", "unused"]))  # the H100 defaults: pi0, then pi05
    e = gpu_report.EXPECT_S
    pi0 = gpu_report.PresetReport(s, "pi0", 20, None, None)
    pi0.stages_s = 90.0
    later = 90.0 + e["kernel counts"] + e["capture"] + e["fp8"]  # pi05: no torch.compile unless --compile-all
    assert pi0.keep_s(()) == pytest.approx(sum(e.values()) + later)
    assert pi0.keep_s(("kernel counts", "capture", "compile")) == pytest.approx(e["fp8"] + later)
    pi05 = gpu_report.PresetReport(s, "pi05", 80, None, None)
    assert pi05.keep_s(("kernel counts", "capture")) == e["fp8"]
    s.args.compile_all = True
    assert pi0.keep_s(()) == pytest.approx(sum(e.values()) + later + e["compile"])
    dry = gpu_report.Session(gpu_report.parse_args(["--dry-run", "--out-dir", "unused"]))
    assert gpu_report.PresetReport(dry, "tiny", 20, None, None).keep_s(()) == 0


def test_no_tf32_puts_every_precision_setting_back():
    """The report's float32 yardstick turns TF32 off, once per model: afterwards every precision setting reads as
    before (cuBLAS's fp32_precision is part of inductor's cache key), and the legacy flags can still be read (torch
    refuses that after a mix of the two APIs on cuDNN)."""
    b = torch.backends

    def settings():
        modules = (b, b.cuda.matmul, b.cudnn, getattr(b.cudnn, "conv", None), getattr(b.cudnn, "rnn", None))
        return (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32,  # fp32_precision: torch 2.9 and newer
                *(getattr(m, "fp32_precision", None) for m in modules))

    before = settings()
    for _ in range(2):
        with gpu_report.no_tf32():
            assert not b.cuda.matmul.allow_tf32 and not b.cudnn.allow_tf32
        assert settings() == before


COLD_AND_WARM = """
import json, os, sys, torch
from turbopi_ros.tools import bench, compile_start, gpu_report
from turbopi_ros.model.checkpoint import random_model
from turbopi_ros.model.config import load_config
torch.set_num_threads(1)
config = load_config("tiny")
model = random_model(config, seed=0, dtype=torch.bfloat16)
images, masks, tokens, token_mask, state, noise = bench.make_inputs(config, 1, 20, "cpu", 0)
cache = model.encode(images, masks, tokens, token_mask, state)
with gpu_report.no_tf32():  # as the report's float32 yardstick, before its cold start
    pass
with torch.inference_mode():
    cold_s, actions, cold = compile_start.cold_start(model, cache, noise, 2, sys.argv[1])
env = {name: os.environ.get(name) for name in compile_start.CACHE_ENV}
warm = compile_start.warm_start("tiny", 1, 20, 2, 0, "cpu", sys.argv[1], "inductor", 1)
print(json.dumps({"cold": cold, "env": env, "warm": warm["cache"], "cold_s": cold_s, "warm_s": warm["warm_start_s"],
                  "diff": float((torch.tensor(warm["actions"]) - actions.float()).abs().max())}))
"""


def test_cold_start_is_cold_and_warm_start_loads_its_cache(tmp_path):
    """torch.compile with inductor (its CPU backend here: the cache handling is the same as on CUDA), in a process
    of its own (inductor's compile workers end with it): the cold start compiles into a fresh directory (misses, and
    nothing into the inductor and Triton caches the environment names, which are put back afterwards); the warm start,
    a new process on that directory, finds every graph there (hits, no miss) and computes the same actions. The
    report's float32 yardstick (gpu_report.no_tf32) runs before the cold start, as in the report: it must leave the
    precision settings inductor keys its cache on as a fresh process has them (the H200 runs missed once warm).
    About 45 s on two loaded cores."""
    elsewhere = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "user_inductor"),
                 "TRITON_CACHE_DIR": str(tmp_path / "user_triton")}
    env = dict(os.environ, PYTHONPATH=str(REPO), TORCHINDUCTOR_COMPILE_THREADS="1", **elsewhere)
    fresh = tmp_path / "fresh"
    proc = subprocess.run([sys.executable, "-c", COLD_AND_WARM, str(fresh)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["cold"]["fxgraph_cache_miss"] >= 1 and r["env"] == elsewhere
    assert r["warm"]["fxgraph_cache_miss"] == 0 and r["warm"]["fxgraph_cache_hit"] >= 1
    assert r["diff"] == 0 and r["warm_s"] < r["cold_s"]
    assert any(fresh.iterdir())  # inductor may create the environment's directory when it exits, but nothing in it
    assert not [f for p in elsewhere.values() for f in Path(p).rglob("*") if f.is_file()]


def test_an_interrupted_report_keeps_what_it_measured(tmp_path):
    """SIGINT (the one-shot script's timeout) after the first part was written: the report stops, and its .json and
    .txt hold every part measured so far, with the markdown rows and the interruption among the errors."""
    proc = subprocess.Popen(["bash", str(REPO / "scripts" / "gpu_report.sh"), "--dry-run", "--out-dir",
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHON=sys.executable))
    report = tmp_path / "gpu_dryrun-cpu.json"
    try:
        deadline = time.monotonic() + 300
        while not report.exists() or "tiny" not in json.loads(report.read_text())["models"]:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # bash execs python: this is the report's process
        stdout, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stdout[-3000:]
    r = json.loads(report.read_text())
    assert r["errors"][-1].startswith("interrupted after")
    assert "1" in r["models"]["tiny"]["views"] and "total_s" not in r["models"]["tiny"]  # stopped within tiny
    text = (tmp_path / "gpu_dryrun-cpu.txt").read_text()
    assert "markdown rows for docs/performance.md:" in text and "ERROR: interrupted after" in text
    assert "| CPU (dry run) | tiny | 1 |" in text
