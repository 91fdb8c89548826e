"""The fused path's Triton kernels compiled for real GPUs without one (tools/kernel_targets.py): the launches the
full-size stacks make, recorded on CPU, compiled to cubins for Hopper, Ada, Orin and Thor, with no spills."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from turbopi_ros.model import few_rows_matmul, fused, fused_grad, split_attention  # noqa: F401 - they register their kernels
from turbopi_ros.tools import kernel_targets

REPO = Path(__file__).resolve().parents[1]
triton = pytest.importorskip("triton", reason="Triton is in requirements.txt; this install lacks it")


def _no_interpreter():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 in this process: the kernels are interpreted functions")


def test_recording_takes_the_kernel_path_records_and_restores():
    _no_interpreter()
    kernels = {name: getattr(fused, name) for name in fused.KERNELS}
    x, w = torch.randn(2, 3, 40), torch.randn(40)
    with fused.recording_launches() as log:
        y = fused.rms_norm(x, w, None, None)
        with pytest.raises(RuntimeError, match="already active"):
            with fused.recording_launches():
                pass
    assert [launch.name for launch in log] == ["_rms_kernel"]
    launch = log[0]
    assert launch.grid == (6,) and launch.kernel is kernels["_rms_kernel"] and launch.kwargs["BLOCK"] == 64
    assert launch.args[0].shape == x.shape and launch.args[8] == 40  # the row width W
    assert y.shape == x.shape
    assert {name: getattr(fused, name) for name in fused.KERNELS} == kernels  # the real kernels are back
    assert torch.equal(fused.rms_norm(x, w, None, None), fused.rms_norm_twin(x, w, None, None))  # twin again on CPU


def test_recording_refuses_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        with fused.recording_launches():
            pass


def test_distinct_keeps_one_launch_per_specialization():
    _no_interpreter()
    with fused.recording_launches() as log:
        for rows in (3, 5, 16, 32):  # specialized: 3 and 5 alike, 16 and 32 alike (multiples of 16)
            fused.rms_norm(torch.randn(1, rows, 48), torch.randn(48), None, None)
        fused.rms_norm(torch.randn(1, 3, 48, dtype=torch.bfloat16), torch.randn(48), None, None)
    assert len(log) == 5
    kept = kernel_targets.distinct(log)
    assert [launch.args[0].shape[1] for launch in kept] == [3, 16, 3]
    assert "bfloat16" in kernel_targets.describe(kept[-1]) and "BLOCK=64" in kernel_targets.describe(kept[-1])


def test_every_kernel_compiles_for_the_robot_gpus(tmp_path):
    """Every distinct launch of pi0 and pi0.5 at full width, bfloat16 and float32, compiles for sm_90 (H100/H200),
    sm_89 (Ada), sm_87 (Orin) and sm_110 (Thor) with Triton's own compiler and ptxas (a fresh cache: nothing reused),
    and so do the few-rows matmul's on FP8 weights (model.dtype fp8_weights) for all but Orin, which has no FP8;
    no cubin spills to local memory."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="2",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-m", "turbopi_ros.tools.kernel_targets", "--json", str(tmp_path / "k.json")],
                         env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    results = json.loads((tmp_path / "k.json").read_text())["results"]
    targets = {f"sm_{t}" for t in kernel_targets.DEFAULT_TARGETS}
    for variant in ("pi0", "pi05"):
        for dtype in ("bfloat16", "float32"):
            mine = [r for r in results if r["variant"] == variant and r["dtype"] == dtype]
            want = set(fused.all_kernels())  # backwards too; split attention in 16-bit only (float32 is SDPA's)
            if dtype == "float32":
                want -= set(split_attention.KERNELS)
            assert {r["kernel"] for r in mine} == want, (variant, dtype)
            assert {r["target"] for r in mine} == targets
        # model.dtype fp8_weights: the few-rows matmul widening e4m3 (plain and gated), for the GPUs that have FP8
        mine = [r for r in results if r["variant"] == variant and r["dtype"] == "fp8_weights"]
        assert {r["kernel"] for r in mine} == {"_few_rows_matmul_kernel"} and len(mine) >= 4, variant
        assert {r["target"] for r in mine} == targets - {"sm_87"} and all("W_SCALED=True" in r["specialization"]
                                                                         for r in mine)
        assert any("GATED=True" in r["specialization"] for r in mine)
        # model.pdl: bfloat16's launches with programmatic dependent launch, for the GPUs that have it (9.0+), each
        # PTX waiting for the kernel before it ahead of every global load and store
        mine = [r for r in results if r["variant"] == variant and r["dtype"] == "pdl"]
        assert {r["kernel"] for r in mine} == set(fused.all_kernels()), variant
        assert {r["target"] for r in mine} == {"sm_90", "sm_110"}, variant
        assert all("PDL=True" in r["specialization"] and r["pdl_order"] == "ok" for r in mine), variant
    assert all(r["ok"] and r["local_bytes"] == 0 and 0 < r["registers"] <= 255 for r in results)
    assert "0 failed or spilled" in out.stdout


