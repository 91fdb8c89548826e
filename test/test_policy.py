"""Policy: numpy observation -> ActionChunk through the real (tiny, random) engine."""
import numpy as np
import pytest
import torch

from turbopi_ros.model.checkpoint import random_model, save_checkpoint
from turbopi_ros.model.config import ModelConfig
from turbopi_ros.policy.loading import load_policy
from turbopi_ros.policy.policy import STAGES, Observation, ObservationError, Policy
from turbopi_ros.policy.tokenizer import ByteTokenizer, PaligemmaTokenizer
from turbopi_ros.policy.transforms import NormStats, normalize, unnormalize

N_JOINTS = 4


def _stats(dim=32, seed=0):
    rng = np.random.default_rng(seed)
    return NormStats(mean=rng.normal(size=dim), std=rng.uniform(0.5, 2, size=dim), q01=-rng.uniform(1, 2, size=dim),
                     q99=rng.uniform(1, 2, size=dim))


def _policy(preset="tiny", **kwargs):
    model = random_model(ModelConfig.preset(preset), seed=1)
    tok = ByteTokenizer(model.config.vlm.vocab_size, model.config.max_token_len)
    kwargs.setdefault("norm_stats", {"state": _stats(seed=1), "actions": _stats(seed=2)})
    return Policy(model, tokenizer=tok, action_dims=N_JOINTS, seed=7, **kwargs)


def _obs(**overrides):
    rng = np.random.default_rng(3)
    obs = dict(images={"base_0_rgb": rng.integers(0, 256, (120, 160, 3), dtype=np.uint8),
                       "left_wrist_0_rgb": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)},
               state=np.array([0.1, -0.2, 0.3, 0.05]), prompt="pick up the cup", stamp=42.5)
    obs.update(overrides)
    return Observation(**obs)


@pytest.mark.parametrize("preset", ["tiny", "tiny_pi05"])
def test_infer_equals_the_engine_with_openpi_pre_and_post_processing(preset):
    policy = _policy(preset)
    obs = _obs()
    chunk = policy.infer(obs)
    assert chunk.actions.shape == (50, N_JOINTS) and chunk.stamp == 42.5
    assert set(chunk.timings) == set(STAGES) | {"total"} and all(v > 0 for v in chunk.timings.values())
    # the same computation by hand: preprocess, engine with the policy's noise, unnormalize, first N dims
    images, masks, tokens, token_mask, state_t, _ = policy.preprocess(obs)
    assert masks.tolist() == [[True, True, False]]
    quantile = preset == "tiny_pi05"
    assert np.allclose(state_t[0, :N_JOINTS].numpy(), normalize(obs.state, policy.norm_stats["state"], quantile))
    noise = policy.model.sample_noise(1, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        raw = policy.model.sample_actions(images, masks, tokens, token_mask, state_t, noise=noise)[0].numpy()
    expected = unnormalize(raw, policy.norm_stats["actions"], quantile)[:, :N_JOINTS]
    assert np.allclose(chunk.actions, expected, atol=1e-5)


def test_pi05_puts_the_normalized_state_in_the_prompt():
    policy = _policy("tiny_pi05")
    a = policy.preprocess(_obs())[2]
    b = policy.preprocess(_obs(state=np.array([0.9, -0.2, 0.3, 0.05])))[2]
    assert not torch.equal(a, b)
    pi0 = _policy("tiny")
    assert torch.equal(pi0.preprocess(_obs())[2], pi0.preprocess(_obs(state=np.array([0.9, -0.2, 0.3, 0.05])))[2])


def test_fresh_noise_each_call():
    policy = _policy()
    assert not np.allclose(policy.infer(_obs()).actions, policy.infer(_obs()).actions)


def test_delta_actions_and_limits():
    base = _policy(norm_stats=None)
    raw = base.infer(_obs()).actions
    delta = _policy(norm_stats=None, delta_mask=[True, False, True, False])
    out = delta.infer(_obs()).actions
    assert np.allclose(out, raw + np.array([0.1, 0.0, 0.3, 0.0]), atol=1e-6)
    clamped = _policy(norm_stats=None, lower_limits=[-0.01] * 4, upper_limits=[0.01] * 4).infer(_obs())
    assert np.all(np.abs(clamped.actions) <= 0.01) and clamped.clamped > 0


@pytest.mark.parametrize("change,message", [
    (dict(state=np.array([0.1, np.nan, 0.0, 0.0])), "state has non-finite values at \\[1\\]"),
    (dict(prompt="  "), "prompt is empty"),
    (dict(images={"front_cam": np.zeros((8, 8, 3), np.uint8)}), "not model image slots"),
    (dict(images={"base_0_rgb": np.zeros((8, 8), np.uint8)}), "camera 'base_0_rgb': expected uint8 \\[H, W, 3\\]"),
    (dict(state=np.zeros(40)), "at most 32 values"),
])
def test_bad_observations_are_refused(change, message):
    with pytest.raises(ObservationError, match=message):
        _policy().infer(_obs(**change))


def test_configuration_errors():
    with pytest.raises(ValueError, match="3 lower limits for 4 action joints"):
        _policy(lower_limits=[0, 0, 0])
    with pytest.raises(ValueError, match="lower limits exceed upper"):
        _policy(lower_limits=[1] * 4, upper_limits=[0] * 4)
    with pytest.raises(ValueError, match="model.tokenizer is required"):
        load_policy(checkpoint="/nonexistent", preset="tiny")


def _sentencepiece(directory):
    """A tiny SentencePiece model laid out like PaliGemma's (<pad>=0, <eos>=1, <bos>=2)."""
    import sentencepiece

    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(["pick up the cup", "open the drawer", "Task: wipe, State: 1 2 3;", "Action: go"] * 30))
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(directory / "sp"), vocab_size=60,
                                             model_type="bpe", pad_id=0, eos_id=1, bos_id=2, unk_id=3,
                                             user_defined_symbols=["\n"], add_dummy_prefix=False, minloglevel=2)
    return directory / "sp.model"


