"""The fused path (model/fused.py, PI0Model.use_fused) against the plain path: whole models on CPU (the ops' twins),
the openpi fixtures through it, and every Triton kernel under Triton's interpreter on CPU tensors."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from turbopi_ros.tools import verify
from turbopi_ros.model import fused
from turbopi_ros.model.checkpoint import load_model

from engine_helpers import model_for, random_inputs, small_config

TEST_DIR = Path(__file__).resolve().parent


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_fused_model_equals_plain_float32(variant):
    """Actions, image tokens, and every cached K/V: fused within 1e-5 of plain (a batch of 2, two prompt lengths)."""
    cfg = small_config(variant)
    model = model_for(cfg)
    for seed, cameras, valid in ((0, (True, False, True), (4,)), (1, (True, True, True), (7,))):
        inputs = random_inputs(cfg, batch=2, cameras=cameras, valid_tokens=valid, seed=seed)
        results = []
        for on in (False, True):
            model.use_fused(on)
            tokens = model.embed_images(*inputs[:2])
            cache = model.build_cache(tokens, *inputs[2:5])
            results.append((tokens.features, cache.keys, cache.values, model.denoise(cache, inputs[5], 10)))
        assert model.fused
        for plain, fast in zip(*results):
            assert float((plain - fast).abs().max()) <= 1e-5
        assert float(results[0][3].abs().max()) > 1e-2  # the actions are not trivially zero


def test_fused_switch_is_opt_in_and_reversible():
    model = model_for(small_config("pi05"))
    assert not model.fused and not model.vision.fused
    assert model.use_fused() is model and model.fused and model.vision.fused
    model.use_fused(False)
    assert not model.fused and not model.vision.fused


@pytest.mark.parametrize("name", ["pi0", "pi05"])
def test_openpi_fixtures_through_the_fused_path(openpi_fixtures, name):
    model = load_model(openpi_fixtures / f"{name}_tiny.safetensors", config=openpi_fixtures / f"{name}_tiny.json")
    model.use_fused(True)
    case = verify.load_case(openpi_fixtures / f"{name}_case_a.npz")
    actions = verify.run_case(model, case, "fast")
    assert float((actions.float() - case["actions"]).abs().max()) <= 1e-4


def test_twins_are_the_plain_modules_math():
    """The twins the fused ops run on CPU compute what gemma.RMSNorm / GemmaMLP compute (bitwise in float32)."""
    from turbopi_ros.model.config import GemmaConfig
    from turbopi_ros.model.gemma import GemmaMLP, RMSNorm, apply_rope, gated_residual

    g = torch.Generator().manual_seed(0)
    x, br = torch.randn(2, 3, 24, generator=g), torch.randn(2, 3, 24, generator=g)
    norm, ada = RMSNorm(24), RMSNorm(24, cond_dim=8)
    norm.weight.data.normal_(generator=g)
    mod = ada.modulation(torch.randn(2, 8, generator=g))
    with torch.no_grad():
        s, y = fused.add_rms_norm(x, br, mod[2], None, mod[0], mod[1])
        assert torch.equal(s, gated_residual(x, br, mod[2])) and torch.equal(y, ada(s, mod)[0])
        assert torch.equal(fused.rms_norm(x, norm.weight, None, None), norm(x)[0])
        cos, sin = torch.randn(2, 3, 1, 8, generator=g), torch.randn(2, 3, 1, 8, generator=g)
        qkv = torch.randn(2, 3, 6 * 8, generator=g)
        keys, values = torch.zeros(2, 1, 5, 8), torch.zeros(2, 1, 5, 8)
        q = fused.qkv_rope(qkv, cos, sin, keys, values, 2, 4, 1)
        q_ref, k_ref, v_ref = torch.split(qkv, [32, 8, 8], dim=-1)
        assert torch.equal(q, apply_rope(q_ref.view(2, 3, 4, 8), cos, sin))
        assert torch.equal(keys[:, :, 2:], apply_rope(k_ref.view(2, 3, 1, 8), cos, sin).transpose(1, 2))
        assert torch.equal(values[:, :, 2:], v_ref.view(2, 3, 1, 8).transpose(1, 2))
        assert not keys[:, :, :2].any() and not values[:, :, :2].any()  # only the slot [start, start + L) written
        mlp = GemmaMLP(GemmaConfig(width=24, depth=1, mlp_dim=40))
        assert torch.equal(mlp.down_proj(fused.gelu_gate(mlp.gate_up(x))), mlp(x))


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        fused.use_triton_on_cpu(True)
    assert fused.backend("cpu") == "torch twin"


def test_programmatic_dependent_launch_is_opt_in_and_reaches_every_kernel(monkeypatch):
    """use_pdl: off by default and refused off a GPU with the reason. With it on, every launch of a whole observation
    (vision, prefix cache, denoise with the few-rows matmul, a guided step with the backwards) passes the kernels'
    PDL constexpr and Triton's launch_pdl, and every kernel's first statement is _wait_for_inputs(PDL). That the wait
    comes before any global load or store in the compiled code: tools/kernel_targets.py's pdl group
    (test_kernel_targets.py)."""
    import ast
    import inspect
    import textwrap

    pytest.importorskip("triton", reason="Triton is in requirements.txt; this install lacks it")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 in this process: the launches cannot be recorded")
    from turbopi_ros.model import few_rows_matmul, fused_grad, split_attention  # noqa: F401 - their kernels
    from turbopi_ros.model.rtc import Guidance, guided_denoise

    assert not fused.pdl_enabled() and fused.launch_options() == {"enable_fp_fusion": True, "PDL": False}
    with pytest.raises(RuntimeError, match="model.pdl.* needs a CUDA GPU, the model runs on cpu"):
        fused.use_pdl(True, "cpu")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        with fused.pdl_launches(True, "cpu"):
            pass
    assert not fused.pdl_enabled()

    for name in fused.all_kernels():  # the kernel's body, past its docstring, starts with the wait
        kernel = next(ns[name] for ns, names in fused._KERNEL_HOMES if name in names)
        body = ast.parse(textwrap.dedent(inspect.getsource(kernel.fn))).body[0].body
        body = body[1:] if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else body
        assert ast.unparse(body[0]) == "_wait_for_inputs(PDL)", name
        assert kernel.arg_names[-1] == "PDL" and kernel.params[-1].is_constexpr, name

    from turbopi_ros.model.checkpoint import random_model
    from turbopi_ros.model.config import PRESETS
    from turbopi_ros.tools.bench import make_inputs

    bf16 = torch.bfloat16  # tiny: head size 16, so the denoise's attention is split_attention's
    model = random_model(PRESETS["tiny"], seed=0, dtype=bf16).use_fused(True, few_rows_matmul=True)
    images, masks, tokens, token_mask, state, noise = make_inputs(model.config, 1, 7, "cpu")
    monkeypatch.setattr(fused, "_PDL", True)  # as use_pdl(True, a Hopper GPU) sets it
    with torch.no_grad(), fused.recording_launches() as launches:
        cache = model.build_cache(model.embed_images(images.to(bf16), masks), tokens, token_mask, state.to(bf16))
        model.denoise(cache, noise.to(bf16), 2)
        guided_denoise(model, cache, noise, Guidance(torch.zeros_like(noise), torch.ones_like(noise)), 1)
    assert {launch.name for launch in launches} == set(fused.all_kernels())
    assert all(launch.kwargs["PDL"] is True and launch.kwargs["launch_pdl"] is True for launch in launches)
    monkeypatch.setattr(fused, "_PDL", False)
    with fused.recording_launches() as plain:
        fused.rms_norm(torch.randn(1, 3, 48), torch.randn(48), None, None)
    assert plain[0].kwargs["PDL"] is False and "launch_pdl" not in plain[0].kwargs


def _interpreter_checks(*sections, timeout=600):
    """fused_interpreter_checks.py's sections in a subprocess (TRITON_INTERPRET must be set before Triton is
    imported) -> (its check lines, its stdout); fails the test past a tolerance, or past ``timeout`` seconds."""
    pytest.importorskip("triton", reason="Triton is in requirements.txt; this install lacks it")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(TEST_DIR.parent), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, str(TEST_DIR / "fused_interpreter_checks.py"), *sections], env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"^memcheck: \d+ launches of \d+ kernels, \d+ loaded or stored lanes, 0 outside their kernel's "
                     r"tensors, 0 loads or stores of unwatched launches$", out.stdout, re.M), out.stdout
    return [line for line in out.stdout.splitlines() if "max_abs_err=" in line], out.stdout


def memchecked(stdout):
    """{kernel: launches} of the kernels the memory check watched (test/interpreter_memcheck.py), each with no load
    or store outside its tensors."""
    found = re.findall(r"^memcheck (\w+): (\d+) launches, (\d+) lanes, (\d+) outside$", stdout, re.M)
    assert all(int(lanes) > 0 and outside == "0" for _, _, lanes, outside in found), stdout
    return {name: int(launches) for name, launches, _, _ in found}


def forward_kernels():
    from turbopi_ros.model import few_rows_matmul, split_attention
    return set(fused.KERNELS + few_rows_matmul.KERNELS + split_attention.KERNELS)


def test_triton_kernels_under_the_interpreter():
    """Every kernel vs its twin (float32 1e-5, bfloat16 two rounding steps) and whole tiny pi0 / pi0.5 with the
    kernels vs plain (float32 1e-5), then with the few-rows matmul too, then in bfloat16 with FP8 expert weights
    (model.dtype fp8_weights: every expert matmul on them, against their twin), in a subprocess: TRITON_INTERPRET
    must be set before Triton is imported."""
    lines, stdout = _interpreter_checks("kernels", "whole_model")
    assert len(lines) == 58 and "whole model pi05 bfloat16 fp8 weights, few-rows matmul" in lines[-1], stdout
    assert sum(line.startswith("split_attention") for line in lines) == 8, stdout
    assert sum(line.startswith("few_rows_") for line in lines) == 32, stdout
    assert sum(" fp8 weights" in line for line in lines) == 8, stdout  # model.dtype fp8_weights: 6 kernels, 2 models
    # the norm sums the K shares, and the gated prologue computes gelu_gate, exactly as the kernels they replace
    assert stdout.count("equal to launch + add_rms_norm: True") == 12, stdout
    assert stdout.count("equal to launch + qkv_rope: True") == 5, stdout  # the rotary kernel sums the K shares
    assert set(memchecked(stdout)) == forward_kernels(), stdout  # every load and store inside the launch's tensors


def test_the_memory_check_catches_what_a_kernel_touches_outside_its_tensors():
    """interpreter_memcheck.py, which every interpreter check runs under, on kernels made to stray: a load one element
    past a tensor's end, one before its start, a store into the gap between a strided view's rows; each is caught and
    placed against that tensor, and a load whose mask keeps it inside is not."""
    _, stdout = _interpreter_checks("memcheck")
    assert "memcheck self-check: 3 of 3 strays caught, the masked tail 0 outside" in stdout, stdout
    assert "_loads_past_the_end: load of 1 lane(s) outside its tensors" in stdout, stdout
    assert "1 element(s) past the end of 'x' (7,) float32" in stdout, stdout
    assert "_stores_between_rows: store of 1 lane(s) outside its tensors" in stdout, stdout


def test_every_launch_an_h100_makes_at_the_full_size_expert_shapes():
    """The configs kernel_choice measures on a 132-SM GPU (H100, H200: the report's) at the full-size expert's shapes
    (50 action rows, width 1024, 8 heads of 256, MLP 4096, pi0's and pi0.5's 3-camera keys; the matmuls on FP8
    weights too), each under the interpreter against its twin and under the memory check: before a lent GPU
    launches them, every one is known to stay inside its tensors. About 5 minutes on a CPU."""
    from turbopi_ros.model import few_rows_matmul as fr, split_attention as sa

    lines, stdout = _interpreter_checks("gpu_shapes", timeout=1800)  # 4 minutes alone; 2 cores shared may double it
    assert all(line.startswith("132 SMs: ") for line in lines), stdout

    def count(op):
        return sum(line.startswith(f"132 SMs: {op} ") for line in lines)

    bf16, f32 = fr.BLOCK_K, fr.FLOAT32_BLOCK_K
    assert count("qkv_rope") == len(fr.configs(2560, 1024, 132, bf16)), stdout
    assert count("o_proj") == 2 * len(fr.configs(1024, 2048, 132, bf16)), stdout  # RMS, adaRMS gated
    assert count("down_proj") == 2 * len(fr.configs(1024, 4096, 132, bf16)), stdout
    assert count("gate_up") == len(fr.configs(8192, 1024, 132, bf16)), stdout
    assert count("action_time_mlp_in float32") == len(fr.configs(1024, 2048, 132, f32)) > 1, stdout
    assert count("action_in_proj float32") + count("action_out_proj float32") == (
        len(fr.configs(1024, 32, 132, f32)) + len(fr.configs(32, 1024, 132, f32))), stdout
    assert count("split_attention") == len(sa.configs(1, 400, 839, 132)) + len(sa.configs(1, 400, 898, 132)), stdout
    assert count("fp8 weights") == 8, stdout  # qkv, o_proj, down_proj, gate_up: their first and last config
    assert set(memchecked(stdout)) == set(fr.KERNELS + sa.KERNELS) | {"_rms_kernel", "_qkv_rope_kernel"}, stdout


def test_the_split_kernels_choose_among_configs_that_all_match_the_library_kernel():
    """kernel_choice.py over the ops' own candidates, under the interpreter and timed on the host as a GPU times
    them in graphs: every config of few_rows_linear, few_rows_linear_add_rms_norm and split_attention compiles,
    matches F.linear / F.linear + add_rms_norm / SDPA, and is timed; the op's output is the chosen one's."""
    lines, stdout = _interpreter_checks("choice")
    assert any("few_rows_qkv_rope bfloat16: the K/V it wrote" in line for line in lines), stdout
    lines = [line for line in lines if "candidates timed" in line]
    assert len(lines) == 4 and all("none rejected" in line for line in lines), stdout
    assert set(memchecked(stdout)) == forward_kernels() - {"_layer_norm_kernel", "_gelu_gate_kernel"}, stdout
    assert [line.split(" ")[2] for line in lines] == ["few_rows_linear", "few_rows_linear_add_rms_norm",
                                                      "few_rows_qkv_rope", "split_attention"], stdout
    for line in lines:  # cuBLAS / SDPA and at least three configs, every one timed
        timed = re.search(r": (\d+) of (\d+) candidates timed", line)
        assert timed and timed[1] == timed[2] and int(timed[1]) >= 4, stdout


def test_gelu_gate_kernel_reads_the_fused_gate_up_layout():
    """gelu_gate's Triton kernel on the fused [..., 2F] gate/up tensor (gate columns first) equals its twin and the
    separate gelu_tanh(gate) * up: 2-D and 3-D rows, masked tails, F > 1024, a strided view; float32 and bfloat16."""
    lines, stdout = _interpreter_checks("gelu_gate")
    assert len(lines) == 8 and all(line.startswith("gelu_gate fused layout") for line in lines), stdout
    assert any("[3, 2200]" in line for line in lines) and any("strided" in line for line in lines), stdout
    assert memchecked(stdout) == {"_gelu_gate_kernel": 8}, stdout


def test_gelu_gate_takes_the_fused_tensor():
    """The op's shapes: [..., 2F] -> [..., F], the gate first (its fake too, for torch.compile); an odd last dim is
    refused. Within a few float32 ulps, not bit for bit: the op reads the gate as a strided view of the fused tensor,
    and on CPUs without AVX-512 torch's gelu rounds a strided row's elements (its scalar loop) unlike a contiguous
    tensor's (vectorized) by an ulp or two; a fresh-clone run on an AVX2 EPYC failed 46 seeds in 50 on torch.equal."""
    for seed in range(20):
        torch.manual_seed(seed)
        gate, up = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
        out = fused.gelu_gate(torch.cat([gate, up], dim=-1))
        assert out.shape == (2, 3, 5)
        torch.testing.assert_close(out, torch.nn.functional.gelu(gate, approximate="tanh") * up, rtol=1e-6,
                                   atol=1e-7)
        swapped = torch.nn.functional.gelu(up, approximate="tanh") * gate
        assert not torch.allclose(out, swapped, rtol=1e-3, atol=1e-3)  # the gate is the first half
    with torch._subclasses.fake_tensor.FakeTensorMode():
        assert fused.gelu_gate(torch.empty(4, 7, 32)).shape == (4, 7, 16)
    with pytest.raises(ValueError, match=r"\[\.\.\., 2F\]"):
        fused.gelu_gate(torch.randn(2, 5))


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_fused_path_dispatches_fewer_ops(variant):
    """Counted by model/opcount.py: per expert layer of a denoise step, and per Gemma and SigLIP layer, the fused path
    dispatches fewer ops and at most 9 kernel launches (a Gemma / expert layer: exactly 9, one of them the fused
    gate/up matmul); every stage dispatches fewer ops; the switch is restored."""
    from turbopi_ros.model import opcount

    cfg = small_config(variant)
    model = model_for(cfg)
    inputs = random_inputs(cfg, cameras=(True, False, True), valid_tokens=(4,))
    counts = opcount.compare(model, *inputs, num_steps=3)
    assert not model.fused
    plain, fast = counts["plain"], counts["fused"]
    for stage in ("vision", "prefix_cache", "denoise_step", "denoise", "guided_step", "siglip_layer", "gemma_layer",
                  "expert_layer", "guided_layer"):
        assert fast[stage]["ops"] < plain[stage]["ops"], stage
        assert fast[stage]["launches"] < plain[stage]["launches"], stage
    assert plain["expert_layer"]["launches"] >= 30  # norms as square/mean/rsqrt/mul, casts, rotary as slice/neg/cat
    for layer in ("expert_layer", "gemma_layer", "siglip_layer"):
        assert fast[layer]["launches"] <= 9, (layer, fast[layer])
    assert fast["expert_layer"]["launches"] == fast["gemma_layer"]["launches"] == 9
    # every step runs the same ops: the whole denoise is 3 steps plus the Euler updates
    assert fast["denoise"]["ops"] >= 3 * fast["denoise_step"]["ops"]
    rows = opcount.table(counts)
    assert len(rows) == 10 and rows[-1].split()[0] == "guided_layer"


def test_compile_cache_dir(tmp_path, monkeypatch):
    """compile_denoise(cache_dir=...) creates the directory and points inductor's cache at it; a path that cannot be
    a directory is a clear error. (dynamo's eager backend: no inductor compile time in CI.)"""
    import functools

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    cfg = small_config("pi05")
    model = model_for(cfg)
    inputs = random_inputs(cfg, cameras=(True, False, True), valid_tokens=(4,))
    eager = model.sample_actions(*inputs, num_steps=2)
    model.compile_denoise(cache_dir=str(tmp_path / "inductor"))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor") and (tmp_path / "inductor").is_dir()
    assert float((model.sample_actions(*inputs, num_steps=2) - eager).abs().max()) <= 1e-6
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="cache_dir"):
        model.compile_denoise(cache_dir=str(tmp_path / "file" / "sub"))
