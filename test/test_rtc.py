"""Real-time chunking's guided denoise (model/rtc.py): exactness, the paper's formula, the signs, and that it works."""
import math
import time

import pytest
import torch

from turbopi_ros.model.checkpoint import random_model
from turbopi_ros.model.config import ModelConfig
from turbopi_ros.model.pi0 import euler_schedule
from turbopi_ros.model.reference import reference_prefix, reference_velocity
from turbopi_ros.model.rtc import (ConstantPrefix, Guidance, differentiable_velocity, guidance_weight, guided_denoise,
                                   guided_velocity)
from turbopi_ros.policy.rtc_target import prefix_weights

from engine_helpers import random_inputs, small_config

VARIANTS = ["pi0", "pi05"]


def _setup(variant, seed=1, config=None, **inputs):
    cfg = config or small_config(variant, horizon=8)
    model = random_model(cfg, seed=seed)
    images, masks, tokens, token_mask, state, noise = random_inputs(cfg, cameras=(True, False, True), **inputs)
    cache = model.encode(images, masks, tokens, token_mask, state)
    return model, cache, (images, masks, tokens, token_mask, state), noise


def _random_guidance(cfg, seed=0, beta=5.0):
    g = torch.Generator().manual_seed(seed)
    shape = (1, cfg.action_horizon, cfg.action_dim)
    return Guidance(target=torch.randn(shape, generator=g), weights=torch.rand(shape, generator=g), max_guidance=beta)


@pytest.mark.parametrize("variant", VARIANTS)
def test_zero_weights_give_exactly_the_plain_denoise(variant):
    """The guided path feeds SDPA the same tensors as the plain one (prefix K/V concatenated instead of written into
    the cache tail), and a zero error gives a zero vector-Jacobian product: bit-identical actions."""
    model, cache, _, noise = _setup(variant)
    plain = model.denoise(cache, noise, num_steps=4)
    guidance = _random_guidance(model.config)
    guidance.weights = torch.zeros_like(guidance.weights)
    guided = guided_denoise(model, cache, noise, guidance, num_steps=4)
    assert torch.equal(guided, plain)
    # the cache is left as it was: a plain denoise afterwards is unchanged
    assert torch.equal(model.denoise(cache, noise, num_steps=4), plain)


@pytest.mark.parametrize("variant", VARIANTS)
def test_guidance_equals_autograd_of_the_papers_formula(variant):
    """Algorithm 1 of arXiv 2506.07339 in the paper's own time tau = 1 - t, written out here on openpi's reference
    formulation: f(A) = A + (1 - tau) v_tau(A) with v_tau = -v, the guided paper velocity
    v_tau + min(beta, (1 - tau) / (tau r^2)) (Y - f)^T diag(W) df/dA, r^2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2).
    The engine's guided velocity (openpi sign: -v_tau) must equal it."""
    model, cache, (images, masks, tokens, token_mask, state), _ = _setup(variant)
    with torch.no_grad():
        prefix_pad, past = reference_prefix(model, images, masks, tokens, token_mask)
    prefix = ConstantPrefix.from_cache(cache)
    steps = model.step_conditioning(5)
    times, _ = euler_schedule(5)
    guidance = _random_guidance(model.config, seed=3)
    shape = (1, model.config.action_horizon, model.config.action_dim)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    for sc, t in zip(steps, times):  # 1.0 (weight clipped at beta), 0.8, 0.6 (unclipped: 4.25, 2.17), ...
        tau = 1.0 - t
        y, w, beta = guidance.target, guidance.weights, guidance.max_guidance

        def f(a):
            return a + (1.0 - tau) * (-reference_velocity(model, prefix_pad, past, state, a, t))

        a = x.clone().requires_grad_(True)
        fa = f(a)
        (vjp,) = torch.autograd.grad(fa, a, grad_outputs=((y - fa) * w).detach())
        r2 = (1.0 - tau) ** 2 / (tau ** 2 + (1.0 - tau) ** 2)
        weight = beta if tau == 0.0 else min(beta, (1.0 - tau) / (tau * r2))
        paper = -reference_velocity(model, prefix_pad, past, state, x, t).detach() + weight * vjp
        ours, plain, predicted = guided_velocity(lambda x_t: differentiable_velocity(model, prefix, x_t, sc), x, t,
                                                 guidance)
        assert torch.allclose(-ours, paper, atol=2e-5, rtol=1e-4), (t, (-ours - paper).abs().max())
        assert torch.allclose(predicted, fa.detach(), atol=1e-5)
        assert torch.allclose(plain, reference_velocity(model, prefix_pad, past, state, x, t), atol=2e-5)
        assert weight == pytest.approx(guidance_weight(t, beta), rel=1e-6)
        x = x + (1.0 / 5) * paper  # move along the paper's trajectory


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_guided_step_descends_the_weighted_error(variant):
    """Signs for openpi's time (t: 1 -> 0, dt < 0): the guided step differs from the plain one by
    -|dt| * w(t) * grad_x L, L = 0.5 * sum W (Y - A(x))^2, and for a small step it lowers L where the plain step
    does not."""
    model, cache, _, noise = _setup(variant)
    prefix = ConstantPrefix.from_cache(cache)
    sc = model.step_conditioning(10)[3]
    t = sc.time
    guidance = _random_guidance(model.config, seed=5)

    def velocity(x_t):
        return differentiable_velocity(model, prefix, x_t, sc)

    def loss(x):
        return 0.5 * (guidance.weights * (guidance.target - (x - t * velocity(x))) ** 2).sum()

    x = noise.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(x), x)
    guided, plain, _ = guided_velocity(velocity, noise, t, guidance)
    dt = -1e-3
    step = dt * guided - dt * plain
    assert torch.allclose(step, -abs(dt) * guidance_weight(t) * grad, atol=1e-7, rtol=1e-4)
    with torch.no_grad():
        assert loss(noise + dt * guided) < loss(noise + dt * plain)


