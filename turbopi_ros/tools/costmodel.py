"""What one observation costs, from the model config alone: floating-point operations and bytes per stage.

    cost = workload_cost(Workload(load_config("pi0"), views=3, prompt_len=20, steps=10, dtype="bfloat16"))
    cost["denoise"].tensor_flops, cost["denoise"].weight_bytes, ...
    roofline(Workload(...), DEVICES["thor"])        # lower bound per stage: max(flops / peak, bytes / bandwidth)

Why: a measured time means little without the work it did. Counting the work exactly (tests check the matmul and
attention FLOPs against torch.utils.flop_counter over real runs, and the weights each stage reads against the
parameters it really touches) turns a time into "GFLOP/s, and what fraction of the machine's matmul rate", and turns
a device's spec sheet into a lower bound no engine can beat on it.

The stages are the fast path's (turbopi_ros/model/pi0.py):
  vision        SigLIP over the present cameras + the projector;
  prefix_cache  Gemma over the valid prefix tokens (its last layer without MLP: only its K/V are used), plus pi0's
                state token through the expert once;
  denoise       `steps` Euler steps of the expert over the action tokens, attending to the whole cache. The time
                conditioning is computed once per model (not counted).
Each splits its FLOPs into matmuls (projections, MLPs, the patch convolution), attention (QK^T and PV) and
elementwise work (norms, activations, residuals, rotary, softmax, biases), and its bytes into weights (read once per
pass: once per denoise step for the expert), the KV cache (written once, read by every attention call) and
activations (every matmul reads its input and writes its output; elementwise work assumed fused into them).

Conventions for elementwise FLOPs (per element): RMSNorm 4 (adaRMS 5), LayerNorm 7, gelu-tanh 9, silu 4, residual 1
(gated 2), rotary 3, bias 1, softmax 5 per attention score. A multiply-add is 2 FLOPs, as FlopCounterMode counts.

Precision: "float32", "bfloat16", "float16", "fp8" (weights of the transformers in 1 byte, activations and KV cache
in bfloat16, matmuls at the device's FP8 rate) or "fp8_weights" (model.dtype fp8_weights: bfloat16, but the action
expert's linear weights in 1 byte with one float32 scale per output row; matmuls at the bfloat16 rate, on every
device with FP8). As in checkpoint.set_dtype, norms, the vision embeddings and the small
action/time heads stay float32 whatever the dtype.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Dict, Iterable, List, Optional, Tuple

from ..model.config import GemmaConfig, ModelConfig, load_config

STAGES = ("vision", "prefix_cache", "denoise")
DTYPES = ("float32", "bfloat16", "float16", "fp8", "fp8_weights")
F32 = 4  # bytes of the parameters kept in float32


@dataclasses.dataclass(frozen=True)
class Workload:
    """One observation: the model, how many cameras are present, valid prompt tokens, Euler steps, precision."""

    config: ModelConfig
    views: int = 3
    prompt_len: int = 12
    steps: int = 10
    batch: int = 1
    dtype: str = "bfloat16"

    def __post_init__(self):
        problems = []
        if not 0 <= self.views <= 3:
            problems.append(f"views must be 0..3 (camera slots), got {self.views}")
        if not 1 <= self.prompt_len <= self.config.max_token_len:
            problems.append(f"prompt_len must be in 1..{self.config.max_token_len} (max_token_len), got "
                            f"{self.prompt_len}")
        if self.steps < 1 or self.batch < 1:
            problems.append(f"steps and batch must be >= 1, got {self.steps} and {self.batch}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if problems:
            raise ValueError("invalid workload: " + "; ".join(problems))

    @property
    def weight_bytes(self) -> float:
        return {"float32": 4, "bfloat16": 2, "float16": 2, "fp8": 1, "fp8_weights": 2}[self.dtype]

    @property
    def expert_bytes(self) -> Tuple[float, float]:
        """(bytes a weight, bytes a row scale) of the action expert's linears."""
        return (1, F32) if self.dtype == "fp8_weights" else (self.weight_bytes, 0)

    @property
    def act_bytes(self) -> float:
        return 4 if self.dtype == "float32" else 2

    @property
    def prefix_tokens(self) -> int:
        """Valid prefix tokens: the present cameras' image tokens and the valid prompt."""
        return self.views * self.config.num_image_tokens + self.prompt_len

    @property
    def cached_tokens(self) -> int:
        return self.prefix_tokens + (0 if self.config.is_pi05 else 1)


