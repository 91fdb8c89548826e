"""model.dtype fp8: refused with a clear error where FP8 matmuls do not exist (every CPU), and the quantization math
(per-row e4m3 scales, the dequantized twin of torch._scaled_mm) checked on CPU."""
import pytest
import torch

from turbopi_ros.model import fp8
from turbopi_ros.model.checkpoint import is_fp8, parse_dtype, random_model

from engine_helpers import model_for, random_inputs, small_config


def _cpu_scaled_mm_takes_row_scales() -> bool:
    """torch._scaled_mm with one scale per row, as the GPU path calls it, on a CPU tensor: torch 2.13's CPU kernel
    takes them; older ones (2.9, 2.11) take only one scale per tensor, where CUDA's takes rows."""
    q = torch.zeros(16, 16).to(torch.float8_e4m3fn)
    try:
        torch._scaled_mm(q, q.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError):  # torch 2.5's CPU build has no _scaled_mm kernel at all
        return False
    return True


gpu_path_on_cpu = pytest.mark.skipif(
    not _cpu_scaled_mm_takes_row_scales(),
    reason=f"runs the GPU path (torch._scaled_mm, one scale per row) on the CPU; torch {torch.__version__}'s CPU "
           "_scaled_mm does not take one scale per row (2.9, 2.11: one per tensor; 2.5: no CPU kernel)")


def test_refused_on_cpu_before_loading(tmp_path):
    from turbopi_ros.model.checkpoint import load_model

    with pytest.raises(ValueError, match=r"fp8 needs a CUDA GPU .*compute capability >= 8.9.*device cpu"):
        random_model(small_config("pi0"), dtype="fp8")
    with pytest.raises(ValueError, match="device cpu is not a CUDA device"):  # before the (missing) file is read
        load_model(tmp_path / "missing.safetensors", dtype="fp8")
    assert is_fp8("fp8") and is_fp8("FLOAT8") and not is_fp8("bfloat16") and parse_dtype("fp8") == torch.bfloat16


def test_refusal_names_the_gpu_and_its_capability(monkeypatch):
    """An A100 (8.0) is refused by name and capability; an H100 (9.0) passes the check."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    ok, why = fp8.fp8_support("cuda:0")
    assert not ok and "cuda:0 (NVIDIA A100-SXM4-80GB) has compute capability 8.0" in why and "8.9" in why
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert fp8.fp8_support("cuda:0") == (True, "")


def test_row_quantization_error_is_within_e4m3_rounding():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 48, generator=g) * torch.logspace(-3, 1, 64)[:, None]  # rows of very different sizes
    w[3] = 0.0
    q, s = fp8.quantize_rows(w)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (64, 1)
    assert torch.allclose(s[:, 0], torch.where(w.abs().amax(1) > 0, w.abs().amax(1) / 448, torch.ones(64)))
    deq = fp8.dequantize(q, s)
    # e4m3: 3 mantissa bits (half a step = 2^-4 relative), subnormal step 2^-9 (in units of the row's scale)
    bound = torch.maximum(w.abs() * 2 ** -4, s * 2 ** -10) * (1 + 1e-6)
    assert bool(((deq - w).abs() <= bound).all())
    assert float(deq.abs().amax(1)[10] - w.abs().amax(1)[10]) == 0  # each row's amax is exact (448 = e4m3 max)
    assert not deq[3].any()


def test_reference_linear_is_the_dequantized_product():
    g = torch.Generator().manual_seed(1)
    lin = torch.nn.Linear(64, 32).requires_grad_(False)
    with torch.no_grad():
        lin.weight.normal_(generator=g)
        lin.bias.normal_(generator=g)
    x = torch.randn(2, 5, 64, generator=g)
    q_lin = fp8.FP8Linear(lin, out_dtype=torch.float32)
    got = q_lin(x)
    qx, sx = fp8.quantize_rows(x.reshape(10, 64))
    want = (fp8.dequantize(qx, sx) @ fp8.dequantize(q_lin.qweight, q_lin.wscale).t() + lin.bias).view(2, 5, 32)
    assert torch.allclose(got, want, atol=1e-5)
    exact = lin(x)
    rel = float((got - exact).norm() / exact.norm())
    assert 1e-4 < rel < 0.08  # quantized (not a copy of the float32 product), within e4m3's precision
    assert torch.allclose(q_lin.weight, fp8.dequantize(q_lin.qweight, q_lin.wscale))


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_quantized_model_stays_close(variant):
    """The transformer layers' projections quantized (CPU: through the twin): the actions move, but little."""
    cfg = small_config(variant)
    plain = model_for(cfg)
    quant = model_for(cfg)
    n = fp8.quantize_model(quant, check_device=False)
    # dimensions multiple of 16 only: SigLIP's qkv and out_proj (width 16, its MLP is 24 wide), Gemma's four
    # projections (qkv, o_proj, the fused gate_up, down_proj: width 32, MLP 48); the expert (width 24) stays as it is
    assert n == 2 * 2 + 2 * 4
    assert all(isinstance(layer.mlp.gate_up, fp8.FP8Linear) for layer in quant.vlm.layers)
    assert quant.dtype == torch.float32
    keys = quant.state_dict().keys()  # the quantized layers keep their own names; the rest keeps openpi's
    assert "vlm.layers.0.self_attn.qkv.qweight" in keys and "vlm.layers.0.mlp.gate_up.wscale" in keys
    assert "expert.layers.0.self_attn.q_proj.weight" in keys and "expert.layers.0.mlp.up_proj.weight" in keys
    inputs = random_inputs(cfg, cameras=(True, False, True), valid_tokens=(4,))
    a, b = plain.sample_actions(*inputs, num_steps=3), quant.sample_actions(*inputs, num_steps=3)
    err = float((a - b).abs().max())
    assert 0 < err < 0.05 * float(a.abs().max())


