"""FP8 weights (``model.dtype: fp8``): the transformer layers' linear weights stored as float8 e4m3 with one scale per
output row, multiplied with torch._scaled_mm on GPUs that have FP8 tensor cores (compute capability 8.9 or newer:
L4, L40, H100, H200, B200). Elsewhere the option is refused with an error naming the device and its capability.

Numerics: weight row r is stored as q = round_e4m3(w_r / s_r) with s_r = amax(|w_r|) / 448 (e4m3's largest finite
value), so every row uses e4m3's whole range. Activations are quantized per token (row) the same way at every call.
_scaled_mm computes (q_x * s_x) @ (q_w * s_w)^T with float32 accumulation and a bfloat16 output (+ b):
``reference_linear`` is that product in plain torch on dequantized operands (the twin the tests check on CPU).
Norms, embeddings, the vision patch embedding, the heads (action in/out, time MLPs), the adaRMS dense layers and
attention stay bfloat16.

FP8 weights only (``model.dtype: fp8_weights``, FP8WeightLinear): the action expert's linear weights stored the same
way (e4m3, one scale per output row) and nothing else quantized. The denoise reads the expert ten times per
observation and its 50-row matmuls are bound by the weight reads, so it reads half the bytes of bfloat16 (the
memory-bound GPUs robots carry: a Jetson Thor's 273 GB/s). The few-rows matmul (few_rows_matmul.py) widens the
weights to bfloat16 as it loads them (exact: e4m3 values are bfloat16 values) and multiplies its float32 sums by the
row scales; activations stay bfloat16, so the actions move only by the weights' rounding. Its twin is
few_rows_matmul.scaled_linear. Vision and the prefix (hundreds of rows, compute-bound on GPUs) stay bfloat16.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .few_rows_matmul import FP8Weights, few_rows_linear, scaled_linear
from .fused import triton_available

E4M3_MAX = 448.0
WEIGHTS_ONLY = "fp8_weights"  # model.dtype's name for FP8WeightLinear
MIN_CAPABILITY = (8, 9)


def fp8_support(device, what: str = "fp8") -> Tuple[bool, str]:
    """(supported, why not) for ``model.dtype: <what>``: FP8 matmuls need CUDA, compute capability >= 8.9 and
    torch._scaled_mm; FP8 weights only (fp8_weights) the same GPUs (Triton widens e4m3 there) and Triton."""
    device = torch.device(device)
    if device.type != "cuda":
        return False, (f"model.dtype {what} needs a CUDA GPU with FP8 tensor cores (compute capability >= 8.9: L4, "
                       f"L40, H100, H200, B200, Jetson Thor); device {device} is not a CUDA device")
    if not hasattr(torch, "float8_e4m3fn") or not hasattr(torch, "_scaled_mm"):
        return False, f"model.dtype {what}: this torch ({torch.__version__}) has no float8 matmul (torch._scaled_mm)"
    cap = torch.cuda.get_device_capability(device)
    if tuple(cap) < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return False, (f"model.dtype {what}: {device} ({name}) has compute capability {cap[0]}.{cap[1]}; FP8 "
                       "needs 8.9 or newer (L4, L40, H100, H200, B200, Jetson Thor): use bfloat16")
    if what == WEIGHTS_ONLY and not triton_available():
        return False, (f"model.dtype {what}: its matmul is a Triton kernel and Triton is not installed (pip "
                       "install triton, or use bfloat16)")
    return True, ""


def require_fp8(device, what: str = "fp8") -> None:
    ok, why = fp8_support(device, what)
    if not ok:
        raise ValueError(why)


def row_scales(w: torch.Tensor) -> torch.Tensor:
    """float32 [rows, 1]: amax of each row / 448 (1 for an all-zero row, so it quantizes to zeros)."""
    amax = w.detach().float().abs().amax(dim=-1, keepdim=True)
    return torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))


def quantize_rows(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(q float8_e4m3fn, scales float32 [rows, 1]) with w ~= q * scales."""
    scales = row_scales(w)
    q = (w.float() / scales).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scales


def dequantize(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return q.float() * scales


def reference_linear(x: torch.Tensor, qweight: torch.Tensor, wscale: torch.Tensor, bias: Optional[torch.Tensor],
                     out_dtype: torch.dtype) -> torch.Tensor:
    """What FP8Linear computes on the GPU, in plain torch: x quantized per row, both operands dequantized, float32
    product, + bias, cast to out_dtype."""
    x2 = x.reshape(-1, x.shape[-1])
    qx, xscale = quantize_rows(x2)
    out = dequantize(qx, xscale) @ dequantize(qweight, wscale).t()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype).view(*x.shape[:-1], qweight.shape[0])


def _scaled_product(x2: torch.Tensor, qweight: torch.Tensor, wscale_row: torch.Tensor,
                    out_dtype: torch.dtype) -> torch.Tensor:
    qx, xscale = quantize_rows(x2)
    return torch._scaled_mm(qx, qweight.t(), scale_a=xscale, scale_b=wscale_row, out_dtype=out_dtype)


class _ScaledProduct(torch.autograd.Function):
    """x2 @ W^T through torch._scaled_mm, differentiable in x2 (real-time chunking's guided denoise runs a backward
    pass through the expert): _scaled_mm has no derivative. The gradient passes the activation's e4m3 rounding
    straight through, as autograd of reference_linear (the twin) does, so dx = dy @ W with W dequantized to the
    output dtype, per call (no second copy of the weights is kept)."""

    @staticmethod
    def forward(ctx, x2, qweight, wscale, wscale_row, out_dtype):
        ctx.save_for_backward(qweight, wscale)
        ctx.dtypes = (x2.dtype, out_dtype)
        return _scaled_product(x2, qweight, wscale_row, out_dtype)

    @staticmethod
    def backward(ctx, dy):
        qweight, wscale = ctx.saved_tensors
        x_dtype, out_dtype = ctx.dtypes
        return (dy.to(out_dtype) @ dequantize(qweight, wscale).to(out_dtype)).to(x_dtype), None, None, None, None