@dataclasses.dataclass
class Cost:
    """FLOPs and bytes of one stage (or of several, added). Cost.zero() is the start of a sum."""

    matmul_flops: float
    attention_flops: float  # the attention's two products, Q K^T and P V
    elementwise_flops: float  # norms, activations, rotary, softmax, residual adds
    weight_bytes: float
    kv_bytes: float  # the KV cache, written once and read by every query
    activation_bytes: float

    # Totals. tensor_flops: what runs on matrix units (what FlopCounterMode counts). compulsory_bytes: what no engine
    # can avoid moving, every weight read once per pass and the KV cache written and read.
    tensor_flops = property(lambda self: self.matmul_flops + self.attention_flops)
    flops = property(lambda self: self.tensor_flops + self.elementwise_flops)
    compulsory_bytes = property(lambda self: self.weight_bytes + self.kv_bytes)
    bytes = property(lambda self: self.compulsory_bytes + self.activation_bytes)

    @classmethod
    def zero(cls) -> "Cost":
        return cls(*(0.0,) * len(dataclasses.fields(cls)))

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def scaled(self, k: float) -> "Cost":
        return Cost(*(k * a for a in dataclasses.astuple(self)))

    def to_dict(self) -> Dict[str, float]:
        d = dataclasses.asdict(self)
        d.update(tensor_flops=self.tensor_flops, flops=self.flops, compulsory_bytes=self.compulsory_bytes,
                 bytes=self.bytes)
        return d


