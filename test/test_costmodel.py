"""The cost model counts what the engine really executes.

FLOPs: torch.utils.flop_counter.FlopCounterMode over one real run of each stage (vision, prefix cache, denoise) counts
the matmuls (mm, addmm, convolution) and the attention products (SDPA) the engine dispatches; the model's matmul and
attention FLOPs, from the config alone, must agree within 2 % on the tiny and the medium configs, pi0 and pi0.5.
FlopCounterMode has no formula for the CPU flash kernel (aten._scaled_dot_product_flash_attention_for_cpu), so the
test gives it torch's own SDPA formula (flop_counter.sdpa_flop_count).
Bytes: the parameters each stage really reads (every tensor an op receives, matched to the parameters' storages) are
the model's weight bytes, in float32 and in bfloat16 (norms and small heads kept float32).
"""
import dataclasses
import time
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from turbopi_ros.tools import costmodel
from turbopi_ros.tools.bench import make_inputs
from turbopi_ros.tools.costmodel import Cost, Device, Workload, stage_bound, workload_cost
from turbopi_ros.model.checkpoint import random_model
from turbopi_ros.model.config import ModelConfig, load_config

aten = torch.ops.aten
TOLERANCE = 0.02
MATMUL_OPS = {"convolution", "mm", "addmm", "bmm", "baddbmm"}
ATTENTION_OPS = {"_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
                 "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"}


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query, key, value)


def counted(fn):
    """(result, {"matmul": flops, "attention": flops}) of one call, as FlopCounterMode sees the dispatched ops."""
    with FlopCounterMode(display=False, custom_mapping={
            aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}) as counter:
        out = fn()
    totals = {"matmul": 0, "attention": 0}
    for op, flops in counter.get_flop_counts()["Global"].items():
        name = str(op).split(".")[-1]
        assert name in MATMUL_OPS | ATTENTION_OPS, f"uncategorized op {op}"
        totals["matmul" if name in MATMUL_OPS else "attention"] += flops
    return out, totals


def stage_flops(config: ModelConfig, views: int, prompt_len: int, steps: int):
    """Measured and modelled FLOPs of one run of each stage."""
    model = random_model(config, seed=0)
    images, masks, tokens, token_mask, state, noise = make_inputs(config, views, prompt_len, "cpu")
    with torch.inference_mode():
        model.step_conditioning(steps)  # once per model, outside the denoise (not part of its cost)
        image_tokens, vision = counted(lambda: model.embed_images(images, masks))
        cache, prefix = counted(lambda: model.build_cache(image_tokens, tokens, token_mask, state))
        _, denoise = counted(lambda: model.denoise(cache, noise, steps))
    modelled = workload_cost(Workload(config, views, prompt_len, steps, dtype="float32"))
    return {"vision": vision, "prefix_cache": prefix, "denoise": denoise}, modelled


def assert_within(measured, modelled, where):
    for stage, m in measured.items():
        cost = modelled[stage]
        for kind, predicted in (("matmul", cost.matmul_flops), ("attention", cost.attention_flops)):
            assert m[kind] > 0, f"{where} {stage}: nothing {kind} was counted"
            rel = abs(predicted - m[kind]) / m[kind]
            assert rel <= TOLERANCE, (f"{where} {stage} {kind}: model {predicted:.6g} vs counted {m[kind]:.6g} "
                                      f"({rel:.2%} > {TOLERANCE:.0%})")


@pytest.mark.parametrize("preset, views, prompt_len", [("tiny", 2, 7), ("tiny", 3, 48), ("tiny_pi05", 1, 40)])
def test_flops_match_the_flop_counter_on_the_tiny_presets(preset, views, prompt_len):
    measured, modelled = stage_flops(load_config(preset), views, prompt_len, steps=3)
    assert_within(measured, modelled, preset)


MEDIUM_PI05 = Path(__file__).resolve().parents[1] / "docs" / "bench" / "medium_pi05.json"


@pytest.fixture(scope="module")
def medium_pi0(shared_dir):
    return ModelConfig.from_json(shared_dir / "configs" / "medium_pi0.json")


