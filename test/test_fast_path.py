"""The fast path (compacted cache, state token folded in, maskless SDPA) equals the reference path (openpi's padded,
masked formulation) on randomized small configs, and it really is maskless."""
import itertools
import random

import pytest
import torch
import torch.nn.functional as F

from turbopi_ros.model import reference
from turbopi_ros.model.pi0 import euler_schedule

from engine_helpers import model_for, random_inputs, small_config

TOL = 1e-5


def _cases():
    """pi0 and pi0.5 x padded / unpadded prompt x 1-3 cameras with any absent x num_steps 1..10."""
    rng = random.Random(1234)
    cases = []
    for variant in ("pi0", "pi05"):
        for n_cams in (1, 2, 3):
            for cams in itertools.product((True, False), repeat=n_cams):
                padded = rng.random() < 0.5 if any(cams) else True
                steps = rng.randint(1, 10)
                cases.append((variant, cams, padded, steps))
    return cases


@pytest.mark.parametrize("variant,cameras,padded,steps", _cases())
def test_fast_equals_reference(variant, cameras, padded, steps):
    cfg = small_config(variant)
    model = model_for(cfg, seed=len(cameras) * 10 + steps)
    valid = 4 if padded else cfg.max_token_len
    inputs = random_inputs(cfg, cameras=cameras, valid_tokens=(valid,), seed=steps)
    with torch.inference_mode():
        fast = model.sample_actions(*inputs[:5], noise=inputs[5], num_steps=steps, path="fast")
        ref = model.sample_actions(*inputs[:5], noise=inputs[5], num_steps=steps, path="reference")
    assert fast.shape == (1, cfg.action_horizon, cfg.action_dim)
    assert float((fast - ref).abs().max()) <= TOL
    assert float((fast - inputs[5]).abs().max()) > 1e-3  # the actions moved away from the noise


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_full_and_grouped_kv_heads(variant):
    """Two KV heads (the grouped-query branch of the maskless kernel) are exact too."""
    cfg = small_config(variant, num_kv_heads=2)
    model = model_for(cfg)
    inputs = random_inputs(cfg, cameras=(True, False, True), valid_tokens=(3,))
    with torch.inference_mode():
        fast = model.sample_actions(*inputs[:5], noise=inputs[5], num_steps=3)
        ref = model.sample_actions(*inputs[:5], noise=inputs[5], num_steps=3, path="reference")
    assert float((fast - ref).abs().max()) <= TOL


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_batch_with_equal_counts_uses_fast_path(variant):
    """Rows with different masks but equal valid counts are compacted row by row and stay exact."""
    cfg = small_config(variant)
    model = model_for(cfg)
    images, masks, tokens, token_mask, state, noise = random_inputs(cfg, batch=2, valid_tokens=(4,))
    masks[0, 1] = False  # row 0: cameras 0 and 2; row 1: cameras 0 and 1
    masks[1, 2] = False
    with torch.inference_mode():
        cache = model.encode(images, masks, tokens, token_mask, state)
        fast = model.denoise(cache, noise, 4)
        ref = model.sample_actions(images, masks, tokens, token_mask, state, noise=noise, num_steps=4,
                                   path="reference")
    assert cache.num_prefix == 2 * cfg.num_image_tokens + 4
    assert float((fast - ref).abs().max()) <= TOL


def test_ragged_batch_falls_back_to_reference():
    cfg = small_config("pi0")
    model = model_for(cfg)
    images, masks, tokens, token_mask, state, noise = random_inputs(cfg, batch=2, valid_tokens=(3, 7))
    with torch.inference_mode():
        with pytest.raises(ValueError, match="valid prefix tokens"):
            model.encode(images, masks, tokens, token_mask, state)
        fast = model.sample_actions(images, masks, tokens, token_mask, state, noise=noise, num_steps=2)
        ref = model.sample_actions(images, masks, tokens, token_mask, state, noise=noise, num_steps=2,
                                   path="reference")
        single = model.sample_actions(images[1:], masks[1:], tokens[1:], token_mask[1:], state[1:],
                                      noise=noise[1:], num_steps=2)
    assert torch.equal(fast, ref)
    assert float((fast[1:] - single).abs().max()) <= TOL


