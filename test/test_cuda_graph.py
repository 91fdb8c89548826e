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


def test_refuses_a_cpu_model():
    from turbopi_ros.model.cuda_graph import CudaGraphDenoiser

    with pytest.raises(ValueError, match="CUDA device"):
        CudaGraphDenoiser(random_model(small_config("pi0")))