def test_the_medium_pi05_config_is_the_medium_config_as_pi05(medium_pi0):
    assert ModelConfig.from_json(MEDIUM_PI05) == dataclasses.replace(medium_pi0, variant="pi05", max_token_len=200)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_flops_match_the_flop_counter_on_the_medium_config(request, variant, capsys):
    """The medium config (width 512, depth 6, SigLIP 256 x 4 layers), one camera, 2 steps: 1-2 s each here."""
    config = request.getfixturevalue("medium_pi0") if variant == "pi0" else ModelConfig.from_json(MEDIUM_PI05)
    t0 = time.perf_counter()
    measured, modelled = stage_flops(config, views=1, prompt_len=12, steps=2)
    assert_within(measured, modelled, f"medium {variant}")
    with capsys.disabled():
        print(f"\nmedium {variant}: " + ", ".join(
            f"{s} {m['matmul'] / 1e9:.3f}+{m['attention'] / 1e9:.3f} GFLOP counted" for s, m in measured.items())
              + f" ({time.perf_counter() - t0:.1f} s)")


class StorageReads(TorchDispatchMode):
    """The storages of every tensor the dispatched ops receive."""

    def __init__(self):
        super().__init__()
        self.storages = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for t in tree_leaves((args, kwargs or {})):
            if isinstance(t, torch.Tensor):
                self.storages.add(t.untyped_storage().data_ptr())
        return func(*args, **(kwargs or {}))


def read_bytes(tensors, fn):
    """fn's result and the bytes of those of ``tensors`` whose storage one of fn's ops reads."""
    with StorageReads() as reads:
        out = fn()
    return out, sum(t.numel() * t.element_size() for t in tensors if t.untyped_storage().data_ptr() in reads.storages)


@pytest.mark.parametrize("preset", ["tiny", "tiny_pi05"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "fp8_weights"])
def test_weight_bytes_are_the_parameters_each_stage_reads(preset, dtype):
    """One denoise step reads the expert once; the prefix reads every Gemma weight but its last layer's MLP (and pi0's
    expert the same way, for the state token); the prompt's embedding rows only. fp8_weights: the expert's linears
    in 1 byte and a float32 scale a row (fp8.FP8WeightLinear's buffers), the rest bfloat16."""
    from turbopi_ros.model import fp8

    config = load_config(preset)
    views, prompt_len = 2, 9
    model = random_model(config, seed=0, dtype="bfloat16" if dtype == "fp8_weights" else dtype)
    if dtype == "fp8_weights":
        assert fp8.quantize_model(model, check_device=False, weights_only=True) == 4 * config.expert.depth
    images, masks, tokens, token_mask, state, noise = make_inputs(config, views, prompt_len, "cpu")
    params = [p for name, p in model.named_parameters() if name != "vlm.embed_tokens.weight"]
    params += [b for name, b in model.named_buffers() if name.endswith((".qweight", ".wscale"))]
    with torch.inference_mode():
        conditioning = model.step_conditioning(1)
        image_tokens, vision = read_bytes(params, lambda: model.embed_images(images, masks))
        cache, prefix = read_bytes(params, lambda: model.build_cache(image_tokens, tokens, token_mask, state))
        step_tensors = [t for sc in conditioning for t in tree_leaves([getattr(sc, f.name) for f in
                                                                      dataclasses.fields(sc)])
                        if isinstance(t, torch.Tensor)]
        _, denoise = read_bytes(params + step_tensors, lambda: model.denoise(cache, noise, 1))
    cost = workload_cost(Workload(config, views, prompt_len, steps=1, dtype=dtype))
    rows = prompt_len * config.vlm.width * model.vlm.embed_tokens.weight.element_size()
    assert cost["vision"].weight_bytes == vision
    assert cost["prefix_cache"].weight_bytes == prefix + rows
    assert cost["denoise"].weight_bytes == denoise
    # the KV cache: the prefix writes the cached tokens of every layer, a step reads the whole buffer once per layer
    k = cache.keys
    per_token = 2 * k.shape[0] * k.shape[2] * k.shape[4] * k.element_size()  # K and V, all layers
    reads_prefix = per_token * (cache.num_prefix + (0 if config.is_pi05 else cache.num_prefix + 1))
    assert cost["prefix_cache"].kv_bytes == per_token * cache.num_cached + reads_prefix
    assert cost["denoise"].kv_bytes == per_token * (config.action_horizon + k.shape[3])


