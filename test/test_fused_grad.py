"""The fused ops' backwards (model/fused_grad.py) and the guided (RTC) denoise through the fused path: every backward
against autograd of the op's twin, qkv_rope_heads against qkv_rope, the refusals, and whole guided denoises fused
against plain (float32, 1e-5; pi0 and pi0.5), eager and as the guided graph's CPU static replay."""
import pytest
import torch

from turbopi_ros.model import fused, fused_grad  # noqa: F401 - fused_grad registers the backwards
from turbopi_ros.model.checkpoint import random_model
from turbopi_ros.model.cuda_graph import CudaGraphGuidedDenoiser, GraphPool
from turbopi_ros.model.gemma import rope_tables
from turbopi_ros.model.opcount import compare as count_ops_compare, count_ops
from turbopi_ros.model.rtc import Guidance, guided_denoise

from engine_helpers import random_inputs, small_config
from test_fused import _interpreter_checks, memchecked
from test_rtc import _random_guidance

B, L, W = 2, 3, 24


def _grads(fn, inputs, seed=0):
    """Gradients of sum(outputs * fixed random cotangents) with respect to inputs."""
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    g = torch.Generator().manual_seed(seed)
    cotangents = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o in outs]
    return torch.autograd.grad(outs, inputs, cotangents)


def _leaves(dtype, *shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True) for s in shapes]


def _constants(dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(W, generator=g, dtype=torch.float64) * 0.1).to(dtype)
    mod = torch.randn(B, 1, 3 * W, generator=g, dtype=torch.float64).to(dtype)  # adaRMS chunks: strided views
    scale, shift, gate = torch.chunk(mod, 3, dim=-1)
    return weight, scale, shift, gate


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_norm_backwards_equal_autograd_of_their_twins(dtype):
    weight, scale, shift, gate = _constants(dtype)
    x, branch = _leaves(dtype, (B, L, W), (B, L, W))
    cases = {
        "rms_norm": (lambda x: fused.rms_norm(x, weight, None, None),
                     lambda x: fused.rms_norm_twin(x, weight, None, None), (x,)),
        "adaRMS": (lambda x: fused.rms_norm(x, None, scale, shift),
                   lambda x: fused.rms_norm_twin(x, None, scale, shift), (x,)),
    }
    for name, g in (("add_rms_norm", None), ("add_rms_norm gated adaRMS", gate)):
        w, s, h = (weight, None, None) if g is None else (None, scale, shift)

        def twin(x, br, g=g, w=w, s=s, h=h):
            total = fused.residual_twin(x, br, g)
            return total, fused.rms_norm_twin(total, w, s, h)
        cases[name] = (lambda x, br, g=g, w=w, s=s, h=h: fused.add_rms_norm(x, br, g, w, s, h), twin, (x, branch))
    for name, (op, twin, inputs) in cases.items():
        got, want = _grads(op, inputs), _grads(twin, inputs)
        err = max(float((a - b).abs().max()) for a, b in zip(got, want))
        assert err <= 1e-5, f"{name}: max |d| {err}"
        assert all(float(a.abs().max()) > 1e-2 for a in got), name  # gradients that are not trivially zero


def test_gelu_gate_and_qkv_rope_heads_pass_gradcheck_in_float64():
    (gate_up,) = _leaves(torch.float64, (B, L, 2 * W))
    assert torch.autograd.gradcheck(fused.gelu_gate, (gate_up,))
    D = 8
    positions = torch.arange(5, 5 + L).expand(B, L)
    cos, sin = rope_tables(positions, D, 10000.0, torch.float64)
    for H, KV in ((4, 1), (4, 2)):
        (qkv,) = _leaves(torch.float64, (B, L, (H + 2 * KV) * D))
        assert torch.autograd.gradcheck(lambda t: fused.qkv_rope_heads(t, cos, sin, H, KV), (qkv,))


def test_qkv_rope_heads_is_qkv_rope_into_new_tensors():
    H, KV, D, Lc, start = 4, 2, 8, 7, 2
    qkv = torch.randn(B, L, (H + 2 * KV) * D)
    cos, sin = rope_tables(torch.arange(start, start + L).expand(B, L), D, 10000.0, torch.float32)
    keys, values = torch.zeros(B, KV, Lc, D), torch.zeros(B, KV, Lc, D)
    q_cache = fused.qkv_rope(qkv, cos, sin, keys, values, start, H, KV)
    q, k, v = fused.qkv_rope_heads(qkv, cos, sin, H, KV)
    assert torch.equal(q, q_cache) and k.shape == v.shape == (B, KV, L, D)
    assert torch.equal(k, keys[:, :, start:start + L]) and torch.equal(v, values[:, :, start:start + L])


def test_a_gradient_the_ops_do_not_compute_is_refused():
    weight, scale, shift, gate = _constants(torch.float32)
    (x,) = _leaves(torch.float32, (B, L, W))
    with pytest.raises(NotImplementedError, match="no gradient with respect to weight"):
        fused.rms_norm(x, weight.clone().requires_grad_(True), None, None)
    with pytest.raises(NotImplementedError, match="no gradient with respect to gate"):
        fused.add_rms_norm(x, x, gate.clone().requires_grad_(True), None, scale, shift)
    cos, sin = rope_tables(torch.arange(L).expand(B, L), 8, 10000.0, torch.float32)
    with pytest.raises(NotImplementedError, match="no gradient with respect to cos"):
        fused.qkv_rope_heads(torch.randn(B, L, 48, requires_grad=True), cos.requires_grad_(True), sin, 4, 1)


