"""Real-time chunking, the policy half (policy/rtc_target.py, Policy.infer with a previous chunk)."""
import math

import numpy as np
import pytest

from turbopi_ros.model.checkpoint import random_model
from turbopi_ros.model.config import ModelConfig
from turbopi_ros.policy.policy import STAGES, Observation, Policy
from turbopi_ros.policy.chunking import Chunk
from turbopi_ros.policy.rtc_target import PreviousChunk, guidance_arguments, guidance_target, prefix_weights, resample
from turbopi_ros.policy.tokenizer import ByteTokenizer
from turbopi_ros.policy.transforms import NormStats

from engine_helpers import small_config

RATE = 50.0


def _eq5(H, d, s):
    """Eq. 5 of arXiv 2506.07339 written out per index (with H - s taking precedence over d, as the authors' code)."""
    out = []
    end = max(H - s, 0)
    d = min(d, end)
    for i in range(H):
        if i < d:
            out.append(1.0)
        elif i < end:
            c = (end - i) / (end - d + 1)
            out.append(c * (math.exp(c) - 1) / (math.e - 1))
        else:
            out.append(0.0)
    return np.array(out)


@pytest.mark.parametrize("H,d,s", [(10, 2, 4), (50, 5, 10), (50, 0, 10), (50, 5, 0), (8, 6, 4), (8, 3, 8),
                                   (8, 3, 20), (8, 0, 0), (1, 1, 0)])
def test_prefix_weights_are_the_papers_soft_mask(H, d, s):
    w = prefix_weights(H, d, s)
    assert w.shape == (H,)
    assert np.allclose(w, _eq5(H, d, s), rtol=0, atol=1e-15)
    assert np.all(np.diff(w) <= 0) and np.all((w >= 0) & (w <= 1))


def test_prefix_weights_example():
    # the authors' example (start 2, end 6, total 10), linear ramp 4/5 .. 1/5 before the exponential shaping
    c = np.array([4, 3, 2, 1]) / 5
    assert np.allclose(prefix_weights(10, 2, 4), [1, 1, *(c * np.expm1(c) / (np.e - 1)), 0, 0, 0, 0])


@pytest.mark.parametrize("args,name", [((10, -1, 2), "delay_steps"), ((10, 2, -3), "execution_horizon"),
                                       ((10, 2.5, 2), "delay_steps"), ((10, True, 2), "delay_steps")])
def test_prefix_weights_refuse_bad_counts(args, name):
    with pytest.raises(ValueError, match=f"{name} must be an integer >= 0"):
        prefix_weights(*args)


def test_resample_at_the_new_action_times():
    H = 6
    actions = 0.5 + 0.25 * np.arange(H)[:, None] * np.array([[1.0, -2.0]])  # linear in time: interpolation is exact
    prev = PreviousChunk(actions=actions, stamp=10.0, rate_hz=RATE)
    on_grid, valid = resample(prev, 10.0 + 2 / RATE, H)  # two actions later: a shifted slice
    assert valid.tolist() == [True] * 4 + [False] * 2
    assert np.array_equal(on_grid[:4], actions[2:]) and np.all(on_grid[4:] == 0)
    off_grid, valid = resample(prev, 10.0 + 1.3 / RATE, H)
    assert valid.tolist() == [True] * 4 + [False] * 2  # 1.3 + 4 = 5.3 > 5: past the last action
    assert np.allclose(off_grid[:4], 0.5 + 0.25 * (np.arange(4) + 1.3)[:, None] * np.array([[1.0, -2.0]]))
    early, valid = resample(prev, 10.0 - 1.5 / RATE, H)  # before the first action: the first action (Chunk.at)
    assert valid.all() and np.array_equal(early[:2], actions[[0, 0]])
    assert np.allclose(early[2:], 0.5 + 0.25 * (np.arange(2, 6) - 1.5)[:, None] * np.array([[1.0, -2.0]]))
    with pytest.raises(ValueError, match="rate_hz must be positive"):
        resample(PreviousChunk(actions, 10.0, 0.0), 10.0, H)
    with pytest.raises(ValueError, match="non-finite"):
        resample(PreviousChunk(np.full((3, 2), np.nan), 10.0, RATE), 10.0, H)
    with pytest.raises(ValueError, match=r"\[H, joints\]"):
        resample(PreviousChunk(np.zeros(3), 10.0, RATE), 10.0, H)


def _stats(dim, seed):
    rng = np.random.default_rng(seed)
    return NormStats(mean=rng.normal(size=dim), std=rng.uniform(0.5, 2, size=dim), q01=-rng.uniform(1, 2, size=dim),
                     q99=rng.uniform(1, 2, size=dim))


