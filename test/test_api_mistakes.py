"""The Python API (Policy, PI0Model, the checkpoint and config helpers) given a caller's mistake or an unusual input:
a clear error naming what was wrong and what was expected, never a silent wrong answer or a crash deep inside torch."""
import threading

import numpy as np
import pytest
import torch

from turbopi_ros.model.checkpoint import load_model, random_model, save_checkpoint
from turbopi_ros.model.config import ModelConfig
from turbopi_ros.policy.policy import Observation, ObservationError, Policy
from turbopi_ros.policy.tokenizer import ByteTokenizer
from turbopi_ros.policy.transforms import NormStats

N_JOINTS = 4


@pytest.fixture(scope="module")
def model():
    return random_model("tiny", seed=1)


def _policy(model, **kwargs):
    tok = ByteTokenizer(model.config.vlm.vocab_size, model.config.max_token_len)
    kwargs.setdefault("action_dims", N_JOINTS)
    return Policy(model, tokenizer=tok, seed=7, num_steps=2, **kwargs)


def _obs(seed=3, **overrides):
    rng = np.random.default_rng(seed)
    obs = dict(images={"base_0_rgb": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)},
               state=rng.normal(size=N_JOINTS), prompt="pick up the cup")
    obs.update(overrides)
    return Observation(**obs)


# --- Policy.infer from two threads ---------------------------------------------------------------------------------
def test_two_threads_running_a_graph_policy_each_get_their_own_actions(model):
    """With graphs (cuda_graph=True on CUDA; here their CPU twin) every call copies its inputs into one set of static
    buffers and replays: two threads' calls interleaved used the other's inputs and returned its actions."""
    policy = _policy(model, preprocess_threads=1)
    policy.use_graphs(static_replay_on_cpu=True)
    observations, noises = [_obs(seed=s) for s in (1, 2)], [np.random.default_rng(s).normal(size=(50, 32))
                                                             for s in (1, 2)]
    expected = [policy.run(policy.prepare(o), noise=n).actions for o, n in zip(observations, noises)]
    # make the interleaving certain: each replay waits (at most 2 s) for the other thread to reach its replay
    barrier = threading.Barrier(2)
    for entries in (policy.denoiser._entries, policy.encoder._entries):
        for key, (replay, *rest) in list(entries.items()):
            def waiting(replay=replay):
                try:
                    barrier.wait(timeout=2)
                except threading.BrokenBarrierError:
                    pass
                replay()
            entries[key] = (waiting, *rest)
    out = [None, None]

    def infer(i):
        out[i] = policy.run(policy.prepare(observations[i]), noise=noises[i]).actions

    threads = [threading.Thread(target=infer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(out, expected):
        np.testing.assert_allclose(got, want, atol=1e-6)


# --- PI0Model.sample_actions -----------------------------------------------------------------------------------------
def _engine_inputs(model):
    policy = _policy(model)
    images, masks, tokens, token_mask, state, _ = policy.preprocess(_obs())
    noise = torch.randn(1, 50, 32, generator=torch.Generator().manual_seed(0))
    return images, masks, tokens, token_mask, state, noise


@pytest.mark.parametrize("path", ["fast", "reference"])
def test_sample_actions_refuses_raw_uint8_pixels(model, path):
    """images must be floats in [-1, 1]: uint8 camera pixels (0..255) were cast to float and ran, silently wrong."""
    images, masks, tokens, token_mask, state, noise = _engine_inputs(model)
    pixels = ((images + 1) * 127.5).round().to(torch.uint8)
    with pytest.raises(ValueError, match=r"images must be floating point in \[-1, 1\].*uint8"):
        model.sample_actions(pixels, masks, tokens, token_mask, state, noise=noise, num_steps=2, path=path)


def test_reference_path_checks_its_inputs_like_the_fast_path(model):
    """path="reference": a wrong noise shape gave a torch shape error inside reference.py (pi0.5: a chunk of the
    noise's length, silently), integer masks a torch.where error inside gemma.py."""
    images, masks, tokens, token_mask, state, noise = _engine_inputs(model)
    with pytest.raises(ValueError, match=r"noise must be \[1, 50, 32\], got \[1, 10, 32\]"):
        model.sample_actions(images, masks, tokens, token_mask, state, noise=noise[:, :10], num_steps=2,
                             path="reference")
    pi05 = random_model("tiny_pi05", seed=1)
    tok = ByteTokenizer(pi05.config.vlm.vocab_size, pi05.config.max_token_len)
    inputs = Policy(pi05, tokenizer=tok, action_dims=N_JOINTS).preprocess(_obs())[:5]
    with pytest.raises(ValueError, match=r"noise must be \[1, 50, 32\], got \[1, 10, 32\]"):
        pi05.sample_actions(*inputs, noise=noise[:, :10], num_steps=2, path="reference")
    with pytest.raises(ValueError, match="image_masks must be bool"):
        model.sample_actions(images, masks.long(), tokens, token_mask, state, noise=noise, num_steps=2,
                             path="reference")


# --- model config JSON ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("section,key,value,message", [
    (None, "action_dim", "32", "action_dim must be a positive integer, got '32'"),
    (None, "action_horizon", 50.5, "action_horizon must be a positive integer, got 50.5"),
    ("vision", "num_heads", 0, "vision.num_heads must be a positive integer, got 0"),
    ("vision", "patch_size", 0, "vision.patch_size must be a positive integer, got 0"),
    ("vision", "image_size", 0, "vision.image_size must be a positive integer, got 0"),
    ("vlm", "num_kv_heads", 0, "vlm.num_kv_heads must be a positive integer, got 0"),
    ("vlm", "width", "64", "vlm.width must be a positive integer, got '64'"),
    ("vlm", "vocab_size", 0, "vlm.vocab_size must be a positive integer, got 0"),
])
def test_model_config_with_a_wrong_type_or_size_is_named(section, key, value, message):
    """A model config JSON with "32" (a string) or a zero size: ZeroDivisionError in __post_init__, or a TypeError
    from torch.empty when the model was built, instead of a ValueError naming the field."""
    d = ModelConfig.preset("tiny").to_dict()
    (d[section] if section else d)[key] = value
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(".", r"\.")):
        ModelConfig.from_dict(d)