def test_fused_gate_up_quantizes_as_the_two_projections_apart():
    """Per-row scales: the fused gate/up weight's e4m3 rows and scales are exactly those of gate_proj and up_proj
    quantized separately, so its output is the two separate FP8 outputs side by side (and the reference path's row
    blocks of the dequantized weight are the separately dequantized ones)."""
    from turbopi_ros.model.config import GemmaConfig
    from turbopi_ros.model.gemma import GemmaMLP

    g = torch.Generator().manual_seed(2)
    mlp = GemmaMLP(GemmaConfig(width=32, depth=1, mlp_dim=48)).requires_grad_(False)
    mlp.gate_up.weight.copy_(torch.randn(96, 32, generator=g) * torch.logspace(-2, 0, 96)[:, None])
    gate_w, up_w = mlp.gate_up.weight[:48].clone(), mlp.gate_up.weight[48:].clone()
    quant = fp8.FP8Linear(mlp.gate_up, out_dtype=torch.float32)
    assert quant.split_sizes == [48, 48]
    for rows, w in ((slice(0, 48), gate_w), (slice(48, 96), up_w)):
        q, s = fp8.quantize_rows(w)
        assert torch.equal(quant.qweight[rows].float(), q.float()) and torch.equal(quant.wscale[rows], s)
        assert torch.equal(quant.weight[rows], fp8.dequantize(q, s))
    x = torch.randn(3, 5, 32, generator=g)
    apart = [fp8.FP8Linear(torch.nn.Linear(32, 48, bias=False).requires_grad_(False), out_dtype=torch.float32)
             for _ in range(2)]
    for lin, w in zip(apart, (gate_w, up_w)):
        lin.qweight, lin.wscale = fp8.quantize_rows(w)
    assert torch.allclose(quant(x), torch.cat([apart[0](x), apart[1](x)], dim=-1), atol=1e-6)


@gpu_path_on_cpu
def test_the_gpu_forward_matches_the_twin_and_differentiates_in_x():
    """FP8Linear.scaled_forward (torch._scaled_mm, which CPU builds of torch also run) against the twin
    (reference_linear): the same values, and a gradient in x where _scaled_mm has none of its own (the guided
    denoise's backward): dy @ W dequantized, within bfloat16's rounding."""
    g = torch.Generator().manual_seed(2)
    lin = torch.nn.Linear(64, 32).requires_grad_(False)
    with torch.no_grad():
        lin.weight.normal_(generator=g)
        lin.bias.normal_(generator=g)
    q_lin = fp8.FP8Linear(lin, out_dtype=torch.bfloat16)
    x = torch.randn(2, 5, 64, generator=g).to(torch.bfloat16).requires_grad_(True)
    dy = torch.randn(2, 5, 32, generator=g).to(torch.bfloat16)
    got = q_lin.scaled_forward(x)
    want = fp8.reference_linear(x, q_lin.qweight, q_lin.wscale, q_lin.bias, torch.bfloat16)
    # bfloat16 rounds the product and then the bias sum on the GPU path, once at the end in the twin
    err = float((got.detach().float() - want.detach().float()).abs().max())
    assert err <= 2 ** -6 * float(want.detach().float().abs().max())
    (dx,) = torch.autograd.grad(got, x, dy)
    # straight through the activation's rounding: dy @ W (autograd of the twin gets the same, but rounds the
    # gradient to e4m3 on its way back through the float8 cast)
    exact = dy.float() @ fp8.dequantize(q_lin.qweight, q_lin.wscale)
    assert float((dx.float() - exact).abs().max()) <= 2 ** -6 * float(exact.abs().max())
    with torch.no_grad():
        assert torch.equal(q_lin.scaled_forward(x), got)  # without a gradient: the same product


