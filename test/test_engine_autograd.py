"""The engine's entry points behave the same in every autograd mode and in any order, and never hand back a graph."""
import pytest
import torch

from turbopi_ros.model.checkpoint import random_model

from engine_helpers import random_inputs, small_config

MODES = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad, "plain": torch.enable_grad}


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_identical_actions_in_any_mode_and_order(variant):
    cfg = small_config(variant)
    model = random_model(cfg, seed=1)
    assert not any(p.requires_grad for p in model.parameters())
    images, masks, tokens, token_mask, state, noise = random_inputs(cfg, cameras=(True, False, True))
    results = []
    # every mode after every other, through sample_actions and through the three stages with mixed modes
    for first, second in [("inference_mode", "plain"), ("plain", "no_grad"), ("no_grad", "inference_mode"),
                          ("plain", "inference_mode"), ("inference_mode", "no_grad")]:
        with MODES[first]():
            results.append((first, model.sample_actions(images, masks, tokens, token_mask, state, noise=noise,
                                                        num_steps=3)))
            image_tokens = model.embed_images(images, masks)
        with MODES[second]():
            cache = model.build_cache(image_tokens, tokens, token_mask, state)
        with MODES[first]():
            results.append((first, model.denoise(cache, noise, num_steps=3)))
        with MODES[second]():
            results.append((second, model.denoise(model.encode(images, masks, tokens, token_mask, state), noise, 3)))
    for mode, actions in results:
        assert torch.equal(actions, results[0][1])
        assert actions.grad_fn is None and not actions.requires_grad
        if mode != "inference_mode":
            assert not actions.is_inference()  # an ordinary tensor: the caller may modify it in place
            actions += 0  # raises for an inference tensor outside inference mode


def test_no_graph_even_with_trainable_parameters():
    """A user who turns requires_grad back on (e.g. to fine-tune) still gets no graph from the inference API."""
    cfg = small_config("pi05")
    model = random_model(cfg, seed=2).requires_grad_(True)
    inputs = random_inputs(cfg)
    actions = model.sample_actions(*inputs[:5], noise=inputs[5], num_steps=2)
    assert actions.grad_fn is None and not actions.requires_grad
    steps = model.step_conditioning(2)
    assert all(m.grad_fn is None for m in steps[0].layer_mods[0][0])


def test_step_conditioning_cache_is_cleared_through_the_public_method():
    cfg = small_config("pi0")
    model = random_model(cfg, seed=3)
    inputs = random_inputs(cfg)
    before = model.sample_actions(*inputs[:5], noise=inputs[5], num_steps=2)
    first = model.step_conditioning(2)
    assert model.step_conditioning(2) is first  # cached
    with torch.no_grad():
        model.action_time_mlp_in.bias.add_(0.5)  # weights changed in place: the cached conditioning is now stale
    model.clear_step_conditioning()
    assert model.step_conditioning(2) is not first
    after = model.sample_actions(*inputs[:5], noise=inputs[5], num_steps=2)
    assert not torch.equal(before, after)
