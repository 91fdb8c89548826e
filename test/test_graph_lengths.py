"""Never capture while the robot moves: every prompt length is enumerated and captured before ready, and a run over
changing pi0.5 states then captures nothing. Runs on CPU: the graphs' bookkeeping and static-buffer protocol are
device-independent (cuda_graph.GraphPool with static_replay_on_cpu); only capture and replay are CUDA calls."""
import numpy as np
import pytest
import torch

from turbopi_ros.model.cuda_graph import (CudaGraphDenoiser, CudaGraphEncoder, GraphBook, GraphPool,
                                          cached_lengths)
from turbopi_ros.policy.loading import load_policy
from turbopi_ros.policy.policy import Observation, given_noise_on
from turbopi_ros.policy.prompt_lengths import prompt_lengths
from turbopi_ros.policy.stage_clock import StageClock
from turbopi_ros.policy.tokenizer import ByteTokenizer

from engine_helpers import model_for, random_inputs, small_config

PROMPT = "pick up the cube"


def test_pi05_prompt_lengths_cover_every_state():
    tok = ByteTokenizer(vocab_size=257152, max_len=200, variant="pi05")
    lengths = prompt_lengths(tok, PROMPT, state_dims=7)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        state = np.clip(rng.normal(0, 0.6, 7), -1.5, 1.5)
        state[rng.random(7) < 0.2] = rng.choice([-1.0, -0.99, 0.0, 0.999, 1.0])
        seen.add(int(tok.encode(PROMPT, state)[1].sum()))
    assert seen <= set(lengths)
    # bins 0..9 print one digit, 100..255 three: 7 values give 2 * 7 + 1 lengths, from all-short to all-long
    assert lengths == list(range(lengths[0], lengths[0] + 15))
    assert int(tok.encode(PROMPT, np.full(7, -0.999))[1].sum()) == lengths[0]
    assert int(tok.encode(PROMPT, np.full(7, 0.999))[1].sum()) == lengths[-1]


def test_prompt_lengths_pi0_and_truncation():
    tok = ByteTokenizer(vocab_size=257152, max_len=48, variant="pi0")
    assert prompt_lengths(tok, PROMPT) == [int(tok.encode(PROMPT)[1].sum())]
    short = ByteTokenizer(vocab_size=257152, max_len=40, variant="pi05")  # cut off inside the state text
    assert prompt_lengths(short, PROMPT, state_dims=7) == [40]
    with pytest.raises(ValueError, match="state_dims"):
        prompt_lengths(tok, PROMPT, state_dims=0)


def test_graph_book_counts_captures_after_ready():
    book = GraphBook()
    made = []
    assert book.entry("a", lambda: made.append("a") or "A") == "A"
    assert book.entry("a", lambda: made.append("again")) == "A" and made == ["a"]
    book.mark_ready()
    book.entry("b", lambda: "B")
    s = book.stats
    assert (s.captures, s.captures_after_ready, s.ready) == (2, 1, True) and s.capture_s >= 0


def test_cached_lengths_and_refusals():
    cfg = small_config("pi0")
    assert cached_lengths(cfg, (1, 2), (3, 4)) == [2 * 16 + 4 + 1, 2 * 16 + 3 + 1, 16 + 4 + 1, 16 + 3 + 1]
    with pytest.raises(ValueError, match="max_token_len"):
        cached_lengths(cfg, (1,), (cfg.max_token_len + 1,))
    with pytest.raises(ValueError, match="CUDA device"):
        GraphPool("cpu")


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_static_replay_equals_eager_with_shared_buffers(variant):
    """Encoder and denoiser sharing one pool, lengths captured longest first: every length reuses the same K/V
    buffers, and replaying each (in any order, twice) gives the eager results."""
    cfg = small_config(variant)
    model = model_for(cfg)
    pool = GraphPool("cpu", static_replay_on_cpu=True)
    encoder, denoiser = CudaGraphEncoder(model, pool=pool), CudaGraphDenoiser(model, pool=pool)
    encoder.warm_up((2,), (3, 6, 9))
    denoiser.warm_up(cached_lengths(cfg, (2,), (3, 6, 9)), num_steps=4)
    pool.mark_ready()
    static_bytes = pool.stats.static_bytes
    assert pool.stats.captures == 1 + 3 + 3
    for valid in (6, 3, 9, 6):
        inputs = random_inputs(cfg, cameras=(True, False, True), valid_tokens=(valid,), seed=valid)
        with torch.inference_mode():
            eager = model.denoise(model.encode(*inputs[:5]), inputs[5], 4)
            graphed = denoiser(encoder.build_cache(encoder.embed_images(*inputs[:2]), *inputs[2:5]), inputs[5], 4)
        assert float((graphed - eager).abs().max()) <= 1e-5
    s = pool.stats
    assert s.captures == 7 and s.captures_after_ready == 0 and s.static_bytes == static_bytes