def _small_policy(variant, **kwargs):
    cfg = small_config(variant, horizon=12, action_dim=6)
    return Policy(random_model(cfg, seed=0), tokenizer=ByteTokenizer(cfg.vlm.vocab_size, cfg.max_token_len),
                  action_dims=4, **kwargs)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])  # z-score / quantile action stats
@pytest.mark.parametrize("stats_dims", [6, 3])  # stats for every model dim, or fewer than the robot's 4
def test_target_is_what_the_model_must_output_at_the_new_state(variant, stats_dims):
    """Round trip: the previous chunk (robot space, deltas added to the OLD state) resampled and mapped into model
    space for the NEW state; postprocessing that target at the new state gives back the previous chunk's actions."""
    policy = _small_policy(variant, norm_stats={"state": _stats(6, 1), "actions": _stats(stats_dims, 2)},
                           delta_mask=[True, False, True])
    H, D = 12, 6
    rng = np.random.default_rng(0)
    old_state, new_state = rng.normal(size=4), rng.normal(size=4)
    previous_actions, _ = policy.postprocess(rng.normal(size=(H, D)), old_state)
    prev = PreviousChunk(actions=previous_actions, stamp=3.0, rate_hz=RATE)
    shift = 3
    target = policy.guidance(prev, 3.0 + shift / RATE, new_state, delay_steps=2, execution_horizon=shift)
    assert target.target.shape == target.weights.shape == (H, D)
    back, _ = policy.postprocess(target.target, new_state)
    assert np.allclose(back[:H - shift], previous_actions[shift:], atol=1e-9)
    expected_w = prefix_weights(H, 2, shift)
    assert np.array_equal(target.weights[:, :4], np.repeat(expected_w[:, None], 4, axis=1))
    assert np.all(target.weights[:, 4:] == 0) and np.all(target.target[:, 4:] == 0)  # dims the robot does not use
    assert target.frozen.tolist() == [True, True] + [False] * (H - 2)
    # a larger real shift than execution_horizon says: the actions past the previous chunk's end get weight 0
    late = policy.guidance(prev, 3.0 + 8 / RATE, new_state, delay_steps=2, execution_horizon=shift)
    assert np.all(late.weights[H - 8:] == 0) and np.all(late.weights[:H - 8] == target.weights[:H - 8])


def test_identity_normalization_without_stats():
    policy = _small_policy("pi0", norm_stats=None)
    actions = np.random.default_rng(1).normal(size=(12, 4))
    target = guidance_target(PreviousChunk(actions, 0.0, RATE), stamp=0.0, state=np.zeros(4), horizon=12,
                             action_dim=6, delay_steps=3, execution_horizon=0)
    assert np.array_equal(target.target[:, :4], actions)
    assert np.array_equal(policy.guidance(PreviousChunk(actions, 0.0, RATE), 0.0, np.zeros(4), 3, 0).target,
                          target.target)
    with pytest.raises(ValueError, match=r"previous chunk actions must be \[H, 4\]"):
        policy.guidance(PreviousChunk(actions[:, :3], 0.0, RATE), 0.0, np.zeros(4), 3, 0)


# --- Policy.infer with a previous chunk, on the tiny random-weight preset -------------------------------------------
N_JOINTS = 4


def _tiny_policy(**kwargs):
    model = random_model(ModelConfig.preset("tiny"), seed=1)
    return Policy(model, tokenizer=ByteTokenizer(model.config.vlm.vocab_size, model.config.max_token_len),
                  action_dims=N_JOINTS, seed=7, **kwargs)


def _obs(state_offset=0.0, stamp=0.0, image_seed=3):
    rng = np.random.default_rng(image_seed)
    return Observation(images={"base_0_rgb": rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)},
                       state=np.array([0.1, -0.2, 0.3, 0.05]) + state_offset, prompt="pick up the cup", stamp=stamp)


def test_no_previous_chunk_is_bit_identical_and_zero_weights_too():
    plain, explicit, zero = _tiny_policy(), _tiny_policy(), _tiny_policy()
    first = plain.infer(_obs())
    assert np.array_equal(explicit.infer(_obs(), previous=None).actions, first.actions)
    assert first.guidance_error is None and set(first.timings) == set(STAGES) | {"total"}
    # a previous chunk that covers nothing (execution_horizon >= H): every weight 0, the guided path, same actions
    guided = zero.infer(_obs(), previous=PreviousChunk(first.actions, -5.0, RATE), delay_steps=0,
                        execution_horizon=50)
    assert np.array_equal(guided.actions, first.actions)