def _guided_case(weights_only: bool):
    """A small bfloat16 pi0.5 (expert width 32) quantized (FP8, or FP8 weights only), its cache, noise and a
    guidance for real-time chunking's guided denoise."""
    import dataclasses

    from turbopi_ros.model.rtc import Guidance

    cfg = small_config("pi05", horizon=8)
    cfg = dataclasses.replace(cfg, expert=dataclasses.replace(cfg.expert, width=32, mlp_dim=64))
    model = random_model(cfg, dtype="bfloat16")
    fp8.quantize_model(model, check_device=False, weights_only=weights_only)
    inputs = random_inputs(cfg, cameras=(True, False, True))
    g = torch.Generator().manual_seed(0)
    shape = (1, cfg.action_horizon, cfg.action_dim)
    guidance = Guidance(torch.randn(shape, generator=g), torch.rand(shape, generator=g))
    return model, model.encode(*inputs[:5]), inputs[5], guidance


@gpu_path_on_cpu
def test_the_guided_denoise_runs_on_fp8_weights(monkeypatch):
    """Real-time chunking with model.dtype fp8: the guided denoise differentiates through the quantized expert. On
    the GPU path (scaled_forward, made the forward here on CPU) it runs and agrees with the twin's guided denoise;
    before, torch._scaled_mm's missing derivative raised."""
    from turbopi_ros.model.rtc import guided_denoise

    model, cache, noise, guidance = _guided_case(weights_only=False)
    assert isinstance(model.expert.layers[0].mlp.gate_up, fp8.FP8Linear)
    twin = guided_denoise(model, cache, noise, guidance, 3)
    moved = float((twin - model.denoise(cache, noise, 3)).abs().max())
    monkeypatch.setattr(fp8.FP8Linear, "forward", fp8.FP8Linear.scaled_forward)
    gpu_path = guided_denoise(model, cache, noise, guidance, 3)
    assert bool(torch.isfinite(gpu_path).all()) and moved > 1e-2
    assert float((gpu_path - twin).abs().max()) < 0.1 * moved


# --- model.dtype fp8_weights: the expert's weights alone, widened in the few-rows matmul ----------------------------
def test_fp8_weights_refused_where_the_kernels_cannot_run(tmp_path, monkeypatch):
    """Refused on CPU before any file is read, on a GPU older than 8.9 by name and capability, and without Triton."""
    from turbopi_ros.model.checkpoint import is_fp8_weights, load_model

    with pytest.raises(ValueError, match=r"model.dtype fp8_weights needs a CUDA GPU .*8.9.*device cpu"):
        random_model(small_config("pi0"), dtype="fp8_weights")
    with pytest.raises(ValueError, match="fp8_weights needs a CUDA GPU"):
        load_model(tmp_path / "missing.safetensors", dtype="fp8_weights")
    assert is_fp8_weights("fp8_weights") and not is_fp8_weights("fp8") and not is_fp8("fp8_weights")
    assert parse_dtype("fp8_weights") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Jetson AGX Orin")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 7))
    ok, why = fp8.fp8_support("cuda:0", fp8.WEIGHTS_ONLY)
    assert not ok and why.startswith("model.dtype fp8_weights: cuda:0 (NVIDIA Jetson AGX Orin)") and "8.7" in why
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (11, 0))  # a Jetson Thor
    assert fp8.fp8_support("cuda:0", fp8.WEIGHTS_ONLY) == (True, "")
    monkeypatch.setattr(fp8, "triton_available", lambda: False)
    ok, why = fp8.fp8_support("cuda:0", fp8.WEIGHTS_ONLY)
    assert not ok and "Triton is not installed" in why
    assert fp8.fp8_support("cuda:0") == (True, "")  # torch._scaled_mm needs no Triton