@pytest.mark.parametrize("variant,extra", [("pi0", 1), ("pi05", 0)])
def test_cache_holds_exactly_the_valid_tokens(variant, extra):
    cfg = small_config(variant)
    model = model_for(cfg)
    inputs = random_inputs(cfg, cameras=(True, False, True), valid_tokens=(4,))
    with torch.inference_mode():
        cache = model.encode(*inputs[:5])
    valid = 2 * cfg.num_image_tokens + 4
    assert cache.num_prefix == valid
    assert cache.num_cached == valid + extra
    # the buffer is the cached tokens plus scratch for exactly the action tokens, nothing else
    assert cache.keys.shape == (cfg.expert.depth, 1, 1, valid + extra + cfg.action_horizon, cfg.expert.head_dim)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_denoise_calls_sdpa_without_a_mask(variant, monkeypatch):
    cfg = small_config(variant)
    model = model_for(cfg)
    inputs = random_inputs(cfg, cameras=(True, True, False), valid_tokens=(4,))
    with torch.inference_mode():
        cache = model.encode(*inputs[:5])
    calls = []
    real_sdpa = F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, *args, **kwargs):
        calls.append({"attn_mask": kwargs.get("attn_mask", args[0] if args else None),
                      "is_causal": kwargs.get("is_causal", False), "queries": q.shape[-2],
                      "keys": k.shape[-2]})
        return real_sdpa(q, k, v, *args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("the fast denoise must not use masked attention")

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
    monkeypatch.setattr(reference, "masked_eager_attention", forbidden)
    steps = 3
    with torch.inference_mode():
        model.denoise(cache, inputs[5], num_steps=steps)
    assert len(calls) == cfg.expert.depth * steps
    for call in calls:
        assert call["attn_mask"] is None and call["is_causal"] is False
        # queries: the action tokens only (8 heads folded into the length); keys: the whole cache + actions
        assert call["queries"] == cfg.action_horizon * cfg.expert.num_heads
        assert call["keys"] == cache.num_cached + cfg.action_horizon


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_maskless_attention_equals_eager_with_an_all_true_mask(kv_heads):
    """Folding the query heads into the query length (one KV head) or per KV group (two) computes openpi's eager
    attention exactly when nothing is masked."""
    from turbopi_ros.model.gemma import masked_eager_attention, maskless_attention

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 7, 4, 8, generator=g)
    k, v = torch.randn(2, kv_heads, 19, 8, generator=g), torch.randn(2, kv_heads, 19, 8, generator=g)
    eager = masked_eager_attention(q, k, v, torch.ones(2, 7, 19, dtype=torch.bool))
    assert torch.allclose(maskless_attention(q, k, v), eager, atol=1e-6)


def test_absent_cameras_skip_the_vision_tower():
    cfg = small_config("pi05")
    model = model_for(cfg)
    seen = []
    model.vision.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    inputs = random_inputs(cfg, cameras=(False, True, False))
    with torch.inference_mode():
        tokens = model.embed_images(inputs[0], inputs[1])
    assert seen == [1] and tokens.present == (1,)


def test_no_camera_at_all_is_exact():
    cfg = small_config("pi0")
    model = model_for(cfg)
    inputs = random_inputs(cfg, cameras=(False, False, False), valid_tokens=(5,))
    with torch.inference_mode():
        fast = model.sample_actions(*inputs[:5], noise=inputs[5], num_steps=2)
        ref = model.sample_actions(*inputs[:5], noise=inputs[5], num_steps=2, path="reference")
    assert float((fast - ref).abs().max()) <= TOL