def test_every_kernel_keeps_fma_where_tritons_default_turns_it_off(tmp_path, monkeypatch):
    """Triton 3.10 turns FP fusion off by default (TRITON_DEFAULT_FP_FUSION=0 sets that default in 3.7 too); every
    launch passes fused.LAUNCH_OPTIONS, so each kernel still compiles a multiply then an add to one FMA, as every
    GPU figure was measured: no unfused (.rn) f32 multiply or add in its PTX. A control shows the setting works: the
    same launch without the options compiles to unfused multiplies."""
    _no_interpreter()
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "0")
    firsts = {}
    for launch in kernel_targets.record("pi05", torch.bfloat16):
        firsts.setdefault(launch.name, launch)
    assert set(firsts) == set(fused.all_kernels())
    for name, launch in firsts.items():
        assert launch.kwargs.get("enable_fp_fusion") is True, name
        ptx = kernel_targets.compile_launch(launch, 90).asm["ptx"]
        assert "mul.rn.f32" not in ptx and "add.rn.f32" not in ptx, name
    rms = firsts["_rms_kernel"]
    bare = fused.Launch(rms.name, rms.kernel, rms.grid, rms.args,
                        {k: v for k, v in rms.kwargs.items() if k not in fused.LAUNCH_OPTIONS})
    assert "mul.rn.f32" in kernel_targets.compile_launch(bare, 90).asm["ptx"]


def test_pdl_order_finds_a_missing_wait_and_an_access_ahead_of_it():
    """The PTX check of a launch with programmatic dependent launch: the wait, then the next kernel's start, then
    global memory; a load or store ahead of the wait, or no wait, or no start of the next kernel, is named."""
    good = ("ld.param.b64 %rd1, [k_param_0];\ngriddepcontrol.wait; // dummy %r1\n"
            "griddepcontrol.launch_dependents; // dummy %r2\n\t@%p1 ld.global.b32 { %r3 }, [ %rd1 + 0 ];\n"
            "\tst.global.b32 [ %rd1 + 0 ], { %r3 };\n")
    assert kernel_targets.pdl_order(good) is None
    early = good.replace("griddepcontrol.wait", "\t@%p1 ld.global.b32 { %r0 }, [ %rd1 + 0 ];\ngriddepcontrol.wait")
    assert "a global access before griddepcontrol.wait: @%p1 ld.global" in kernel_targets.pdl_order(early)
    assert "no griddepcontrol.wait" in kernel_targets.pdl_order(good.replace("griddepcontrol.wait", "nop"))
    assert "no griddepcontrol.launch_dependents" in kernel_targets.pdl_order(
        good.replace("griddepcontrol.launch_dependents", "nop"))
    store_first = "st.global.b32 [ %rd1 + 0 ], { %r3 };\n" + good
    assert "st.global" in kernel_targets.pdl_order(store_first)


def test_check_reports_a_compile_error_and_a_spill(tmp_path, monkeypatch):
    """The two findings the tool exists for: a kernel the GPU compiler rejects, and one that spills."""
    _no_interpreter()
    import triton.language as tl

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))

    @triton.jit
    def _not_a_power_of_two(x_ptr, BLOCK: tl.constexpr):
        tl.store(x_ptr + tl.arange(0, BLOCK), 1.0)

    bad = kernel_targets.check(fused.Launch("bad", _not_a_power_of_two, (1,), (torch.zeros(64),), {"BLOCK": 48}), 90)
    assert not bad["ok"] and "power of 2" in bad["error"]
    with fused.recording_launches() as log:
        fused.rms_norm(torch.randn(1, 4, 8192), torch.randn(8192), None, None)
    one_warp = fused.Launch(log[0].name, log[0].kernel, log[0].grid, log[0].args, dict(log[0].kwargs, num_warps=1))
    spilled = kernel_targets.check(one_warp, 90)  # 8192 floats a row over 32 threads: 256 registers are not enough
    assert not spilled["ok"] and spilled["spills"] and spilled["stack_bytes"] > 0
    assert kernel_targets.check(log[0], 90)["ok"]  # the same row with the launch's own 4 warps fits


def _stand_in_check(launch, capability):
    """check()'s place in the forked compile processes: what it was given, and where it ran."""
    if launch == "dies":
        os._exit(3)
    return {"ok": True, "seconds": 0.0, "pid": os.getpid(), "what": f"{launch}@{capability}"}


def test_each_target_compiles_in_a_process_of_its_own(monkeypatch):
    """Triton's lowering keeps state between the compiles of one process: with Triton 3.5, compiling the few-rows
    matmul on FP8 weights for sm_90 first made the next sm_89 compile emit sm_90's cvt.bf16.f16, which ptxas
    rejected, where sm_89 alone builds (a GPU compiles for one target a process). So every target's launches
    compile, in order, in a process of their own; the launches are inherited (forked), not pickled."""
    monkeypatch.setattr(kernel_targets, "check", _stand_in_check)
    out = kernel_targets.compile_per_target({90: ["a", "b"], 89: ["a"], 110: ["c", "a"]})
    assert {cap: [r["what"] for r in rs] for cap, rs in out.items()} == {90: ["a@90", "b@90"], 89: ["a@89"],
                                                                         110: ["c@110", "a@110"]}
    pids = {cap: {r["pid"] for r in rs} for cap, rs in out.items()}
    assert all(len(p) == 1 for p in pids.values()), pids
    assert len(set.union(*pids.values())) == 3 and os.getpid() not in set.union(*pids.values()), pids


def test_a_compile_process_that_dies_fails_its_target_and_the_rest_stands(monkeypatch):
    """A compiler that crashes its process (Triton's C++ can) fails that target's compiles with the exit status;
    the other targets' results come back, and nothing waits for an answer that cannot come."""
    monkeypatch.setattr(kernel_targets, "check", _stand_in_check)
    out = kernel_targets.compile_per_target({90: ["a"], 89: ["a", "dies", "b"]})
    assert [r["what"] for r in out[90]] == ["a@90"] and out[90][0]["ok"]
    assert len(out[89]) == 3 and all(not r["ok"] and "sm_89 died (exit status 3)" in r["error"] for r in out[89])