@pytest.mark.parametrize("preset", ["tiny", "tiny_pi05"])
def test_from_an_openpi_checkpoint_directory(tmp_path, preset):
    """What the node does with a real checkpoint: weights and config.json from the directory, the norm stats found
    in assets/<asset_id>/, the SentencePiece tokenizer file, in the variant's prompt format."""
    import json

    model = random_model(ModelConfig.preset(preset), seed=5)
    ckpt = save_checkpoint(model, tmp_path / "ckpt")
    stats = {"state": _stats(seed=3), "actions": _stats(seed=4)}
    (ckpt / "assets" / "my_robot").mkdir(parents=True)
    (ckpt / "assets" / "my_robot" / "norm_stats.json").write_text(json.dumps({"norm_stats": {
        k: {f: getattr(v, f).tolist() for f in ("mean", "std", "q01", "q99")} for k, v in stats.items()}}))
    sp_path = _sentencepiece(tmp_path)
    policy = load_policy(checkpoint=str(ckpt), tokenizer=str(sp_path), seed=7, action_dims=N_JOINTS)
    obs = _obs()
    chunk = policy.infer(obs)

    quantile = preset == "tiny_pi05"
    cfg = model.config
    state = normalize(obs.state, stats["state"], quantile)
    tokens, mask = PaligemmaTokenizer(sp_path, cfg.max_token_len, cfg.variant).encode(
        obs.prompt, state=state if quantile else None)
    images, masks, got_tokens, got_mask, state_t, _ = policy.preprocess(obs)
    assert got_tokens[0].tolist() == tokens.tolist() and got_mask[0].tolist() == mask.tolist()
    assert np.allclose(state_t[0, :N_JOINTS].numpy(), state)
    noise = model.sample_noise(1, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        raw = model.sample_actions(images, masks, got_tokens, got_mask, state_t, noise=noise)[0].numpy()
    assert np.allclose(chunk.actions, unnormalize(raw, stats["actions"], quantile)[:, :N_JOINTS], atol=1e-5)