def test_euler_schedule_matches_openpi_float32_accumulation():
    times, dt = euler_schedule(10)
    assert len(times) == 10
    assert times[:4] == pytest.approx([1.0, 0.899999976, 0.799999952, 0.699999928], abs=1e-9)
    assert times[3] != 0.7  # accumulated in float32, as openpi does
    assert dt == pytest.approx(-0.1, abs=1e-8)
    for n in range(1, 12):
        assert len(euler_schedule(n)[0]) == n
    with pytest.raises(ValueError):
        euler_schedule(0)


def test_step_conditioning_is_recomputed_after_loading_new_weights():
    cfg = small_config("pi05")
    a, b = model_for(cfg, seed=1), model_for(cfg, seed=2)
    inputs = random_inputs(cfg)
    with torch.inference_mode():
        a.sample_actions(*inputs[:5], noise=inputs[5], num_steps=2)  # fills a's precomputed conditioning
        a.load_state_dict(b.state_dict())
        after = a.sample_actions(*inputs[:5], noise=inputs[5], num_steps=2)
        expected = b.sample_actions(*inputs[:5], noise=inputs[5], num_steps=2)
    assert torch.equal(after, expected)


def test_bad_shapes_name_the_problem():
    cfg = small_config("pi0")
    model = model_for(cfg)
    images, masks, tokens, token_mask, state, noise = random_inputs(cfg)
    with torch.inference_mode():
        with pytest.raises(ValueError, match=r"images must be \[B, cameras, 3, 56, 56\]"):
            model.embed_images(images[:, :, :, :10], masks)
        with pytest.raises(ValueError, match="image_masks must be bool"):
            model.embed_images(images, masks.float())
        with pytest.raises(ValueError, match="state must be"):
            model.encode(images, masks, tokens, token_mask, state[:, :3])
        with pytest.raises(ValueError, match=r"token ids must be in \[0, 64\)"):
            model.encode(images, masks, tokens + 64, token_mask, state)
        with pytest.raises(ValueError, match="token_mask must be bool"):
            model.encode(images, masks, tokens, token_mask.long(), state)
        cache = model.encode(images, masks, tokens, token_mask, state)
        with pytest.raises(ValueError, match="noise must be"):
            model.denoise(cache, noise[:, :2])
        with pytest.raises(ValueError, match="path must be"):
            model.sample_actions(images, masks, tokens, token_mask, state, path="slow")


@pytest.mark.parametrize("noise_in_inference_mode", [False, True])
def test_the_compiled_denoise_traces_its_step_once(monkeypatch, noise_in_inference_mode):
    """Every step of a compiled denoise runs the one graph traced at the first, whichever mode the noise was drawn
    in: noise drawn outside inference mode and denoised inside it (the report's cold start) once failed a guard at
    the second step and traced the step again (seconds of a robot's start-up on a full model)."""
    traced = []

    def counting(gm, example_inputs):
        traced.append(gm)
        return gm.forward

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, backend=counting, dynamic=kw.get("dynamic")))
    cfg = small_config("pi0")
    model = model_for(cfg)
    inputs = random_inputs(cfg)
    with torch.inference_mode(noise_in_inference_mode):
        noise = inputs[5].clone()
    torch._dynamo.reset()
    with torch.inference_mode(not noise_in_inference_mode):
        cache = model.encode(*inputs[:5])
        model.compile_denoise()
        model.denoise(cache, noise, 4)
    torch._dynamo.reset()
    assert len(traced) == 1


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_compiled_denoise_equals_eager(variant):
    cfg = small_config(variant)
    model = model_for(cfg)
    inputs = random_inputs(cfg, cameras=(True, False, True), valid_tokens=(4,))
    with torch.inference_mode():
        cache = model.encode(*inputs[:5])
        eager = model.denoise(cache, inputs[5], 4)
        model.compile_denoise()
        compiled = model.denoise(cache, inputs[5], 4)
    assert float((compiled - eager).abs().max()) <= TOL