def test_changing_pi05_states_capture_nothing_after_warm_up():
    """A policy run whose pi0.5 state (and so prompt length) changes every observation: after warm_up_graphs no
    capture happens, and the actions equal the eager policy's. A new prompt afterwards does capture (the count can
    fail)."""
    kwargs = dict(checkpoint="random", preset="tiny_pi05", device="cpu", seed=3, action_dims=7, num_steps=3)
    eager = load_policy(**kwargs)
    graphed = load_policy(**kwargs)
    pool = GraphPool("cpu", static_replay_on_cpu=True)
    graphed.encoder = CudaGraphEncoder(graphed.model, pool=pool)
    graphed.denoiser = CudaGraphDenoiser(graphed.model, pool=pool)
    stats = graphed.warm_up_graphs(PROMPT, state_dims=7, camera_counts=(2,))
    warm = stats.captures
    assert stats.ready and warm == 1 + 2 * 15  # vision, and prefix + denoise for each of the 15 lengths
    rng = np.random.default_rng(1)
    images = {k: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for k in ("base_0_rgb", "left_wrist_0_rgb")}
    state, lengths = np.zeros(7), set()
    for i in range(12):
        state = np.clip(state + rng.normal(0, 0.4, 7), -1, 1)
        obs = Observation(images=images, state=state, prompt=PROMPT, stamp=float(i))
        lengths.add(int(graphed.preprocess(obs)[3].sum()))
        a, b = eager.infer(obs).actions, graphed.infer(obs).actions
        assert np.abs(a - b).max() <= 1e-5
    assert len(lengths) >= 3  # the prompt length did move
    assert graphed.graph_stats.captures == warm and graphed.graph_stats.captures_after_ready == 0
    longer = PROMPT + " and put it in the red bowl"  # 27 more tokens: beyond every captured length
    graphed.infer(Observation(images=images, state=state, prompt=longer, stamp=99.0))
    assert graphed.graph_stats.captures_after_ready == 2  # prefix and denoise of an unforeseen length


def test_use_graphs_on_cpu_and_pi05_without_the_state_in_its_prompt_has_one_length():
    """Policy.use_graphs(static_replay_on_cpu=True) is the policy's graphs on CPU (what the node's test-only hook
    switches on); a pi0.5 without the discrete state input writes pi0's prompt: one length whatever the state, and
    warm_up_graphs needs no state_dims."""
    kwargs = dict(checkpoint="random", preset="tiny_pi05", device="cpu", seed=3, action_dims=7, num_steps=2)
    policy = load_policy(discrete_state_input=False, **kwargs)
    assert policy.graph_stats is None
    policy.use_graphs(static_replay_on_cpu=True)
    stats = policy.warm_up_graphs(PROMPT, camera_counts=(1,))
    assert stats.ready and stats.captures == 1 + 2  # vision, prefix and denoise of the one length
    images = {"base_0_rgb": np.zeros((32, 32, 3), np.uint8)}
    for value in (-0.999, 0.0, 0.999):  # states whose pi0.5 prompt text would differ in length
        policy.infer(Observation(images=images, state=np.full(7, value), prompt=PROMPT, stamp=value))
    assert policy.graph_stats.captures == 3 and policy.graph_stats.captures_after_ready == 0
    with pytest.raises(ValueError, match="needs state_dims"):
        _graphed(kwargs).warm_up_graphs(PROMPT)  # with the state in the prompt