class _Ledger:
    """Accumulates one stage's cost op by op, in the order the engine runs them."""

    def __init__(self, w: Workload):
        self.w, self.cost = w, Cost.zero()
        self.matrix_bytes = (w.weight_bytes, 0)  # (a weight, a row scale) of the stack being counted

    def linear(self, tokens: float, d_in: int, d_out: int, *, bias: bool, float32: bool = False,
               weights: bool = True) -> None:
        c = self.cost
        c.matmul_flops += 2.0 * tokens * d_in * d_out
        if bias:
            c.elementwise_flops += tokens * d_out
        if weights and float32:
            c.weight_bytes += (d_in * d_out + (d_out if bias else 0)) * F32
        elif weights:
            weight, scale = self.matrix_bytes
            c.weight_bytes += d_in * d_out * weight + d_out * scale + (d_out * self.w.weight_bytes if bias else 0)
        act = F32 if float32 else self.w.act_bytes
        c.activation_bytes += tokens * (d_in + d_out) * act

    def attention(self, batch: int, heads: int, queries: int, keys: int, head_dim: int) -> None:
        scores = batch * heads * queries * keys
        self.cost.attention_flops += 4.0 * scores * head_dim
        self.cost.elementwise_flops += 5.0 * scores
        self.cost.activation_bytes += 2 * batch * queries * heads * head_dim * self.w.act_bytes  # q in, out

    def elementwise(self, flops: float) -> None:
        self.cost.elementwise_flops += flops

    def weights(self, count: float, float32: bool = False) -> None:
        self.cost.weight_bytes += count * (F32 if float32 else self.w.weight_bytes)

    def kv(self, tokens: float, g: GemmaConfig) -> None:
        """K and V of ``tokens`` tokens, one layer: written or read once."""
        self.cost.kv_bytes += tokens * 2 * g.num_kv_heads * g.head_dim * self.w.act_bytes

    def gemma_layer(self, g: GemmaConfig, batch: int, queries: int, keys: int, *, mlp: bool, adaptive: bool) -> None:
        """One decoder layer (gemma.GemmaLayer) over ``queries`` tokens per row attending to ``keys`` cached keys
        (their own K/V are written into the cache first)."""
        T, W, q, kv = batch * queries, g.width, g.num_heads * g.head_dim, g.num_kv_heads * g.head_dim
        norm, residual = (5, 2) if adaptive else (4, 1)
        self.elementwise(norm * T * W)
        self.weights(3 * W if adaptive else W, float32=True)  # adaRMS: its precomputed (scale, shift, gate)
        self.linear(T, W, q + 2 * kv, bias=False)
        self.elementwise(3 * T * (q + kv))  # rotary on q and k
        self.kv(T, g)  # the new tokens' K/V into the cache
        self.kv(batch * keys, g)  # attention reads every cached key and value
        self.attention(batch, g.num_heads, queries, keys, g.head_dim)
        self.linear(T, q, W, bias=False)
        self.elementwise(residual * T * W)
        if mlp:
            self.elementwise(norm * T * W)
            self.weights(3 * W if adaptive else W, float32=True)
            self.linear(T, W, 2 * g.mlp_dim, bias=False)  # gate_up: gate_proj and up_proj as one matmul
            self.elementwise(10 * T * g.mlp_dim)  # gelu-tanh (9) and the product (1)
            self.linear(T, g.mlp_dim, W, bias=False)
            self.elementwise(residual * T * W)

    def gemma_stack(self, g: GemmaConfig, batch: int, queries: int, keys: int, *, last_mlp: bool,
                    adaptive: bool, expert: bool = False) -> None:
        """``expert``: the action expert's layers (its linears' bytes: Workload.expert_bytes)."""
        if expert:
            self.matrix_bytes = self.w.expert_bytes
        for li in range(g.depth):
            self.gemma_layer(g, batch, queries, keys, mlp=last_mlp or li < g.depth - 1, adaptive=adaptive)
        self.matrix_bytes = (self.w.weight_bytes, 0)


def vision_cost(w: Workload) -> Cost:
    """SigLIP (siglip.py) over the present cameras, then the projector."""
    led, v, c = _Ledger(w), w.config.vision, w.config
    images, T, W = w.batch * w.views, c.num_image_tokens, v.width
    if images == 0:
        return led.cost
    tokens = images * T
    patch = 3 * v.patch_size ** 2
    led.cost.activation_bytes += images * 3 * v.image_size ** 2 * F32  # the images (float32)
    led.linear(tokens, patch, W, bias=True, float32=True)  # patch convolution: a matmul over patches
    led.elementwise(tokens * W)  # + position embedding
    led.weights(T * W, float32=True)
    for _ in range(v.depth):
        led.elementwise(7 * tokens * W)  # layer_norm1
        led.weights(2 * W)
        led.linear(tokens, W, 3 * W, bias=True)
        led.attention(images, v.num_heads, T, T, v.head_dim)
        led.cost.activation_bytes += 2 * tokens * W * w.act_bytes  # K and V, read by attention
        led.linear(tokens, W, W, bias=True)
        led.elementwise(tokens * W)  # residual
        led.elementwise(7 * tokens * W)  # layer_norm2
        led.weights(2 * W)
        led.linear(tokens, W, v.mlp_dim, bias=True)
        led.elementwise(9 * tokens * v.mlp_dim)  # gelu-tanh
        led.linear(tokens, v.mlp_dim, W, bias=True)
        led.elementwise(tokens * W)
    led.elementwise(7 * tokens * W)  # post_layernorm
    led.weights(2 * W)
    led.linear(tokens, W, c.vlm.width, bias=True)  # projector
    return led.cost