def test_save_checkpoint_then_load_model_keeps_rope_theta(tmp_path):
    """to_dict dropped rope_theta (which from_dict accepts): a saved model came back with rope_theta 10000, a
    different model, silently."""
    d = ModelConfig.preset("tiny").to_dict()
    d["vlm"]["rope_theta"] = d["expert"]["rope_theta"] = 500.0
    cfg = ModelConfig.from_dict(d)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    loaded = load_model(save_checkpoint(random_model(cfg, seed=2), tmp_path / "ckpt"))
    assert loaded.config.vlm.rope_theta == 500.0 and loaded.config.expert.rope_theta == 500.0


# --- Policy settings --------------------------------------------------------------------------------------------------
def test_nan_joint_limits_are_refused(model):
    """lower_limits with a NaN (a joint without limits read as nan): np.clip made every action of that joint NaN
    and infer returned them."""
    with pytest.raises(ValueError, match=r"lower limits must be numbers or ±inf: NaN at \[1\]"):
        _policy(model, lower_limits=[-1.0, np.nan, -1.0, -1.0])
    with pytest.raises(ValueError, match=r"upper limits must be a list of 4 values, got shape \[4, 2\]"):
        _policy(model, upper_limits=np.ones((4, 2)))


def test_action_norm_stats_wider_than_the_model_are_refused_when_the_policy_is_made(model):
    """norm_stats["actions"] for 40 dims on a 32-dim model without a robot adapter was accepted (with one it is
    refused); every infer then ran the model and failed in unnormalize."""
    stats = {"state": NormStats(mean=np.zeros(4), std=np.ones(4)),
             "actions": NormStats(mean=np.zeros(40), std=np.ones(40))}
    with pytest.raises(ValueError, match=r"norm stats \[actions\] have 40 values, more than the model's 32"):
        _policy(model, norm_stats=stats)


def test_a_bad_delta_mask_is_refused_when_the_policy_is_made(model):
    """delta_mask [1, 0, 1, 0] or one longer than the action joints was accepted; every infer then ran the model and
    failed in absolute_actions."""
    with pytest.raises(ValueError, match="delta mask must be a list of bools, got int64"):
        _policy(model, delta_mask=[1, 0, 1, 0])
    with pytest.raises(ValueError, match="delta mask has 6 entries, more than the 4 action joints"):
        _policy(model, delta_mask=[True] * 6)


def test_a_state_shorter_than_the_delta_mask_is_refused_by_prepare(model):
    """A state of 2 values with a 4-entry delta mask passed prepare; run then ran the model and raised a ValueError
    from absolute_actions (not an ObservationError: the node's per-observation handling does not catch it as such)."""
    policy = _policy(model, delta_mask=[True] * 4)
    with pytest.raises(ObservationError, match="state has 2 values but the delta mask has 4 entries"):
        policy.prepare(_obs(state=np.zeros(2)))


@pytest.mark.parametrize("num_steps", [0, -1, 2.5])
def test_num_steps_is_checked_when_the_policy_is_made(model, num_steps):
    """num_steps 0 or -1 was accepted and every infer failed in the sampler; 2.5 silently ran 2 steps."""
    tok = ByteTokenizer(model.config.vlm.vocab_size, model.config.max_token_len)
    with pytest.raises(ValueError, match=f"num_steps must be an integer >= 1, got {num_steps}"):
        Policy(model, tokenizer=tok, num_steps=num_steps)


# --- Observation and run's arguments -------------------------------------------------------------------------------
@pytest.mark.parametrize("images", [[np.zeros((8, 8, 3), np.uint8)], None])
def test_images_that_are_not_a_mapping_are_named(model, images):
    """images as a list (or None): TypeError "unhashable type: 'numpy.ndarray'" from set(obs.images)."""
    with pytest.raises(ObservationError, match="images must be a dict of camera slot -> image"):
        _policy(model).prepare(_obs(images=images))


def test_non_finite_noise_is_named(model):
    """A NaN in the given noise was reported as "the model produced non-finite actions"."""
    policy = _policy(model)
    noise = np.zeros((50, 32))
    noise[3, 5] = np.nan
    with pytest.raises(ValueError, match="noise must be finite"):
        policy.run(policy.prepare(_obs()), noise=noise)