class FP8Linear(nn.Module):
    """A quantized nn.Linear. ``weight`` (the dequantized weight, out_dtype) exists for the paths that read weights
    directly (the reference path's separate q/k/v and gate/up projections); the engine's forward uses _scaled_mm.
    A fused projection (gemma.FusedLinear: qkv, gate_up) is quantized row by row like any other, so its rows hold
    exactly what quantizing the separate projections would give."""

    def __init__(self, linear: nn.Linear, out_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        q, s = quantize_rows(linear.weight)
        self.register_buffer("qweight", q)
        self.register_buffer("wscale", s)  # [out, 1]
        self.register_buffer("wscale_row", s.t().contiguous())  # [1, out]: _scaled_mm's layout for the B scales
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(out_dtype),
                                                                  requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.out_dtype = out_dtype
        self.split_sizes = getattr(linear, "split_sizes", None)  # fused q/k/v or gate/up projections keep their split

    @property
    def weight(self) -> torch.Tensor:
        return dequantize(self.qweight, self.wscale).to(self.out_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda:
            return reference_linear(x, self.qweight, self.wscale, self.bias, self.out_dtype)
        return self.scaled_forward(x)

    def scaled_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The GPU's forward (torch._scaled_mm; CPU builds of torch run it too, which is how the tests check it),
        differentiable in x (_ScaledProduct)."""
        x2 = x.reshape(-1, x.shape[-1])
        if x2.requires_grad and torch.is_grad_enabled():
            out = _ScaledProduct.apply(x2, self.qweight, self.wscale, self.wscale_row, self.out_dtype)
        else:
            out = _scaled_product(x2, self.qweight, self.wscale_row, self.out_dtype)
        if self.bias is not None:  # added apart: not every torch build takes a bias with row-wise scales
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, fp8 e4m3 per-row scales -> {self.out_dtype}"


class FP8WeightLinear(FP8Weights):
    """An nn.Linear with FP8 weights only (model.dtype fp8_weights): ``qweight`` e4m3 [out, in] with one float32
    scale per output row (``wscale`` [out]), quantized as FP8Linear's; the input stays in its dtype. Up to
    few_rows_matmul.MAX_ROWS rows on a GPU: the few-rows kernels, which widen the weights as they load them;
    elsewhere, and where x needs a gradient (the guided denoise), their twin few_rows_matmul.scaled_linear."""

    def __init__(self, linear: nn.Linear, out_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        q, s = quantize_rows(linear.weight)
        self.register_buffer("qweight", q)
        self.register_buffer("wscale", s[:, 0].contiguous())  # [out] float32
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(out_dtype),
                                                                  requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.out_dtype = out_dtype
        self.split_sizes = getattr(linear, "split_sizes", None)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight in out_dtype (the reference path's separate q/k/v and gate/up projections)."""
        return dequantize(self.qweight, self.wscale[:, None]).to(self.out_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.out_dtype)
        if x.requires_grad and torch.is_grad_enabled():  # the custom op has no derivative; its twin does
            return scaled_linear(x, self.qweight, self.wscale, self.bias)
        return few_rows_linear(x, self.qweight, self.bias, self.wscale)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, fp8 e4m3 weights only, per-row scales"


# the projections of the attention and MLP blocks (not the adaRMS dense layers: they run once per step, at load);
# gate_up is the Gemma MLP's fused gate_proj + up_proj (per-row scales: the same as quantizing the two apart)
QUANTIZED = ("qkv", "o_proj", "gate_up", "down_proj", "out_proj", "fc1", "fc2")


def _quantizable(name: str, linear: nn.Module, weights_only: bool = False) -> bool:
    # _scaled_mm needs both matrix dimensions to be multiples of 16 (the few-rows kernels, any)
    return (name in QUANTIZED and isinstance(linear, nn.Linear)
            and (weights_only or (linear.in_features % 16 == 0 and linear.out_features % 16 == 0)))


def quantize_model(model: nn.Module, check_device: bool = True, weights_only: bool = False) -> int:
    """Replace the linear layers of the SigLIP, Gemma and expert layers by FP8Linear (in place); returns how many.
    ``weights_only`` (model.dtype fp8_weights): the expert's alone, by FP8WeightLinear. ``check_device``: refuse
    (ValueError naming the device) where FP8 matmuls do not exist. Tests pass False on CPU to check the quantization
    math through the twins (reference_linear, few_rows_matmul.scaled_linear)."""
    if check_device:
        require_fp8(next(model.parameters()).device, WEIGHTS_ONLY if weights_only else "fp8")
    count = 0
    stacks = [model.expert.layers] if weights_only else [model.vision.encoder.layers, model.vlm.layers,
                                                         model.expert.layers]
    make = FP8WeightLinear if weights_only else FP8Linear
    for layers in stacks:
        for layer in layers:
            for owner in list(layer.modules()):
                for name, child in list(owner.named_children()):
                    if _quantizable(name, child, weights_only):
                        setattr(owner, name, make(child, out_dtype=child.weight.dtype))
                        count += 1
    if hasattr(model, "clear_step_conditioning"):
        model.clear_step_conditioning()
    return count