def prefix_cache_cost(w: Workload) -> Cost:
    """build_cache: Gemma over the valid prefix tokens (last layer without MLP), pi0's state token through the
    expert once; the action tokens' rotary tables."""
    led, c = _Ledger(w), w.config
    B, n, g, e = w.batch, w.prefix_tokens, c.vlm, c.expert
    led.weights(B * w.prompt_len * g.width)  # the prompt's embedding rows
    led.elementwise(B * w.prompt_len * g.width)  # * sqrt(width)
    led.cost.activation_bytes += 2 * B * n * g.width * w.act_bytes  # concatenation and compaction
    led.elementwise(2 * B * (n + 1 + c.action_horizon) * g.head_dim)  # rotary tables (cos, sin)
    led.gemma_stack(g, B, n, n, last_mlp=False, adaptive=False)
    if not c.is_pi05:
        led.linear(B, c.action_dim, e.width, bias=True, float32=True)  # state_proj
        led.gemma_stack(e, B, 1, n + 1, last_mlp=False, adaptive=False, expert=True)
    return led.cost


def denoise_step_cost(w: Workload) -> Cost:
    """One Euler step: the expert over the action tokens, attending to the whole cache without a mask."""
    led, c = _Ledger(w), w.config
    B, H, e = w.batch, c.action_horizon, c.expert
    T = B * H
    led.linear(T, c.action_dim, e.width, bias=True, float32=True)  # action_in_proj
    if not c.is_pi05:  # action_time_mlp_in's action half (its time half is a precomputed bias), silu, _out
        led.linear(T, e.width, e.width, bias=False, float32=True)
        led.weights(e.width, float32=True)
        led.elementwise(T * e.width + 4 * T * e.width)
        led.linear(T, e.width, e.width, bias=True, float32=True)
    led.gemma_stack(e, B, H, w.cached_tokens + H, last_mlp=True, adaptive=c.is_pi05, expert=True)
    led.elementwise((5 if c.is_pi05 else 4) * T * e.width)  # final norm
    led.weights(3 * e.width if c.is_pi05 else e.width, float32=True)
    led.linear(T, e.width, c.action_dim, bias=True, float32=True)  # action_out_proj
    led.elementwise(2 * T * c.action_dim)  # x + dt * v
    return led.cost


def workload_cost(w: Workload) -> Dict[str, Cost]:
    """{"vision", "prefix_cache", "denoise" (all steps), "total"}."""
    stages = {"vision": vision_cost(w), "prefix_cache": prefix_cache_cost(w),
              "denoise": denoise_step_cost(w).scaled(w.steps)}
    stages["total"] = stages["vision"] + stages["prefix_cache"] + stages["denoise"]
    return stages


# --- devices and the roofline lower bound ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Device:
    """Published dense peaks (no structured sparsity), TFLOP/s by dtype, and memory bandwidth."""

    name: str
    peak_tflops: Dict[str, float]
    bandwidth_gbs: float
    sources: str
    note: str = ""