def test_signs_with_a_velocity_that_ignores_x():
    """With v independent of x, dA/dx = I and the guided velocity is known in closed form:
    v - w(t) * W * (Y - (x - t v)); so x + dt * v_guided moves A towards Y for dt < 0."""
    g = torch.Generator().manual_seed(0)
    c, x, y, w = (torch.randn((1, 4, 3), generator=g) for _ in range(4))
    w = w.abs()
    guidance = Guidance(target=y, weights=w, max_guidance=5.0)
    for t in (1.0, 0.7, 0.5, 0.2):
        guided, plain, predicted = guided_velocity(lambda x_t: c + 0 * x_t, x, t, guidance)
        assert torch.equal(plain, c) and torch.allclose(predicted, x - t * c)
        assert torch.allclose(guided, c - guidance_weight(t) * w * (y - (x - t * c)), atol=1e-6)
        after = x + (-0.1) * guided - t * c  # A after a step (v unchanged)
        assert ((w * (y - after) ** 2).sum() < (w * (y - predicted) ** 2).sum())


def test_time_weight_is_the_papers_clipped_weight():
    for t in (1.0, 0.9, 0.8, 0.7, 0.5, 0.3, 0.1):
        tau = 1.0 - t
        r2 = (1.0 - tau) ** 2 / (tau ** 2 + (1.0 - tau) ** 2)
        expected = 5.0 if tau == 0 else min(5.0, (1.0 - tau) / (tau * r2))
        assert guidance_weight(t, 5.0) == pytest.approx(expected)
    assert guidance_weight(0.5, 5.0) == pytest.approx(2.0)  # the minimum of the unclipped weight
    assert guidance_weight(0.8, 5.0) == pytest.approx(4.25)
    assert guidance_weight(0.9, 5.0) == 5.0 and guidance_weight(0.5, 1.0) == 1.0


def _first_d_error(actions, target, d):
    return float((actions[:, :d] - target[:, :d]).pow(2).mean().sqrt())


@pytest.mark.parametrize("preset", ["tiny", "tiny_pi05"])
def test_guided_first_actions_land_on_the_previous_chunk(preset):
    """The tiny random-weight presets: a previous chunk from other noise, then a new chunk from a slightly different
    state and fresh noise, guided towards the previous chunk shifted by s = 10 actions, d = 5."""
    cfg = ModelConfig.preset(preset)
    model = random_model(cfg, seed=1)
    images, masks, tokens, token_mask, state, _ = random_inputs(cfg, cameras=(True, True, False), valid_tokens=(12,))
    H, D, d, s = cfg.action_horizon, cfg.action_dim, 5, 10
    previous = model.denoise(model.encode(images, masks, tokens, token_mask, state),
                             torch.randn((1, H, D), generator=torch.Generator().manual_seed(5)))
    target = torch.zeros((1, H, D))
    target[:, :H - s] = previous[:, s:]
    weights = torch.tensor(prefix_weights(H, d, s), dtype=torch.float32)[None, :, None].expand(1, H, D)
    cache = model.encode(images, masks, tokens, token_mask, state + 0.05)
    noise = torch.randn((1, H, D), generator=torch.Generator().manual_seed(9))
    t0 = time.perf_counter()
    plain = model.denoise(cache, noise)
    t1 = time.perf_counter()
    guided = guided_denoise(model, cache, noise, Guidance(target, weights, max_guidance=5.0))
    t2 = time.perf_counter()
    before, after = _first_d_error(plain, target, d), _first_d_error(guided, target, d)
    print(f"{preset}: first-{d} RMS error unguided {before:.4f}, guided {after:.4f}: {before / after:.0f}x; denoise "
          f"{1e3 * (t1 - t0):.0f} ms plain, {1e3 * (t2 - t1):.0f} ms guided (one run each, not a benchmark)")
    assert after * 10 < before
    # the unfrozen tail (weight 0) is left to the model: it stays as far from the (zero) target as the plain chunk
    tail = slice(H - s, H)
    assert float(guided[:, tail].abs().mean()) > 0.3 * float(plain[:, tail].abs().mean())