def _setup(variant, seed=0):
    cfg = small_config(variant, horizon=8)
    model = random_model(cfg, seed=seed)
    inputs = random_inputs(cfg, cameras=(True, False, True), seed=seed)
    return model, inputs, _random_guidance(cfg, seed)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_the_fused_guided_denoise_equals_the_plain_one_float32(variant):
    model, inputs, guidance = _setup(variant)
    results = []
    for on in (False, True):
        model.use_fused(on)
        cache = model.encode(*inputs[:5])
        results.append((guided_denoise(model, cache, inputs[5], guidance, 10), model.denoise(cache, inputs[5], 10)))
    (plain_guided, plain), (fused_guided, _) = results
    assert float((fused_guided - plain_guided).abs().max()) <= 1e-5
    assert float((plain_guided - plain).abs().max()) > 1e-2  # the guidance changed the actions: a real check
    zero = Guidance(guidance.target, torch.zeros_like(guidance.weights))
    fused_plain = model.denoise(model.encode(*inputs[:5]), inputs[5], 10)
    assert torch.equal(guided_denoise(model, model.encode(*inputs[:5]), inputs[5], zero, 10), fused_plain)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_the_fused_guided_graph_replays_the_eager_fused_guided_denoise(variant):
    """CudaGraphGuidedDenoiser on the fused model, its CPU static replay (what a CUDA graph replays: the same ops on
    static buffers), against eager fused guidance, over new inputs into one graph."""
    model, inputs, guidance = _setup(variant)
    model.use_fused(True)
    graphed = CudaGraphGuidedDenoiser(model, pool=GraphPool("cpu", static_replay_on_cpu=True))
    for seed in range(2):
        _, inputs, guidance = _setup(variant, seed=seed)
        cache = model.encode(*inputs[:5])
        eager = guided_denoise(model, cache, inputs[5], guidance, 10)
        with torch.inference_mode():
            replayed = graphed(cache, inputs[5], guidance, 10)
        assert float((replayed - eager).abs().max()) <= 1e-6
    assert graphed.num_graphs == 1


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_the_fused_guided_denoise_dispatches_fewer_ops(variant):
    """opcount's guided rows (one guided step, forward and backward; one expert layer of it): per layer the fused
    path launches under 30 % of the plain path's (measured 24 of 89 for pi0, 26 of 95 for pi0.5), and a whole
    guided denoise fewer too."""
    model, inputs, guidance = _setup(variant)
    counts = count_ops_compare(model, *inputs, num_steps=10)
    plain, fast = counts["plain"]["guided_layer"], counts["fused"]["guided_layer"]
    assert fast["launches"] < 0.3 * plain["launches"], (fast, plain)
    launches = {}
    for on in (False, True):
        model.use_fused(on)
        cache = model.encode(*inputs[:5])
        launches[on] = count_ops(lambda: guided_denoise(model, cache, inputs[5], guidance, 10)).launches
    assert launches[True] < 0.6 * launches[False], launches


def test_backward_kernels_under_the_interpreter():
    """fused_grad.py's Triton kernels against their twins (float32 1e-5, bfloat16 two rounding steps) and the guided
    denoise with every kernel, forward and backward, against the plain guided denoise (float32 1e-5)."""
    lines, stdout = _interpreter_checks("backward")
    assert len(lines) == 26 and "guided denoise pi05" in lines[-1], stdout
    # every load and store inside the launch's tensors (interpreter_memcheck.py): the backwards and the forwards the
    # guided denoise runs with them
    assert set(fused_grad.KERNELS) <= set(memchecked(stdout)), stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("variant", ["pi0", "pi05"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_on_cuda_the_fused_guided_denoise_and_its_graph_equal_the_plain_one(variant, dtype):
    """The Triton kernels forward and backward on the GPU: the fused guided denoise, eager and replayed as a CUDA
    graph, against the plain guided denoise (float32 1e-5; bfloat16 within a tenth of what the guidance moved)."""
    cfg = small_config(variant, horizon=8)
    model = random_model(cfg, device="cuda", dtype=dtype)
    inputs = [t.cuda() for t in random_inputs(cfg, cameras=(True, False, True))]
    guidance = _random_guidance(cfg)
    guidance = Guidance(guidance.target.cuda(), guidance.weights.cuda())
    cache = model.encode(*inputs[:5])
    plain = guided_denoise(model, cache, inputs[5], guidance, 10)
    moved = float((plain - model.denoise(cache, inputs[5], 10)).abs().max())
    model.use_fused(True)
    eager = guided_denoise(model, cache, inputs[5], guidance, 10)
    with torch.inference_mode():
        replayed = CudaGraphGuidedDenoiser(model)(cache, inputs[5], guidance, 10)
    tol = 1e-5 if dtype == "float32" else 0.1 * moved
    for name, got in (("eager", eager), ("graph", replayed)):
        err = float((got - plain).abs().max())
        print(f"cuda {variant} {dtype} fused guided {name} vs plain guided: max |diff| {err:.3g} (moved {moved:.3g})")
        assert err <= tol