@pytest.mark.parametrize("stats", [False, True])
def test_rtc_brings_the_first_actions_onto_the_previous_chunk(stats):
    """The issue's bar on the tiny model: a new chunk (fresh noise, a slightly different observation, 10 actions
    later) with RTC at beta = 5 has its first d actions at least 3x closer to the previous chunk at the same times
    than without. Same noise for both (two policies with one seed), robot space."""
    kwargs = dict(norm_stats={"state": _stats(32, 1), "actions": _stats(32, 2)},
                  delta_mask=[True, True, False, False]) if stats else {}
    plain, guided = _tiny_policy(**kwargs), _tiny_policy(**kwargs)
    previous = plain.infer(_obs())
    guided.infer(_obs())  # keep the two generators in step
    shift, d = 10, 4
    new_obs = _obs(state_offset=0.03, stamp=shift / RATE, image_seed=4)
    free = plain.infer(new_obs)
    chunk = guided.infer(new_obs, previous=PreviousChunk(previous.actions, previous.stamp, RATE), delay_steps=d,
                         execution_horizon=shift, max_guidance=5.0)
    reference = previous.actions[shift:shift + d]
    before = np.sqrt(np.mean((free.actions[:d] - reference) ** 2))
    after = np.sqrt(np.mean((chunk.actions[:d] - reference) ** 2))
    print(f"tiny pi0{' with norm stats and delta dims' if stats else ''}: first-{d} RMS error vs the previous chunk "
          f"{before:.4f} without RTC, {after:.4f} with: {before / after:.0f}x; guidance_error "
          f"{chunk.guidance_error:.4f}")
    assert after * 3 < before
    assert chunk.timings["denoise"] > 0 and set(chunk.timings) == set(STAGES) | {"total"}
    if not stats:  # model space is robot space
        assert chunk.guidance_error == pytest.approx(after, rel=1e-5)
    assert chunk.guidance_error is not None and chunk.guidance_error > 0


def test_bad_rtc_arguments_are_refused():
    policy = _tiny_policy()
    prev = PreviousChunk(np.zeros((50, N_JOINTS)), 0.0, RATE)
    with pytest.raises(ValueError, match="delay_steps must be an integer >= 0"):
        policy.infer(_obs(), previous=prev, delay_steps=-2, execution_horizon=5)
    with pytest.raises(ValueError, match=r"previous chunk actions must be \[H, 4\]"):
        policy.infer(_obs(), previous=PreviousChunk(np.zeros((50, 3)), 0.0, RATE), delay_steps=2)
    with pytest.raises(ValueError, match="max_guidance"):
        policy.infer(_obs(), previous=prev, delay_steps=2, execution_horizon=5, max_guidance=float("nan"))


def test_guidance_delay_is_never_negative():
    """Inputs stamped ahead of the node's clock (accepted up to max_observation_age_s) give chunks a negative latency:
    d is 0 then, not a negative count that Policy.infer refuses."""
    current = Chunk(np.zeros((50, N_JOINTS)), 100.0, RATE)
    args = guidance_arguments(current, 100.1, [-0.08, -0.07], RATE, 5.0)
    assert args["delay_steps"] == 0 and args["execution_horizon"] == round(0.1 * RATE)
    assert guidance_arguments(current, 100.1, [0.03, -0.2], RATE, 5.0)["delay_steps"] == math.ceil(0.03 * RATE)
    prefix_weights(50, args["delay_steps"], args["execution_horizon"])  # accepted


@pytest.mark.parametrize("graphs", [False, True])
@pytest.mark.parametrize("beta", [float("nan"), float("inf"), -1.0])
def test_a_beta_that_is_not_a_finite_number_at_least_0_is_refused_by_name(graphs, beta):
    """beta = inf (no clip, as one may read the paper) made the first step's weight infinite: every action NaN, then
    "the model produced non-finite actions"; with graphs, NaN or inf also went into the guided graph's key (NaN: a
    new capture at every call)."""
    policy = _tiny_policy()
    if graphs:
        policy.use_graphs(static_replay_on_cpu=True)
    prev = PreviousChunk(np.zeros((50, N_JOINTS)), 0.0, RATE)
    with pytest.raises(ValueError, match=r"max_guidance \(beta\) must be a finite number >= 0"):
        policy.infer(_obs(), previous=prev, delay_steps=2, execution_horizon=5, max_guidance=beta)
    if graphs:
        assert policy.guided_denoiser.num_graphs == 0  # refused before any capture