@pytest.mark.parametrize("mode", [torch.inference_mode, torch.no_grad, torch.enable_grad])
def test_guided_denoise_in_any_autograd_mode_returns_an_ordinary_tensor(mode):
    model, cache, _, noise = _setup("pi05")
    guidance = _random_guidance(model.config)
    expected = guided_denoise(model, cache, noise, guidance, num_steps=3)
    with mode():
        out = guided_denoise(model, cache, noise, guidance, num_steps=3)
    assert torch.equal(out, expected)
    assert out.grad_fn is None and not out.requires_grad and not out.is_inference()


def test_bad_guidance_is_refused_with_the_expected_shape():
    model, cache, _, noise = _setup("pi0")
    good = _random_guidance(model.config)
    with pytest.raises(ValueError, match=r"guidance target must be \[1, 8, 5\]"):
        guided_denoise(model, cache, noise, Guidance(good.target[:, :4], good.weights))
    with pytest.raises(ValueError, match="do not broadcast"):
        guided_denoise(model, cache, noise, Guidance(good.target, good.weights[:, :3]))
    with pytest.raises(ValueError, match="max_guidance"):
        guided_denoise(model, cache, noise, Guidance(good.target, good.weights, max_guidance=-1.0))
    with pytest.raises(ValueError, match="must be a finite number"):  # no clip: an infinite first-step weight
        guided_denoise(model, cache, noise, Guidance(good.target, good.weights, max_guidance=math.inf))
    with pytest.raises(ValueError, match="noise must be"):
        guided_denoise(model, cache, noise[:, :2], good)
    assert math.isfinite(float(guided_denoise(model, cache, noise, good, num_steps=2).abs().max()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_on_cuda_a_guided_call_runs_eagerly_and_leaves_the_graph_alone(dtype):
    from turbopi_ros.model.cuda_graph import CudaGraphDenoiser

    cfg = small_config("pi0", horizon=8)
    model = random_model(cfg, device="cuda", dtype=dtype)
    inputs = [t.cuda() for t in random_inputs(cfg, cameras=(True, False, True))]
    cache = model.encode(*inputs[:5])
    noise = inputs[5]
    graphed = CudaGraphDenoiser(model)
    with torch.inference_mode():
        replayed = graphed(cache, noise, 10)
    eager = model.denoise(cache, noise, 10)
    guidance = _random_guidance(cfg)
    zero = guided_denoise(model, cache, noise, Guidance(guidance.target.cuda(), torch.zeros_like(guidance.target)))
    print(f"cuda {dtype}: zero-weight guided vs plain eager max |diff| {float((zero - eager).abs().max()):.3g}")
    assert torch.allclose(zero, eager, atol=1e-5 if dtype == "float32" else 2e-2)
    guided = guided_denoise(model, cache, noise, guidance)
    assert torch.isfinite(guided).all() and zero.device.type == "cuda"
    with torch.inference_mode():
        assert torch.equal(graphed(cache, noise, 10), replayed) and graphed.num_graphs == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("variant", ["pi0", "pi05"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_guided_denoise_replayed_as_a_cuda_graph_equals_eager(variant, dtype):
    from turbopi_ros.model.cuda_graph import CudaGraphGuidedDenoiser

    cfg = small_config(variant, horizon=8)
    model = random_model(cfg, device="cuda", dtype=dtype)
    graphed = CudaGraphGuidedDenoiser(model)
    for seed in range(3):  # new inputs into the same graph: the copies into its static buffers are what changes
        inputs = [t.cuda() for t in random_inputs(cfg, cameras=(True, False, True), seed=seed)]
        cache = model.encode(*inputs[:5])
        guidance = _random_guidance(cfg, seed=seed)
        guidance = Guidance(guidance.target.cuda(), guidance.weights.cuda())
        eager = guided_denoise(model, cache, inputs[5], guidance, 10)
        with torch.inference_mode():
            replayed = graphed(cache, inputs[5], guidance, 10)
        print(f"cuda {variant} {dtype} seed {seed}: graph vs eager guided max |diff| "
              f"{float((replayed - eager).abs().max()):.3g}")
        assert torch.allclose(replayed, eager, atol=1e-5 if dtype == "float32" else 2e-2)
    assert graphed.num_graphs == 1
