"""The CUDA-graph denoise equals the eager one (runs where CUDA exists; skipped elsewhere)."""
import pytest
import torch

from turbopi_ros.model.checkpoint import random_model

from engine_helpers import random_inputs, small_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


@needs_cuda
@pytest.mark.parametrize("variant", ["pi0", "pi05"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_graph_replay_equals_eager(variant, dtype):
    from turbopi_ros.model.cuda_graph import CudaGraphDenoiser

    cfg = small_config(variant)
    model = random_model(cfg, device="cuda", dtype=dtype)
    denoiser = CudaGraphDenoiser(model)
    for seed, valid in ((0, 4), (1, 4), (2, 7)):  # a second observation replays; a new length captures again
        inputs = [t.cuda() for t in random_inputs(cfg, cameras=(True, False, True), valid_tokens=(valid,),
                                                  seed=seed)]
        with torch.inference_mode():
            cache = model.encode(*inputs[:5])
            eager = model.denoise(cache, inputs[5], 10)
            graphed = denoiser(cache, inputs[5], 10)
        tol = 1e-5 if dtype == "float32" else 1e-2
        assert float((graphed - eager).abs().max()) <= tol
    assert denoiser.num_graphs == 2


@needs_cuda
@pytest.mark.parametrize("variant", ["pi0", "pi05"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_encoder_graphs_equal_eager(variant, dtype):
    """Vision and the prefix cache replayed from graphs: a second observation replays, another camera set or prompt
    length captures anew; image tokens and every cached K/V as eager."""
    from turbopi_ros.model.cuda_graph import CudaGraphEncoder

    cfg = small_config(variant)
    model = random_model(cfg, device="cuda", dtype=dtype)
    encoder = CudaGraphEncoder(model)
    tol = 1e-5 if dtype == "float32" else 2e-2
    for seed, cameras, valid in ((0, (True, False, True), 4), (1, (True, False, True), 4), (2, (True, True, True), 7)):
        inputs = [t.cuda() for t in random_inputs(cfg, cameras=cameras, valid_tokens=(valid,), seed=seed)]
        with torch.inference_mode():
            eager_tokens = model.embed_images(*inputs[:2])
            eager = model.build_cache(eager_tokens, *inputs[2:5])
            graphed_tokens = encoder.embed_images(*inputs[:2])
            graphed = encoder.build_cache(graphed_tokens, *inputs[2:5])
        assert graphed_tokens.present == eager_tokens.present
        assert float((graphed_tokens.features - eager_tokens.features).abs().max()) <= tol
        assert graphed.num_cached == eager.num_cached
        for a, b in ((graphed.keys, eager.keys), (graphed.values, eager.values), (graphed.cos, eager.cos)):
            n = eager.num_cached
            assert float((a[..., :n, :] - b[..., :n, :]).float().abs().max()) <= tol
    assert encoder.num_graphs == 4  # (vision, prefix) x (two camera sets / prompt lengths)


@needs_cuda
def test_policy_with_cuda_graphs_equals_eager():
    import numpy as np

    from turbopi_ros.policy.loading import load_policy
    from turbopi_ros.policy.policy import Observation

    rng = np.random.default_rng(0)
    images = {name: rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for name in ("base_0_rgb", "left_wrist_0_rgb")}
    chunks = []
    for graphs in (False, True):
        policy = load_policy(checkpoint="random", preset="tiny", device="cuda", seed=3, action_dims=7,
                                    cuda_graph=graphs)
        obs = Observation(images=images, state=np.linspace(-1, 1, 7), prompt="pick up the cube", stamp=1.0)
        chunks.append([policy.infer(obs).actions for _ in range(2)])  # the second replays
    assert np.abs(np.array(chunks[0]) - np.array(chunks[1])).max() <= 1e-4


def test_refuses_a_cpu_model():
    from turbopi_ros.model.cuda_graph import CudaGraphDenoiser

    with pytest.raises(ValueError, match="CUDA device"):
        CudaGraphDenoiser(random_model(small_config("pi0")))


def test_a_model_on_a_second_gpu_is_captured_on_that_gpu(monkeypatch):
    """model.device cuda:N (N > 0): CUDA graphs are captured on a stream of that GPU. torch.cuda.graph without a
    stream captures on a stream of the GPU current when the process made its first graph (cuda:0 unless set), and
    the model's kernels, on cuda:1, would run beside the capture: an empty graph, replayed as the same stale
    actions."""
    from fake_cuda_devices import FakeCuda
    from turbopi_ros.model.cuda_graph import GraphPool

    cuda = FakeCuda(monkeypatch, current=0)
    pool = GraphPool(torch.device("cuda:1"))
    seen = []
    pool.capture("key", lambda: seen.append(cuda.current) or torch.zeros(1), warmup=1)
    assert cuda.captures == [1], cuda.captures
    assert seen == [1, 1], seen  # the warm-up and the capture run with cuda:1 current
    assert cuda.current == 0  # the caller's current device is left as it was


def test_a_model_on_a_second_gpu_runs_its_entry_points_with_that_gpu_current(monkeypatch):
    """model.device cuda:N (N > 0) with model.fused: Triton launches a kernel on the current GPU (triton/runtime/
    jit.py: driver.active.get_current_device()), not on its tensors' one: the engine's entry points and the guided
    denoise make the model's GPU current, or the fused kernels would run on cuda:0 with pointers into cuda:1's memory
    (an illegal address)."""
    from fake_cuda_devices import FakeCuda
    from turbopi_ros.model import rtc
    from turbopi_ros.model.pi0 import PI0Model, engine_entry

    cuda = FakeCuda(monkeypatch, current=0)

    class OnSecondGpu:
        device = torch.device("cuda:1")

        @engine_entry
        def current(self):
            return cuda.current

    assert OnSecondGpu().current() == 1 and cuda.current == 0
    model = random_model(small_config("pi0"))
    cache = model.encode(*random_inputs(model.config)[:5])
    seen = []
    monkeypatch.setattr(rtc, "guided_loop", lambda model, prefix, noise, *args: seen.append(cuda.current) or noise)
    monkeypatch.setattr(PI0Model, "device", property(lambda self: torch.device("cuda:1")))
    shape = (1, model.config.action_horizon, model.config.action_dim)
    rtc.guided_denoise(model, cache, torch.zeros(shape), rtc.Guidance(torch.zeros(shape), torch.ones(shape)))
    assert seen == [1] and cuda.current == 0