DEVICES: Dict[str, Device] = {
    "thor": Device(
        "Jetson AGX Thor (T5000)", {"bfloat16": 517.0 / 2, "fp8": 517.0}, 273.0,
        "NVIDIA, 'Introducing NVIDIA Jetson Thor' https://developer.nvidia.com/blog/introducing-nvidia-jetson-thor-"
        "the-ultimate-platform-for-physical-ai/ (2070 TFLOPS sparse FP4; 1035 dense FP4 / sparse FP8; 517 dense FP8 "
        "/ sparse FP16; 128 GB LPDDR5X, 273 GB/s), as quoted in https://github.com/huggingface/huggingface.js/pull/"
        "1710 and https://github.com/NVIDIA/TensorRT/issues/4590",
        "dense BF16 = half of the published sparse FP16 517 TFLOPS (derived)"),
    "orin": Device(
        "Jetson AGX Orin 64GB", {"bfloat16": 170.0 / 4}, 204.8,
        "NVIDIA Jetson AGX Orin Series Technical Brief: GPU 2048 CUDA cores, 64 tensor cores, 170 sparse INT8 TOPS "
        "(quoted at http://mzph.cn/web/30785.shtml); 204.8 GB/s LPDDR5 as quoted in https://github.com/infinigence/"
        "ApxInf/pull/74",
        "dense FP16/BF16 = 170 sparse INT8 TOPS / 4 (derived); no FP8 (Ampere)"),
    "rtx4090": Device(
        "GeForce RTX 4090", {"bfloat16": 165.2, "fp8": 330.3}, 1008.0,
        "NVIDIA Ada architecture whitepaper figures as listed at https://waredb.com/processor/nvidia-geforce-rtx-4090 "
        "(BF16 165.15, FP8 330.30 dense TFLOPS; 1008 GB/s) and https://gigagpu.com/?p=34220 (BF16 with FP32 "
        "accumulate 165.2 dense)",
        "FP8 with FP32 accumulate; 660.6 with FP16 accumulate"),
    "h100_sxm": Device(
        "H100 SXM5 80GB", {"bfloat16": 989.4, "fp8": 1978.9}, 3350.0,
        "NVIDIA H100 datasheet as reproduced at https://archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html "
        "(BF16 1979 / FP8 3958 TFLOPS with sparsity, 'specifications 1/2 lower without sparsity'; 3350 GB/s) and "
        "https://glennklockwood.com/garden/processors/h100 (BF16 989.4 dense)"),
    "h100_pcie": Device(
        "H100 PCIe 80GB", {"bfloat16": 1513.0 / 2, "fp8": 3026.0 / 2}, 2000.0,
        "NVIDIA H100 datasheet as reproduced at https://archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html "
        "(BF16 1513 / FP8 3026 TFLOPS with sparsity; 2000 GB/s)"),
}


def stage_bound(cost: Cost, peak_tflops: float, bandwidth_gbs: float) -> Dict[str, float]:
    """Roofline lower bound of one stage: it cannot finish before its matrix work at the peak rate, nor before its
    compulsory bytes at the memory bandwidth. (Elementwise FLOPs run on other units, overlapped: not counted.)"""
    compute_ms = cost.tensor_flops / (peak_tflops * 1e12) * 1e3
    memory_ms = cost.compulsory_bytes / (bandwidth_gbs * 1e9) * 1e3
    return {"compute_ms": compute_ms, "memory_ms": memory_ms, "bound_ms": max(compute_ms, memory_ms),
            "limited_by": "compute" if compute_ms >= memory_ms else "memory"}


def roofline(w: Workload, peak_tflops: float, bandwidth_gbs: float) -> Dict[str, Dict[str, float]]:
    """Per stage bound, and "total": the sum of the stage bounds (the stages run one after another)."""
    costs = workload_cost(w)
    out = {stage: stage_bound(costs[stage], peak_tflops, bandwidth_gbs) for stage in STAGES}
    out["total"] = {"bound_ms": sum(out[s]["bound_ms"] for s in STAGES)}
    return out


def device_peaks(device: Device) -> Dict[str, float]:
    """TFLOP/s by dtype: the published ones, and fp8_weights at the bfloat16 rate on a device with FP8."""
    peaks = dict(device.peak_tflops)
    if "fp8" in peaks and "bfloat16" in peaks:
        peaks["fp8_weights"] = peaks["bfloat16"]
    return peaks


def device_roofline(w: Workload, device: Device) -> Dict[str, Dict[str, Dict[str, float]]]:
    """The bound for every dtype the device has a peak for (device_peaks): {dtype: roofline}."""
    return {dtype: roofline(dataclasses.replace(w, dtype=dtype), peak, device.bandwidth_gbs)
            for dtype, peak in device_peaks(device).items()}


