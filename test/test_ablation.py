"""turbopi-bench's table (f): every reversal really runs the plain formulation it names, gives the fast path's
actions, and leaves the engine as it was."""
import pytest
import torch

from engine_helpers import random_inputs, small_config
from turbopi_ros.tools import ablation
from turbopi_ros.model import pi0 as pi0_module
from turbopi_ros.model.checkpoint import random_model
from turbopi_ros.model.gemma import GemmaAttention

STEPS = 3


def denoise_ops(model, cache, noise, reversal=None):
    with torch.inference_mode():
        model.denoise(cache, noise, STEPS)  # step conditioning cached, as in a running policy
        counter = ablation.OpCounter()
        if reversal is None:
            with counter:
                actions = model.denoise(cache, noise, STEPS)
        else:
            with reversal(model, cache), counter:
                actions = model.denoise(cache, noise, STEPS)
    return actions, counter.ops


@pytest.fixture(params=["pi0", "pi05"])
def setup(request):
    config = small_config(request.param)
    model = random_model(config, seed=3)
    images, masks, tokens, token_mask, state, noise = random_inputs(config, cameras=(True, False, True),
                                                                    valid_tokens=(5,))
    with torch.inference_mode():
        cache = model.encode(images, masks, tokens, token_mask, state)
    return model, cache, noise


def test_each_reversal_runs_the_plain_formulation_and_matches_the_fast_path(setup):
    model, cache, noise = setup
    depth, calls = model.config.expert.depth, model.config.expert.depth * STEPS
    fast, base = denoise_ops(model, cache, noise)
    extra = {}
    for name, reversal in ablation.REVERSALS.items():
        actions, ops = denoise_ops(model, cache, noise, reversal)
        assert (actions - fast).abs().max() <= 1e-5, name
        extra[name] = ops - base  # ops the plain formulation runs on top of the fast path's
    # three matmuls where the fused projection has one: two more per layer and step
    assert extra["fused QKV -> separate q/k/v matmuls"]["linear"] == 2 * calls
    # K/V copied to every head: repeat_kv's expand (+ reshape, a copy) of K and of V in every call
    assert extra["MQA heads folded -> K/V repeated per head"]["expand"] == 2 * calls
    # a fresh cos/sin table per step instead of the cache's
    assert extra["rotary once per observation -> per step"]["cos"] == STEPS
    # two concatenations (K and V) per call
    assert extra["preallocated K/V -> torch.cat per step"]["cat"] == 2 * calls
    time_ops = extra["time conditioning precomputed -> per step"]
    if model.config.is_pi05:  # time MLP + every adaRMS dense again: 2 + 2 * depth + 1 matmuls per step
        # the conditioning is computed outside inference mode (ordinary tensors), where linear reaches the
        # dispatcher as addmm
        assert time_ops["linear"] + time_ops["addmm"] == STEPS * (2 + 2 * depth + 1)
    else:  # the time embedding (sin, cos) and its concatenation to the action tokens, per step
        assert time_ops["sin"] == STEPS and time_ops["cat"] >= STEPS


def test_all_reversed_composes_and_everything_is_restored(setup):
    model, cache, noise = setup
    project, attention = GemmaAttention.project, pi0_module.maskless_attention
    fast, base = denoise_ops(model, cache, noise)
    actions, ops = denoise_ops(model, cache, noise, ablation.all_reversed)
    assert (actions - fast).abs().max() <= 1e-5
    calls = model.config.expert.depth * STEPS
    assert ops["cat"] - base["cat"] >= 2 * calls and ops["cos"] - base["cos"] >= STEPS
    assert GemmaAttention.project is project and pi0_module.maskless_attention is attention
    assert {"embed_actions", "velocity", "step_conditioning"}.isdisjoint(vars(model))
    again, ops_after = denoise_ops(model, cache, noise)
    assert torch.equal(again, fast) and ops_after == base


def test_sdpa_repeated_kv_is_maskless_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 5, 8, 16, generator=g), torch.randn(2, 1, 11, 16, generator=g), \
        torch.randn(2, 1, 11, 16, generator=g)
    assert torch.allclose(ablation.sdpa_repeated_kv(q, k, v), pi0_module.maskless_attention(q, k, v), atol=1e-6)