def test_roofline_arithmetic_on_a_hand_computable_case():
    """100 GFLOP of matrix work at 50 TFLOP/s is 2 ms; 3 GB at 1000 GB/s is 3 ms: the bound is 3 ms, memory."""
    cost = Cost(matmul_flops=80e9, attention_flops=20e9, elementwise_flops=7e9, weight_bytes=2.5e9, kv_bytes=0.5e9,
                activation_bytes=9e9)
    assert cost.tensor_flops == 100e9 and cost.compulsory_bytes == 3e9 and cost.bytes == 12e9
    b = stage_bound(cost, peak_tflops=50, bandwidth_gbs=1000)
    assert b["compute_ms"] == pytest.approx(2.0) and b["memory_ms"] == pytest.approx(3.0)
    assert b["bound_ms"] == pytest.approx(3.0) and b["limited_by"] == "memory"
    b = stage_bound(cost, peak_tflops=25, bandwidth_gbs=2000)  # 4 ms of compute, 1.5 ms of memory
    assert b["bound_ms"] == pytest.approx(4.0) and b["limited_by"] == "compute"
    # the total is the sum of the stage bounds (stages run one after another)
    w = Workload(load_config("pi0"), views=2, prompt_len=20, steps=10)
    r = costmodel.roofline(w, 100.0, 500.0)
    assert r["total"]["bound_ms"] == pytest.approx(sum(r[s]["bound_ms"] for s in costmodel.STAGES))
    costs = workload_cost(w)
    assert r["denoise"]["memory_ms"] == pytest.approx(costs["denoise"].compulsory_bytes / 500e9 * 1e3)
    # the weights the expert reads per step at 2 bytes: denoise bytes scale with steps, vision with nothing
    assert workload_cost(dataclasses.replace(w, steps=5))["denoise"].weight_bytes == costs["denoise"].weight_bytes / 2
    d = Device("x", {"bfloat16": 100.0, "fp8": 200.0}, 500.0, "test")
    both = costmodel.device_roofline(w, d)
    assert both["bfloat16"]["total"]["bound_ms"] == pytest.approx(r["total"]["bound_ms"])
    assert both["fp8"]["total"]["bound_ms"] < both["bfloat16"]["total"]["bound_ms"]


def test_full_size_counts_are_the_released_models():
    """pi0 (PaliGemma 2B + the 300M expert): the expert's weights per denoise step in bfloat16 are its ~311M
    parameters' bytes; SigLIP So400m's ~412M parameters; about 2 GFLOP per image token through SigLIP + projector."""
    w = Workload(load_config("pi0"), views=1, prompt_len=20, steps=1)
    cost = workload_cost(w)
    assert 0.60e9 < cost["denoise"].weight_bytes < 0.64e9
    assert 0.80e9 < cost["vision"].weight_bytes < 0.85e9
    assert 2 * 400e6 * 256 < cost["vision"].matmul_flops < 2 * 420e6 * 256
    fp8 = workload_cost(dataclasses.replace(w, dtype="fp8"))
    assert fp8["denoise"].weight_bytes < 0.55 * cost["denoise"].weight_bytes
    weights_only = workload_cost(dataclasses.replace(w, dtype="fp8_weights"))  # the expert's alone: same denoise
    assert fp8["denoise"].weight_bytes < weights_only["denoise"].weight_bytes < 1.01 * fp8["denoise"].weight_bytes
    assert weights_only["vision"].weight_bytes == cost["vision"].weight_bytes
    thor = costmodel.device_roofline(dataclasses.replace(w, views=3), costmodel.DEVICES["thor"])
    assert thor["fp8"]["total"]["bound_ms"] < thor["fp8_weights"]["total"]["bound_ms"] < thor["bfloat16"]["total"][
        "bound_ms"]
    assert "fp8_weights" not in costmodel.device_roofline(w, costmodel.DEVICES["orin"])  # no FP8 on Orin


def test_bad_workloads_are_refused():
    with pytest.raises(ValueError, match="prompt_len must be in 1..48"):
        Workload(load_config("pi0"), prompt_len=49)
    with pytest.raises(ValueError, match="views must be 0..3"):
        Workload(load_config("pi0"), views=4)
    with pytest.raises(ValueError, match="dtype must be one of"):
        Workload(load_config("pi0"), dtype="int8")
    assert costmodel.main(["--preset", "pi0", "--prompt-len", "99"]) == 2