# --- reports -----------------------------------------------------------------------------------------------------
def cost_table(w: Workload) -> str:
    c = w.config
    costs = workload_cost(w)
    lines = [f"cost model ({c.variant}): {w.views} views, {w.prompt_len} prompt tokens ({w.prefix_tokens} valid "
             f"prefix, "
             f"{w.cached_tokens} cached), {w.steps} steps, {w.dtype}, batch {w.batch}",
             f"    {'stage':<13} {'matmul':>10} {'attention':>10} {'elementw.':>10} {'GFLOP':>10}   {'weights':>9} "
             f"{'KV cache':>9} {'activ.':>9} {'MB':>9}"]
    for stage, cost in costs.items():
        lines.append(f"    {stage:<13} {cost.matmul_flops / 1e9:10.3f} {cost.attention_flops / 1e9:10.3f} "
                     f"{cost.elementwise_flops / 1e9:10.3f} {cost.flops / 1e9:10.3f}   {cost.weight_bytes / 1e6:9.2f} "
                     f"{cost.kv_bytes / 1e6:9.2f} {cost.activation_bytes / 1e6:9.2f} {cost.bytes / 1e6:9.2f}")
    lines.append("    (GFLOP columns: matmul, attention, elementwise, all; MB columns: weights read (per step for the "
                 "expert), KV cache written and read, activations at matmul boundaries, all)")
    return "\n".join(lines)


def roofline_table(w: Workload, devices: Iterable[Device] = DEVICES.values()) -> str:
    lines = [f"roofline lower bound, ms: per stage max(matrix FLOPs / dense peak, (weights + KV cache) bytes / "
             f"bandwidth), summed over the stages ({w.views} views, {w.prompt_len} prompt tokens, {w.steps} steps)",
             f"    {'device':<26} {'dtype':<11} {'TFLOP/s':>8} {'GB/s':>7} {'vision':>8} {'prefix':>8} {'denoise':>8} "
             f"{'total':>8}  limited by (vision/prefix/denoise)"]
    for device in devices:
        peaks = device_peaks(device)
        for dtype, r in device_roofline(w, device).items():
            lines.append(f"    {device.name:<26} {dtype:<11} {peaks[dtype]:8.1f} "
                         f"{device.bandwidth_gbs:7.0f} "
                         + " ".join(f"{r[s]['bound_ms']:8.2f}" for s in STAGES) + f" {r['total']['bound_ms']:8.2f}  "
                         + "/".join(r[s]["limited_by"] for s in STAGES))
    return "\n".join(lines)


def markdown_rows(config_name: str, prompt_len: int, views: Iterable[int] = (1, 2, 3), steps: int = 10,
                  devices: Optional[List[str]] = None) -> str:
    """Rows for docs/performance.md: one per device and dtype, the bound per views count (with its stages)."""
    config = load_config(config_name)
    rows = []
    for key in devices or list(DEVICES):
        device = DEVICES[key]
        for dtype, peak in device_peaks(device).items():
            cells = []
            for v in views:
                r = roofline(Workload(config, v, prompt_len, steps, dtype=dtype), peak, device.bandwidth_gbs)
                parts = " + ".join(f"{r[s]['bound_ms']:.1f}" for s in STAGES)
                cells.append(f"**{r['total']['bound_ms']:.1f}** ({parts})")
            head = f"| {device.name} | {dtype} | {peak:g} | {device.bandwidth_gbs:g} | "
            rows.append(head + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m turbopi_ros.tools.costmodel", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="pi0")
    p.add_argument("--config", default=None, help="model config JSON (overrides --preset)")
    p.add_argument("--views", type=int, default=3)
    p.add_argument("--prompt-len", type=int, default=12)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    p.add_argument("--markdown", action="store_true", help="the docs/performance.md rows (1-3 views) instead")
    args = p.parse_args(argv)
    try:
        if args.markdown:
            print(markdown_rows(args.config or args.preset, args.prompt_len, steps=args.steps))
            return 0
        w = Workload(load_config(args.config or args.preset), args.views, args.prompt_len, args.steps,
                     dtype=args.dtype)
    except ValueError as e:
        print(f"costmodel: {e}", file=sys.stderr)
        return 2
    print(cost_table(w))
    print()
    print(roofline_table(w))
    return 0


if __name__ == "__main__":
    sys.exit(main())
