"""bfloat16 is the GPU default: its fast path is checked here, on the CPU, against the float32 reference.

Same weights (random_model(dtype="bfloat16") is the float32 model rounded, norms and the small heads kept float32),
same observations and noise, ten steps. Tolerance: 2e-2 absolute on actions of magnitude ~1 (std 1.1, max ~4.5).
Measured on this project's CPU (docs/performance.md): bfloat16 moves the tiny pi0's actions by at most 6.1e-3 (mean
1.7e-3) and the tiny pi0.5's by at most 3.7e-3 (mean 6.7e-4) - the same as it moves openpi's own formulation run in
bfloat16 (6.4e-3 and 3.1e-3 on the first observation, where the fast path's are 6.0e-3 and 3.0e-3): the maskless fast
path adds no error of its own in bfloat16.
"""
import pytest
import torch

from engine_helpers import random_inputs
from turbopi_ros.model.checkpoint import random_model
from turbopi_ros.model.config import load_config

TOLERANCE = 2e-2
OBSERVATIONS = [  # (seed, cameras present, valid prompt tokens)
    (0, (True, True, True), 12),
    (1, (True, False, True), 5),
    (2, (False, True, False), 30),
]


@pytest.fixture(scope="module", params=["tiny", "tiny_pi05"])
def models(request):
    config = load_config(request.param)
    return request.param, random_model(config, seed=3), random_model(config, seed=3, dtype="bfloat16")


@pytest.fixture
def one_thread():
    """bfloat16 matmuls are emulated on CPUs without avx512_bf16: one thread keeps them steady on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_bfloat16_keeps_norms_and_heads_in_float32(models):
    _, fp32, bf16 = models
    assert bf16.dtype == torch.bfloat16 and bf16.expert.layers[0].mlp.gate_up.weight.dtype == torch.bfloat16
    kept = [bf16.action_in_proj.weight, bf16.action_out_proj.weight, bf16.vision.embeddings.patch_embedding.weight]
    kept.append(bf16.expert.layers[0].input_layernorm.dense.weight if bf16.config.is_pi05
                else bf16.expert.layers[0].input_layernorm.weight)
    assert all(p.dtype == torch.float32 for p in kept)
    # the same weights, rounded
    assert torch.equal(bf16.expert.layers[0].mlp.gate_up.weight, fp32.expert.layers[0].mlp.gate_up.weight.bfloat16())


def test_bfloat16_fast_path_against_the_float32_reference(models, one_thread, capsys):
    preset, fp32, bf16 = models
    worst = mean = 0.0
    for i, (seed, cameras, valid) in enumerate(OBSERVATIONS):
        inputs = random_inputs(fp32.config, cameras=cameras, valid_tokens=(valid,), seed=seed)
        with torch.inference_mode():
            reference = fp32.sample_actions(*inputs[:5], noise=inputs[5], path="reference")
            fast32 = fp32.sample_actions(*inputs[:5], noise=inputs[5])
            fast16 = bf16.sample_actions(*inputs[:5], noise=inputs[5])
            if i == 0:  # openpi's formulation in bfloat16 (slow on this CPU: one observation)
                openpi16 = bf16.sample_actions(*inputs[:5], noise=inputs[5], path="reference")
        assert fast16.dtype == torch.float32 and torch.isfinite(fast16).all()
        assert float((fast32 - reference).abs().max()) <= 1e-5  # float32: exact up to rounding
        diff = (fast16 - reference).abs()
        worst, mean = max(worst, float(diff.max())), max(mean, float(diff.mean()))
        if i == 0:
            fast_first, openpi_first = float(diff.max()), float((openpi16 - reference).abs().max())
    with capsys.disabled():
        print(f"\n{preset}: bfloat16 moves the fast path's actions by at most {worst:.2e} (mean up to {mean:.2e}) "
              f"over {len(OBSERVATIONS)} observations; on the first, {fast_first:.2e} against {openpi_first:.2e} for "
              f"openpi's formulation in bfloat16 (tolerance {TOLERANCE:g})")
    assert 0 < worst <= TOLERANCE  # bfloat16 did run (and rounds), within the tolerance
    assert fast_first <= 1.5 * openpi_first + 1e-3  # no worse than openpi's own formulation in bfloat16


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_float16_masked_reference_path_stays_finite(variant):
    """float16 (model.dtype float16, turbopi-bench --dtype float16): openpi's mask value -2.3819763e38 is -inf in
    float16; padded queries see no valid key, so their softmax row was NaN, and their NaN values then reached every
    query through the masked P.V product (0 * NaN). openpi adds its float32 mask to the logits, so the sum is float32.
    The reference path also serves a fast-path batch whose rows have different prompt lengths."""
    from engine_helpers import small_config

    config = small_config(variant)
    fp32, fp16 = random_model(config, seed=1), random_model(config, seed=1, dtype="float16")
    inputs = random_inputs(config, batch=2, cameras=(True, False, True), valid_tokens=(4, 7), seed=2)
    with torch.inference_mode():
        reference = fp32.sample_actions(*inputs[:5], noise=inputs[5], path="reference")
        for path in ("reference", "fast"):  # ragged rows: the fast path falls back to the reference path
            out = fp16.sample_actions(*inputs[:5], noise=inputs[5], path=path)
            assert torch.isfinite(out).all(), f"float16 {path} path gave non-finite actions"
            assert float((out - reference).abs().max()) <= TOLERANCE