def _graphed(kwargs):
    policy = load_policy(**kwargs)
    policy.use_graphs(static_replay_on_cpu=True)
    return policy


def test_prompts_given_later_are_captured_before_ready_too():
    """model.warm_up_prompts: warm_up_graphs over several prompts captures the union of their lengths, so a switch to
    the later prompt while the state moves captures nothing; without it the same switch does capture."""
    kwargs = dict(checkpoint="random", preset="tiny_pi05", device="cpu", seed=3, action_dims=7, num_steps=2)
    later = PROMPT + " and put it in the red bowl"  # 27 more tokens: no length in common with PROMPT's
    rng = np.random.default_rng(2)
    images = {"base_0_rgb": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)}
    after = []
    for prompts in ([PROMPT], [PROMPT, later]):
        policy = load_policy(**kwargs)
        policy.use_graphs(static_replay_on_cpu=True)
        stats = policy.warm_up_graphs(prompts, state_dims=7, camera_counts=(1,))
        union = {n for p in prompts for n in prompt_lengths(policy.tokenizer, p, 7)}
        assert stats.captures == 1 + 2 * len(union)
        for i, value in enumerate((-0.9, 0.0, 0.9)):
            obs = Observation(images=images, state=np.full(7, value), prompt=later, stamp=float(i))
            policy.infer(obs)
        after.append(policy.graph_stats.captures_after_ready)
    assert after[0] > 0 and after[1] == 0


@pytest.mark.parametrize("preset", ["tiny", "tiny_pi05"])
@pytest.mark.parametrize("fused", [False, True])
def test_graphed_run_reads_no_device_value(preset, fused):
    """Vision, the prefix cache and the denoise are enqueued with no host wait between them: Policy.run keeps the
    masks and tokens the encoder decides on on the host. On the meta device every read of a device value raises,
    so the graphed stages run there only if none happens; given the masks on the device, the same stages raise
    (what the policy did before, waiting for vision to finish before it could launch the prefix)."""
    policy = load_policy(checkpoint="random", preset=preset, device="cpu", seed=3, action_dims=7, num_steps=2)
    policy.model.to("meta").use_fused(fused)
    policy.device = torch.device("meta")
    policy.use_graphs(static_replay_on_cpu=True)
    images = {k: np.zeros((32, 32, 3), np.uint8) for k in ("base_0_rgb", "right_wrist_0_rgb")}
    prepared = policy.prepare(Observation(images=images, state=np.zeros(7), prompt=PROMPT))
    noise = given_noise_on(np.zeros((policy.config.action_horizon, policy.config.action_dim), np.float32),
                           policy.config, policy.device)
    with torch.inference_mode():
        for _ in range(2):  # the capture, then a replay
            actions = policy._enqueue(policy._device_inputs(prepared, host_masks=True), StageClock(policy.device),
                                      noise, None, "fast")
        assert actions.device.type == "meta" and tuple(actions.shape) == (1, *noise.shape[1:])
        on_device = tuple(x.to("meta") for x in prepared.inputs)
        with pytest.raises(NotImplementedError, match="meta"):
            policy._enqueue(on_device, StageClock(policy.device), noise, None, "fast")