def test_fp8_weight_linear_is_the_scaled_product_of_its_e4m3_rows():
    """FP8WeightLinear: per-row e4m3 weights as FP8Linear's, the input left in bfloat16: its output is the float32
    product with the dequantized weights rounded once (within one bfloat16 step of float64), and its gradient in x
    (the guided denoise) is dy @ the dequantized weights."""
    g = torch.Generator().manual_seed(3)
    lin = torch.nn.Linear(96, 40, bias=False).requires_grad_(False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(40, 96, generator=g) * torch.logspace(-2, 0, 40)[:, None])
    q_lin = fp8.FP8WeightLinear(lin.to(torch.bfloat16), out_dtype=torch.bfloat16)
    q, s = fp8.quantize_rows(lin.weight)
    assert q_lin.qweight.dtype == torch.float8_e4m3fn and torch.equal(q_lin.qweight.float(), q.float())
    assert q_lin.wscale.shape == (40,) and q_lin.wscale.dtype == torch.float32
    x = torch.randn(2, 25, 96, generator=g).to(torch.bfloat16)
    got = q_lin(x)
    exact = x.double() @ (q.double() * s.double()).t()
    assert got.dtype == torch.bfloat16 and float((got.double() - exact).abs().max()) <= 2 ** -8 * float(
        exact.abs().max())
    unquantized = float((x.double() @ lin.weight.double().t() - exact).abs().max())
    assert unquantized > 1e-3  # the weights really are rounded to e4m3
    xg = x.clone().requires_grad_(True)
    dy = torch.randn(2, 25, 40, generator=g).to(torch.bfloat16)
    (dx,) = torch.autograd.grad(q_lin(xg), xg, dy)
    want = dy.double() @ (q.double() * s.double())
    assert float((dx.double() - want).abs().max()) <= 2 ** -7 * float(want.abs().max())


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_fp8_weights_quantize_the_expert_alone_and_move_the_actions_less_than_fp8(variant):
    """Weights only: the expert's four projections a layer become FP8WeightLinear (any width), SigLIP and Gemma
    stay bfloat16; the actions move from bfloat16's, and less than with the same projections as FP8Linear (which
    also rounds their inputs to e4m3). The fused few-rows path takes FP8WeightLinear's weights and scales."""
    from turbopi_ros.model import few_rows_matmul as fr
    from turbopi_ros.model.checkpoint import set_dtype

    cfg = small_config(variant)
    inputs = random_inputs(cfg, cameras=(True, False, True), valid_tokens=(4,))
    models = [set_dtype(model_for(cfg), torch.bfloat16) for _ in range(3)]
    n = fp8.quantize_model(models[1], check_device=False, weights_only=True)
    assert n == 4 * cfg.expert.depth
    for layer in models[2].expert.layers:  # the same projections as FP8Linear (its twin takes any width)
        for owner in (layer.self_attn, layer.mlp):
            for name, child in list(owner.named_children()):
                if name in fp8.QUANTIZED:
                    setattr(owner, name, fp8.FP8Linear(child, out_dtype=torch.bfloat16))
    layer = models[1].expert.layers[0]
    assert isinstance(layer.self_attn.qkv, fp8.FP8WeightLinear) and isinstance(layer.mlp.down_proj,
                                                                              fp8.FP8WeightLinear)
    assert not any(isinstance(m, (fp8.FP8WeightLinear, fp8.FP8Linear)) for m in models[1].vlm.modules())
    assert not any(isinstance(m, (fp8.FP8WeightLinear, fp8.FP8Linear)) for m in models[1].vision.modules())
    assert fr._matrix(layer.mlp.down_proj) == (layer.mlp.down_proj.qweight, layer.mlp.down_proj.wscale)
    with torch.inference_mode():
        bf16, weights_only, full = (m.sample_actions(*inputs, num_steps=3).float() for m in models)
    moved, moved_fp8 = float((weights_only - bf16).abs().mean()), float((full - bf16).abs().mean())
    assert 0 < moved < moved_fp8 and float((weights_only - bf16).abs().max()) < 0.01 * float(bf16.abs().max())


def test_the_guided_denoise_differentiates_through_fp8_weights():
    """Real-time chunking with model.dtype fp8_weights: the guided denoise's backward pass goes through the expert's
    FP8WeightLinear (their twin, differentiable in x), plain and fused; the guidance moves the actions."""
    from turbopi_ros.model.rtc import guided_denoise

    model, cache, noise, guidance = _guided_case(weights_only=True)
    assert isinstance(model.expert.layers[0].mlp.gate_up, fp8.FP8WeightLinear)
    plain = guided_denoise(model, cache, noise, guidance, 3)
    moved = float((plain - model.denoise(cache, noise, 3)).abs().max())
    model.use_fused(True)
    fused = guided_denoise(model, cache, noise, guidance, 3)
    assert bool(torch.isfinite(fused).all()) and moved > 1e-2
    assert float((fused - plain).abs().max()) < 0.1 * moved
