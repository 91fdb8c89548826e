"""Autograd for the fused layer ops (model/fused.py): real-time chunking's guided denoise differentiates the velocity
with respect to x_t (model/rtc.py), and with this its forward and backward passes both run fused kernels.

Each backward is one more ``torch.library`` custom op, one Triton kernel on CUDA and a closed-form plain-torch twin
elsewhere (computed in float32, float64 for float64 inputs, returned in the input's dtype):

    turbopi::rms_norm_backward   dx' = r (g - x' r^2 mean(g x')) [+ d_sum], r = rsqrt(mean(x'^2) + eps),
                                 g = dy (1 + w) or dy (1 + scale): rms_norm's, and add_rms_norm's with x' its sum
                                 x + branch [* gate] (x gets dx', the branch dx' times the gate)
    turbopi::gelu_gate_backward  gelu_tanh'(gate) up dy for the gate half, gelu_tanh(gate) dy for the up half
    turbopi::qkv_rope_backward   the rotation's transpose for q and k, g cos + rotate_half^T(g sin) with
                                 rotate_half^T(y) = (y2, -y1); v's gradient as it is; all back into the fused QKV
                                 layout (qkv_rope_heads' backward)

The gradient flows to what the guided denoise differentiates: x, branch, gate_up and qkv. The norms' weights, the
adaRMS scale/shift/gate (time conditioning) and the rotary tables are constants there; an op asked for their
gradient raises rather than return a wrong one. test/test_fused_grad.py checks every backward against autograd of
the op's twin, gelu_gate and qkv_rope_heads by float64 gradcheck, each kernel against its twin under Triton's
interpreter (fused_interpreter_checks.py), and the fused guided denoise against the plain one.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from . import fused
from .gemma import RMS_EPS

triton, tl = fused.triton, fused.tl
if triton is not None:
    from .fused import _wait_for_inputs  # noqa: F401 - every kernel's first call (programmatic dependent launch)
KERNELS = ("_rms_backward_kernel", "_gelu_gate_backward_kernel", "_qkv_rope_backward_kernel")


def _wide(t: torch.Tensor) -> torch.Tensor:
    """t in the dtype the twins compute in: float32, or float64 for float64 inputs."""
    return t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)


# --- twins -------------------------------------------------------------------------------------------------------
def rms_backward_twin(total: torch.Tensor, dy: torch.Tensor, d_sum: Optional[torch.Tensor],
                      weight: Optional[torch.Tensor], scale: Optional[torch.Tensor]) -> torch.Tensor:
    """dL/dx' of fused.rms_norm_twin at x' = total [..., W] for dL/dy = dy, plus d_sum (the gradient that reaches
    add_rms_norm's sum output directly), in total's dtype."""
    xf = _wide(total)
    r = torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + RMS_EPS)
    g = _wide(dy) * (1.0 + _wide(weight if scale is None else scale))
    d = r * (g - xf * (r * r) * torch.mean(g * xf, dim=-1, keepdim=True))
    return (d if d_sum is None else d + _wide(d_sum)).to(total.dtype)


def gelu_gate_backward_twin(gate_up: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """dL/d gate_up [..., 2F] of fused.gelu_gate_twin for dL/dout = dy [..., F]."""
    gate, up = torch.split(_wide(gate_up), gate_up.shape[-1] // 2, dim=-1)
    dy = _wide(dy)
    d_gate = torch.ops.aten.gelu_backward(dy * up, gate, approximate="tanh")
    return torch.cat([d_gate, dy * F.gelu(gate, approximate="tanh")], dim=-1).to(gate_up.dtype)


def rope_backward_twin(g: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """dL/dx (wide) of fused.rope_twin (x cos + rotate_half(x) sin) for dL/dy = g [B, L, heads, D]."""
    g = _wide(g)
    gs = g * _wide(sin)
    half = g.shape[-1] // 2
    return g * _wide(cos) + torch.cat((gs[..., half:], -gs[..., :half]), dim=-1)


def qkv_rope_backward_twin(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, cos: torch.Tensor,
                           sin: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """dq [B, L, H, D], dk and dv [B, KV, L, D] -> d qkv [B, L, (H + 2 KV) D] in ``dtype``."""
    B, L = dq.shape[:2]
    parts = (rope_backward_twin(dq, cos, sin), rope_backward_twin(dk.transpose(1, 2), cos, sin),
             _wide(dv.transpose(1, 2)))
    return torch.cat([p.reshape(B, L, -1) for p in parts], dim=-1).to(dtype)


# --- Triton kernels ----------------------------------------------------------------------------------------------
if triton is not None:
    @triton.jit
    def _rms_backward_kernel(x_ptr, dy_ptr, ds_ptr, w_ptr, scale_ptr, d_ptr, W, L, stride_mod, eps,
                             HAS_SUM: tl.constexpr, ADAPTIVE: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
        _wait_for_inputs(PDL)
        row = tl.program_id(0)
        b = row // L
        cols = tl.arange(0, BLOCK)
        m = cols < W
        x = tl.load(x_ptr + row * W + cols, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + row * W + cols, mask=m, other=0.0).to(tl.float32)
        if ADAPTIVE:
            w = tl.load(scale_ptr + b * stride_mod + cols, mask=m, other=0.0).to(tl.float32)
        else:
            w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
        g = dy * (1.0 + w)
        r = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / W + eps)
        d = r * (g - x * (r * r) * (tl.sum(g * x, axis=0) / W))
        if HAS_SUM:
            d += tl.load(ds_ptr + row * W + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(d_ptr + row * W + cols, d, mask=m)

    @triton.jit
    def _gelu_gate_backward_kernel(gu_ptr, dy_ptr, dgu_ptr, N, BLOCK: tl.constexpr, PDL: tl.constexpr):
        """Row ``program_id(0)`` of gate_up [rows, 2N] and dy [rows, N] -> d gate_up [rows, 2N]."""
        _wait_for_inputs(PDL)
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = cols < N
        g = tl.load(gu_ptr + row * (2 * N) + cols, mask=m, other=0.0).to(tl.float32)
        u = tl.load(gu_ptr + row * (2 * N) + N + cols, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + row * N + cols, mask=m, other=0.0).to(tl.float32)
        k = 0.7978845608028654
        z = k * (g + 0.044715 * g * g * g)
        z = tl.minimum(tl.maximum(z, -20.0), 20.0)  # tanh is +-1 in float32 beyond |z| = 9; keeps exp finite
        tanh = 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)
        slope = 0.5 * (1.0 + tanh) + 0.5 * g * (1.0 - tanh * tanh) * k * (1.0 + 3.0 * 0.044715 * g * g)
        tl.store(dgu_ptr + row * (2 * N) + cols, dy * u * slope, mask=m)
        tl.store(dgu_ptr + row * (2 * N) + N + cols, dy * (0.5 * g * (1.0 + tanh)), mask=m)

    @triton.jit
    def _qkv_rope_backward_kernel(dq_ptr, dk_ptr, dv_ptr, cos_ptr, sin_ptr, dqkv_ptr, L, stride_cb, stride_cl,
                                  stride_kb, stride_kh, stride_kl, stride_vb, stride_vh, stride_vl,
                                  H: tl.constexpr, KV: tl.constexpr, D: tl.constexpr, HALF_BLOCK: tl.constexpr,
                                  PDL: tl.constexpr):
        _wait_for_inputs(PDL)
        token = tl.program_id(0)  # b * L + l
        head = tl.program_id(1)  # 0 .. H + 2 KV
        b = token // L
        l_ = token % L
        half = D // 2
        cols = tl.arange(0, HALF_BLOCK)
        m = cols < half
        dst = dqkv_ptr + token * (H + 2 * KV) * D + head * D
        if head < H + KV:
            if head < H:
                src = dq_ptr + (token * H + head) * D
            else:
                src = dk_ptr + b * stride_kb + (head - H) * stride_kh + l_ * stride_kl
            g1 = tl.load(src + cols, mask=m, other=0.0).to(tl.float32)
            g2 = tl.load(src + half + cols, mask=m, other=0.0).to(tl.float32)
            cbase = b * stride_cb + l_ * stride_cl
            c1 = tl.load(cos_ptr + cbase + cols, mask=m, other=0.0).to(tl.float32)
            c2 = tl.load(cos_ptr + cbase + half + cols, mask=m, other=0.0).to(tl.float32)
            s1 = tl.load(sin_ptr + cbase + cols, mask=m, other=0.0).to(tl.float32)
            s2 = tl.load(sin_ptr + cbase + half + cols, mask=m, other=0.0).to(tl.float32)
            tl.store(dst + cols, g1 * c1 + g2 * s2, mask=m)  # g cos + rotate_half^T(g sin)
            tl.store(dst + half + cols, g2 * c2 - g1 * s1, mask=m)
        else:
            src = dv_ptr + b * stride_vb + (head - H - KV) * stride_vh + l_ * stride_vl
            tl.store(dst + cols, tl.load(src + cols, mask=m, other=0.0), mask=m)
            tl.store(dst + half + cols, tl.load(src + half + cols, mask=m, other=0.0), mask=m)

fused.register_kernels(globals(), KERNELS)


# --- the backward ops ----------------------------------------------------------------------------------------------
@torch.library.custom_op("turbopi::rms_norm_backward", mutates_args=())
def rms_norm_backward(total: torch.Tensor, dy: torch.Tensor, d_sum: Optional[torch.Tensor],
                      weight: Optional[torch.Tensor], scale: Optional[torch.Tensor]) -> torch.Tensor:
    """See rms_backward_twin. total, dy, d_sum [B, L, W]; weight [W] or scale [B, 1, W]."""
    if not fused.kernels_for(total):
        return rms_backward_twin(total, dy, d_sum, weight, scale)
    W = total.shape[-1]
    total, dy = total.contiguous(), dy.contiguous()
    d = torch.empty_like(total)
    _rms_backward_kernel[(total.numel() // W,)](
        total, dy, d_sum.contiguous() if d_sum is not None else total, weight if weight is not None else total,
        scale if scale is not None else total, d, W, total.shape[1] if total.ndim == 3 else 1,
        fused._mod_stride(scale, W), RMS_EPS, HAS_SUM=d_sum is not None, ADAPTIVE=scale is not None,
        BLOCK=fused._pow2(W), **fused.launch_options())
    return d


@rms_norm_backward.register_fake
def _(total, dy, d_sum, weight, scale):
    return torch.empty_like(total)


@torch.library.custom_op("turbopi::gelu_gate_backward", mutates_args=())
def gelu_gate_backward(gate_up: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """See gelu_gate_backward_twin."""
    if not fused.kernels_for(gate_up):
        return gelu_gate_backward_twin(gate_up, dy)
    n = gate_up.shape[-1] // 2
    gu, dy = gate_up.contiguous(), dy.contiguous()
    out = torch.empty_like(gu)
    rows = gu.numel() // (2 * n) if n else 0
    block = min(1024, fused._pow2(n))
    if rows:
        _gelu_gate_backward_kernel[(rows, triton.cdiv(n, block))](gu, dy, out, n, BLOCK=block, **fused.launch_options())
    return out


@gelu_gate_backward.register_fake
def _(gate_up, dy):
    return torch.empty_like(gate_up)


@torch.library.custom_op("turbopi::qkv_rope_backward", mutates_args=())
def qkv_rope_backward(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      dtype: torch.dtype) -> torch.Tensor:
    """See qkv_rope_backward_twin. cos/sin [B, L, 1, D]."""
    if not fused.kernels_for(dq):
        return qkv_rope_backward_twin(dq, dk, dv, cos, sin, dtype)
    B, L, H, D = dq.shape
    KV = dk.shape[1]
    dq, cos, sin = dq.contiguous(), cos.contiguous(), sin.contiguous()
    dk = dk if dk.stride(-1) == 1 else dk.contiguous()
    dv = dv if dv.stride(-1) == 1 else dv.contiguous()
    out = dq.new_empty((B, L, (H + 2 * KV) * D), dtype=dtype)
    _qkv_rope_backward_kernel[(B * L, H + 2 * KV)](
        dq, dk, dv, cos, sin, out, L, cos.stride(0), cos.stride(1), dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2), H=H, KV=KV, D=D, HALF_BLOCK=fused._pow2(D // 2),
        **fused.launch_options())
    return out


@qkv_rope_backward.register_fake
def _(dq, dk, dv, cos, sin, dtype):
    B, L, H, D = dq.shape
    return dq.new_empty((B, L, (H + 2 * dk.shape[1]) * D), dtype=dtype)


# --- autograd of the forward ops -----------------------------------------------------------------------------------
def _constants(op: str, names: Sequence[str], values: Sequence[Optional[torch.Tensor]]) -> None:
    for name, value in zip(names, values):
        if isinstance(value, torch.Tensor) and value.requires_grad:
            raise NotImplementedError(f"turbopi::{op} has no gradient with respect to {name}: it is differentiable "
                                      "in its activations only (x, branch, gate_up, qkv); compute "
                                      f"{name} without requires_grad, or use the plain modules")


def _rms_setup(ctx, inputs, output):
    x, weight, scale, shift = inputs
    _constants("rms_norm", ("weight", "scale", "shift"), (weight, scale, shift))
    ctx.save_for_backward(x, weight, scale)


def _rms_grad(ctx, dy):
    x, weight, scale = ctx.saved_tensors
    return rms_norm_backward(x, dy, None, weight, scale), None, None, None


def _add_rms_setup(ctx, inputs, output):
    x, branch, gate, weight, scale, shift = inputs
    _constants("add_rms_norm", ("gate", "weight", "scale", "shift"), (gate, weight, scale, shift))
    ctx.save_for_backward(output[0], gate, weight, scale)
    ctx.dtypes = (x.dtype, branch.dtype)


def _add_rms_grad(ctx, d_sum, dy):
    total, gate, weight, scale = ctx.saved_tensors
    d = rms_norm_backward(total, dy, d_sum, weight, scale)
    d_branch = d if gate is None else d * gate.to(d.dtype)
    return d.to(ctx.dtypes[0]), d_branch.to(ctx.dtypes[1]), None, None, None, None


def _gelu_gate_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _gelu_gate_grad(ctx, dy):
    (gate_up,) = ctx.saved_tensors
    return gelu_gate_backward(gate_up, dy)


def _qkv_rope_heads_setup(ctx, inputs, output):
    qkv, cos, sin, _, _ = inputs
    _constants("qkv_rope_heads", ("cos", "sin"), (cos, sin))
    ctx.save_for_backward(cos, sin)
    ctx.dtype = qkv.dtype


def _qkv_rope_heads_grad(ctx, dq, dk, dv):
    cos, sin = ctx.saved_tensors
    return qkv_rope_backward(dq, dk, dv, cos, sin, ctx.dtype), None, None, None, None


torch.library.register_autograd("turbopi::rms_norm", _rms_grad, setup_context=_rms_setup)
torch.library.register_autograd("turbopi::add_rms_norm", _add_rms_grad, setup_context=_add_rms_setup)
torch.library.register_autograd("turbopi::gelu_gate", _gelu_gate_grad, setup_context=_gelu_gate_setup)
torch.library.register_autograd("turbopi::qkv_rope_heads", _qkv_rope_heads_grad, setup_context=_qkv_rope_heads_setup)

__all__ = ["KERNELS", "gelu_gate_backward", "gelu_gate_backward_twin", "qkv_rope_backward", "qkv_rope_backward_twin",
           "rms_backward_twin", "rms_norm_backward", "rope_backward_twin"]