@pytest.mark.parametrize("fused", [False, True])
def test_rtc_guided_graphs_are_captured_before_ready_too(fused):
    """Real-time chunking on (rtc.enabled): warm_up_graphs with its beta captures the guided denoise of every cached
    length too, in the same pool and stats; a run guided by the previous chunk while the pi0.5 state (and prompt
    length) moves then captures nothing, and its chunks equal the eager guided policy's (the plain modules' also
    when the graphs run the fused kernels and their backwards). Without the guided warm-up the same run does capture
    (counted in captures_after_ready: the count can fail)."""
    from turbopi_ros.policy.rtc_target import PreviousChunk

    kwargs = dict(checkpoint="random", preset="tiny_pi05", device="cpu", seed=3, action_dims=7, num_steps=2)
    eager = load_policy(**kwargs)
    graphed, unwarmed = _graphed(kwargs), _graphed(kwargs)
    for policy in (graphed, unwarmed):
        policy.model.use_fused(fused)
    stats = graphed.warm_up_graphs(PROMPT, state_dims=7, camera_counts=(1,), guided=True)
    assert stats.captures == 1 + 3 * 15  # vision, and prefix, denoise and guided denoise for each of 15 lengths
    unwarmed.warm_up_graphs(PROMPT, state_dims=7, camera_counts=(1,))
    rng = np.random.default_rng(2)
    images = {"base_0_rgb": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)}
    state, lengths, previous = np.zeros(7), set(), {}
    for i in range(6):
        state = np.clip(state + rng.normal(0, 0.5, 7), -1, 1)
        obs = Observation(images=images, state=state, prompt=PROMPT, stamp=0.1 * i)  # the previous chunk still runs
        lengths.add(int(graphed.preprocess(obs)[3].sum()))
        noise = np.random.default_rng(i).standard_normal((eager.config.action_horizon, eager.config.action_dim))
        chunks = []
        for name, policy in (("eager", eager), ("graphed", graphed), ("unwarmed", unwarmed)):
            prev = previous.get(name)
            guided = dict(previous=PreviousChunk(prev.actions, prev.stamp, 50.0), delay_steps=2) if prev else {}
            chunk = policy.run(policy.prepare(obs), noise=noise.astype(np.float32), **guided)
            assert (chunk.guidance_error is not None) == bool(prev)  # guided from the second chunk on
            previous[name] = chunk
            chunks.append(chunk.actions)
        assert np.abs(chunks[0] - chunks[1]).max() <= 1e-5 and np.abs(chunks[0] - chunks[2]).max() <= 1e-5
    assert len(lengths) >= 3
    assert graphed.graph_stats.captures == stats.captures and graphed.graph_stats.captures_after_ready == 0
    assert unwarmed.graph_stats.captures_after_ready >= 3  # a guided graph for each new length, mid-run


def test_a_new_beta_at_run_time_captures_nothing():
    """rtc.max_guidance changed at run time: each guided step's time weight (from beta) is an input of the guided
    graph, so the graphs captured before ready serve the new beta, and the chunks equal the eager guided policy's at
    that beta. beta was part of the graph's key: each new value captured a full set of guided graphs mid-run (the
    robot moving), each kept in the pool for good."""
    from turbopi_ros.policy.rtc_target import PreviousChunk

    kwargs = dict(checkpoint="random", preset="tiny_pi05", device="cpu", seed=3, action_dims=7, num_steps=3)
    eager, graphed = load_policy(**kwargs), _graphed(kwargs)
    stats = graphed.warm_up_graphs(PROMPT, state_dims=7, camera_counts=(1,), guided=True)
    captured = stats.captures
    images = {"base_0_rgb": np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)}
    obs = Observation(images=images, state=np.full(7, 0.3), prompt=PROMPT, stamp=0.1)
    noise = np.random.default_rng(1).standard_normal((eager.config.action_horizon, eager.config.action_dim))
    first = eager.run(eager.prepare(obs), noise=noise.astype(np.float32))
    differences = []
    for beta in (0.5, 5.0, 20.0):
        guided = dict(previous=PreviousChunk(first.actions + 0.5, 0.05, 50.0), delay_steps=3, max_guidance=beta)
        chunks = [p.run(p.prepare(obs), noise=noise.astype(np.float32), **guided).actions for p in (eager, graphed)]
        assert np.abs(chunks[0] - chunks[1]).max() <= 1e-5, beta
        differences.append(chunks[1])
    assert np.abs(differences[0] - differences[2]).max() > 1e-3  # beta matters: the graphs did not keep the first
    assert graphed.graph_stats.captures == captured and graphed.graph_stats.captures_after_ready == 0
