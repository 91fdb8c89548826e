"""Matmuls of few rows by wide weights (Triton split-K, with F.linear as its twin): the action expert's in a denoise.

A denoise step multiplies 50 action rows (pi0's and pi0.5's horizon) by each expert layer's four weights (qkv,
o_proj, gate_up, down_proj: 34.6 MB a layer in bfloat16). That is weight traffic, 8.7 us a layer at an H200's
measured 4.06 TB/s, but cuBLAS took about 26 us a layer there (docs/bench/kernel_profile_h200.txt: 5.3 ms of the
fused pi0 denoise's 12.7). Few rows leave a row-tiled GEMM few column tiles, so few thread blocks stream the weights.

Here one program takes every row (at most MAX_ROWS, one row block) by a block of output columns and a share of K,
so the weight streams through column blocks x K splits programs, about one per SM: float32 partial sums
[splits, M, N], then a second kernel adds them and rounds once (one kernel, rounding in its store, with one split).
The products and sums are float32, as cuBLAS's are; only the order of the float32 additions differs from it.

    turbopi::few_rows_linear(x [..., K], w [N, K], bias [N] or None) -> [..., N]        (= F.linear(x, w, bias))
    turbopi::few_rows_linear_add_rms_norm(a, w, x, gate, weight, scale, shift, gated) -> (x', its norm)
        (= fused.add_rms_norm(x, F.linear(gelu_gate(a) if gated else a, w), gate, weight, scale, shift))

The second is a layer's o_proj (a: the attention's output) or down_proj (gated: a is gate_up, and gelu_gate is
computed as the kernel loads it) with the residual add and the norm after it: the K shares are summed in the norm's
kernel. turbopi::few_rows_qkv_rope is the layer's qkv with rotary and the K/V cache write after it, the K shares
summed in the rotary kernel. Each saves the launches of the kernels it replaces, with their values bit for bit.
FewRowsMatmuls puts them in fused.gemma_stack, and the float32 action heads through the first (IEEE float32
products, a bias). Each op also takes FP8 weights with their row scales (``w_scale``: fp8.FP8WeightLinear,
model.dtype fp8_weights): the kernel widens them to x's dtype as it loads them, half the bytes read, and scales its
float32 sums; the twin is scaled_linear.

On a GPU each op measures its configs (configs(): about one and two programs an SM, 32-128 output columns) against
cuBLAS the first time a shape runs, and launches the fastest one that matches cuBLAS, which may be cuBLAS itself
(kernel_choice.py). Opt-in (model.few_rows_matmul, PI0Model.use_fused(few_rows_matmul=True), turbopi-bench
--few-rows-matmul) and not yet measured in the model: tools/gemm_bench.py times its configs against cuBLAS, and the
GPU report the fused denoise graph with and without it, in one run, with parity; neither has run on a GPU yet.
Elsewhere (CPU, more rows, mixed dtypes) the ops are F.linear (and add_rms_norm).
"""
from __future__ import annotations

import functools
import os
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from . import fused
from .kernel_choice import CHOICES, Candidate
from .fused import kernels_for, triton, tl
if triton is not None:
    from .fused import _gelu_tanh  # noqa: F401 - the GATED prologue's gelu (a Triton function: found by name)
    from .fused import _wait_for_inputs  # noqa: F401 - every kernel's first call (programmatic dependent launch)

KERNELS = ("_few_rows_matmul_kernel", "_sum_splits_kernel")
MAX_ROWS = 64  # the one row block: all rows in every program
BLOCK_N = 64  # output columns a program
BLOCK_K = 128  # K a step
FLOAT32_BLOCK_K = 32  # K a step for float32 (IEEE products: wider float32 tiles spill registers)
NUM_WARPS = 4
SUM_BLOCK = 1024  # outputs a program of the second kernel
CPU_SMS = 132  # off CUDA (the interpreter; recording the launches): an H100's SMs, so the launches are a GPU's
_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"  # read when Triton is imported, as Triton does
FP8 = getattr(torch, "float8_e4m3fn", None)  # fp8.FP8WeightLinear's weights


def use_kernels(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether x [..., K] @ w [N, K]^T takes the kernels: Triton runs on x's device, at most MAX_ROWS rows, x and w
    of one dtype: 16-bit, or float32 (IEEE float32 products, as cuBLAS's float32 GEMM: the float32 action heads
    openpi keeps in its bfloat16 models); or 16-bit x with FP8 weights (fp8.FP8WeightLinear's, with their scales)."""
    rows = x.numel() // max(x.shape[-1], 1)
    same = x.dtype == w.dtype and x.dtype in (torch.bfloat16, torch.float16, torch.float32)
    fp8_weights = is_fp8_weight(w) and x.dtype in (torch.bfloat16, torch.float16)
    return kernels_for(x) and 0 < rows <= MAX_ROWS and w.dim() == 2 and (same or fp8_weights)


def is_fp8_weight(w: torch.Tensor) -> bool:
    return w.dtype == FP8


def scaled_linear(x: torch.Tensor, q: torch.Tensor, w_scale: torch.Tensor,
                  bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The twin of the kernels on FP8 weights: x [..., K] @ (q [N, K] (float8 e4m3) * w_scale [N])^T + bias, the
    products and sums in float32 (e4m3 values are exact in x's 16-bit dtype, as the kernel widens them), the scale
    applied to the float32 sums, rounded once to x's dtype. Differentiable in x (real-time chunking's guided
    denoise)."""
    y = torch.matmul(x.float(), q.float().t()) * w_scale.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def _check_scale(w: torch.Tensor, w_scale: Optional[torch.Tensor]) -> None:
    if is_fp8_weight(w) != (w_scale is not None):
        raise ValueError("few_rows_matmul: FP8 weights need their scales (w_scale [N] float32), other weights none; "
                         f"got weights {w.dtype} and w_scale {None if w_scale is None else list(w_scale.shape)}")
    if w_scale is not None and (w_scale.shape != (w.shape[0],) or w_scale.dtype != torch.float32):
        raise ValueError(f"few_rows_matmul: w_scale must be [{w.shape[0]}] float32 (one scale per output row), got "
                         f"{list(w_scale.shape)} {w_scale.dtype}")


def plan(n: int, k: int, sms: int, block_n: int = BLOCK_N, block_k: int = BLOCK_K) -> Tuple[int, int, int]:
    """(block_n, block_k, K splits) for N output columns over K: enough K splits for about one program per SM
    (cdiv(N, block_n) column blocks each), every split at least one block_k step of K. A start, to be replaced by
    measured configs (tools/gemm_bench.py)."""
    steps = triton.cdiv(k, block_k)
    return block_n, block_k, max(1, min(steps, triton.cdiv(sms, triton.cdiv(n, block_n))))


def plan_for(x: torch.Tensor, w: torch.Tensor) -> Tuple[int, int, int]:
    """plan() for x [..., K] @ w [N, K]^T on x's device (CPU_SMS off CUDA), K steps for x's dtype: the config
    few_rows_linear launches where nothing was measured."""
    return plan(w.shape[0], w.shape[1], _sms(x), block_k=_block_k(x))


def configs(n: int, k: int, sms: int, block_k: int = BLOCK_K) -> Dict[str, Tuple[int, int, int]]:
    """The configs a GPU measures for N output columns over K (kernel_choice.py), by name: plan()'s for about one
    and about two programs an SM, with 32, 64 or 128 output columns a program, K steps of ``block_k``
    (FLOAT32_BLOCK_K for float32); duplicates once."""
    out: Dict[str, Tuple[int, int, int]] = {}
    for block_n in (32, 64, 128):
        for per_sm in (1, 2):
            cfg = plan(n, k, sms * per_sm, block_n, block_k)
            out.setdefault(f"few-rows {cfg[0]} cols, {cfg[2]} splits", cfg)
    return out


def _sms(x: torch.Tensor) -> int:
    return fused.sm_count(x.device.index or 0) if x.is_cuda else CPU_SMS


def _block_k(x: torch.Tensor) -> int:
    return FLOAT32_BLOCK_K if x.dtype == torch.float32 else BLOCK_K


@functools.lru_cache(maxsize=128)
def _options(reference: Candidate, launcher: Candidate, n: int, k: int, sms: int,
             block_k: int) -> Dict[str, Candidate]:
    """An op's candidates: "cublas" (``reference``, the library ops) and configs()'s through ``launcher``."""
    out: Dict[str, Candidate] = {"cublas": reference}
    for name, (block_n, bk, splits) in configs(n, k, sms, block_k).items():
        out[name] = functools.partial(launcher, block_n=block_n, block_k=bk, splits=splits)
    return out


def _dispatch(op: str, key: str, reference: Candidate, launcher: Candidate, args: Sequence):
    """Run ``args`` (rows at args[0], the weights at args[1]) through the candidate the kernel choice measured
    fastest for this shape (``key``); where nothing was measured (off CUDA, inside a capture) through ``launcher``
    with plan_for's config."""
    x, w = args[0], args[1]
    options = _options(reference, launcher, w.shape[0], w.shape[1], _sms(x), _block_k(x))
    picked = CHOICES.choose(op, key, options, args, "cublas", rotate=(1,))
    if picked is not None:
        return options[picked](*args)
    block_n, block_k, splits = plan_for(x, w)
    return launcher(*args, block_n=block_n, block_k=block_k, splits=splits)


def _shape_key(rows: int, w: torch.Tensor, dtype: torch.dtype) -> str:
    fp8 = " (fp8 weights)" if is_fp8_weight(w) else ""
    return f"{rows}x{w.shape[1]} @ {w.shape[1]}x{w.shape[0]}{fp8} {str(dtype).replace('torch.', '')}"


def _library_linear(x, w, bias=None, w_scale=None):
    """F.linear, or on FP8 weights its twin scaled_linear (cuBLAS on the widened weights)."""
    return F.linear(x, w, bias) if w_scale is None else scaled_linear(x, w, w_scale, bias)


def candidates(x: torch.Tensor, w: torch.Tensor) -> Dict[str, Candidate]:
    """cuBLAS (the reference; scaled_linear on FP8 weights) and configs()'s, each a function of (x [M, K], w, bias
    or None, w_scale or None)."""
    return _options(_library_linear, _launch_bias, w.shape[0], w.shape[1], _sms(x), _block_k(x))


def _launch_bias(x, w, bias, w_scale=None, **config):
    return launch(x, w, bias=bias, w_scale=w_scale, **config)


if triton is not None:
    # M is not specialized: one row (pi0's state token) compiles the same code as the denoise's 50 (specialized on
    # M == 1, the float32 kernel spilled on sm_110: tools/kernel_targets.py), and no extra compile at the warm-up
    @triton.jit(do_not_specialize=["M"])
    def _few_rows_matmul_kernel(x_ptr, w_ptr, y_ptr, b_ptr, s_ptr, M, N, K, k_per_split, stride_xm,
                                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                                UPCAST: tl.constexpr, GATED: tl.constexpr, IEEE: tl.constexpr,
                                HAS_BIAS: tl.constexpr, W_SCALED: tl.constexpr, PDL: tl.constexpr):
        """Program (column block, K split): y[split, :, cols] = x[:, ks] @ w[cols, ks]^T in float32 (x [M, K] rows
        stride_xm apart, w [N, K] row-major, y [SPLITS, M, N]; a 16-bit y with one split: rounded by the store).
        UPCAST (Triton's interpreter, whose tl.dot takes no bfloat16): the same products in float32. GATED: x is
        the MLP's gate_up [M, 2K] (gate, then up) and the product is of gelu_gate(gate_up), computed and rounded
        as fused._gelu_gate_kernel stores it. IEEE: float32 x and w, IEEE float32 products (no TF32). HAS_BIAS
        (one split only): y = the products + bias [N], in float32, rounded once by the store. W_SCALED: w is FP8
        (e4m3), widened to x's dtype as it loads (exact), and each K share's float32 sums are multiplied by the
        row scales s [N] (fp8.FP8WeightLinear: half the weight bytes of bfloat16)."""
        _wait_for_inputs(PDL)
        pid_n = tl.program_id(0)
        split = tl.program_id(1)
        rows = tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < M
        cmask = cols < N
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        k_start = split * k_per_split
        k_stop = tl.minimum(k_start + k_per_split, K)
        for k0 in range(k_start, k_stop, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < k_stop
            xmask = rmask[:, None] & kmask[None, :]
            x = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :], mask=xmask, other=0.0)
            if GATED:
                up = tl.load(x_ptr + rows[:, None] * stride_xm + K + ks[None, :], mask=xmask, other=0.0)
                x = (_gelu_tanh(x.to(tl.float32), x_ptr) * up.to(tl.float32)).to(x_ptr.dtype.element_ty)
            w = tl.load(w_ptr + cols[:, None] * K + ks[None, :], mask=cmask[:, None] & kmask[None, :], other=0.0)
            if W_SCALED and not UPCAST:
                w = w.to(x_ptr.dtype.element_ty)
            if UPCAST:
                acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
            elif IEEE:
                acc += tl.dot(x, tl.trans(w), input_precision="ieee")
            else:
                acc += tl.dot(x, tl.trans(w))
        if W_SCALED:
            acc = acc * tl.load(s_ptr + cols, mask=cmask, other=0.0)[None, :]
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + (split * M + rows[:, None]) * N + cols[None, :], acc, mask=rmask[:, None] & cmask[None, :])

    @triton.jit
    def _sum_splits_kernel(p_ptr, y_ptr, b_ptr, MN, N, SPLITS, BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr,
                           PDL: tl.constexpr):
        """y[i] = sum_s p[s, i] (+ bias[i % N]), rounded once to y's dtype by the store."""
        _wait_for_inputs(PDL)
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < MN
        acc = tl.zeros([BLOCK], tl.float32)
        for s in range(0, SPLITS):
            acc += tl.load(p_ptr + s * MN + i, mask=m, other=0.0)
        if HAS_BIAS:
            acc += tl.load(b_ptr + i % N, mask=m, other=0.0).to(tl.float32)
        tl.store(y_ptr + i, acc, mask=m)

    fused.register_kernels(globals(), KERNELS)


def _check(x: torch.Tensor, w: torch.Tensor, gated: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    k = 2 * w.shape[-1] if gated else w.shape[-1]
    if x.dim() != 2 or x.shape[0] > MAX_ROWS or w.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"few_rows_matmul: x [M <= {MAX_ROWS}, {'2K' if gated else 'K'}] and w [N, K], got "
                         f"{list(x.shape)} and {list(w.shape)}")
    return (x if x.stride(-1) == 1 else x.contiguous()), w.contiguous()


def _first(x, w, out, block_n, k_per_split, splits, block_k, num_warps, gated: bool = False, bias=None,
           w_scale=None) -> None:
    M = x.shape[0]
    N, K = w.shape
    _few_rows_matmul_kernel[(triton.cdiv(N, block_n), splits)](
        x, w, out, bias if bias is not None else out, w_scale if w_scale is not None else out, M, N, K, k_per_split,
        x.stride(0), BLOCK_M=MAX_ROWS, BLOCK_N=block_n, BLOCK_K=block_k, UPCAST=_INTERPRETER, GATED=gated,
        IEEE=x.dtype == torch.float32, HAS_BIAS=bias is not None, W_SCALED=w_scale is not None, num_warps=num_warps,
        **fused.launch_options())


def launch(x: torch.Tensor, w: torch.Tensor, block_n: int = BLOCK_N, block_k: int = BLOCK_K, splits: int = 1,
           num_warps: int = NUM_WARPS, bias: Optional[torch.Tensor] = None,
           w_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [M, K] (unit stride in K) @ w [N, K]^T (+ bias [N]) for M <= MAX_ROWS: the first kernel, and with more
    than one split (whole block_k steps each: fused.split_in_steps) the second, which adds the bias then. FP8 w:
    with its row scales ``w_scale`` [N] (scaled_linear's values)."""
    x, w = _check(x, w)
    _check_scale(w, w_scale)
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != w.shape[0]:
            raise ValueError(f"few_rows_matmul: bias must be [{w.shape[0]}], got {list(bias.shape)}")
        bias = bias.contiguous()
    M, K = x.shape
    N = w.shape[0]
    k_per_split, splits = fused.split_in_steps(K, splits, block_k)
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    parts = y if splits == 1 else torch.empty((splits, M, N), dtype=torch.float32, device=x.device)
    _first(x, w, parts, block_n, k_per_split, splits, block_k, num_warps, bias=bias if splits == 1 else None,
           w_scale=w_scale)
    if splits > 1:
        _sum_splits_kernel[(triton.cdiv(M * N, SUM_BLOCK),)](parts, y, bias if bias is not None else parts, M * N, N,
                                                            splits, BLOCK=SUM_BLOCK, HAS_BIAS=bias is not None,
                                                            num_warps=4, **fused.launch_options())
    return y


def _partial_sums(x: torch.Tensor, w: torch.Tensor, block_n: int, block_k: int, splits: int, num_warps: int,
                  gated: bool = False, w_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The first kernel alone: x [M, K] (gated: [M, 2K]) @ w^T as float32 K shares [S, M, N] (even with one share;
    FP8 w: each share scaled by ``w_scale``), for a kernel after it to sum (launch_add_rms_norm, launch_qkv_rope)."""
    x, w = _check(x, w, gated)
    _check_scale(w, w_scale)
    N, K = w.shape
    k_per_split, splits = fused.split_in_steps(K, splits, block_k)
    parts = torch.empty((splits, x.shape[0], N), dtype=torch.float32, device=x.device)
    _first(x, w, parts, block_n, k_per_split, splits, block_k, num_warps, gated, w_scale=w_scale)
    return parts


def launch_add_rms_norm(a: torch.Tensor, w: torch.Tensor, x: torch.Tensor, gate: Optional[torch.Tensor],
                        weight: Optional[torch.Tensor], scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                        w_scale: Optional[torch.Tensor] = None, block_n: int = BLOCK_N, block_k: int = BLOCK_K,
                        splits: int = 1, num_warps: int = NUM_WARPS,
                        gated: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """fused.add_rms_norm(x, a [M, K] @ w^T, gate, weight, scale, shift) in two launches: the first kernel's float32
    K shares (one or more), summed in order and rounded in the norm's kernel (fused.add_rms_norm_parts): the values
    launch() and add_rms_norm give, without the sum kernel. x holds the M rows ([B, L, N]). ``gated``: a is the
    MLP's gate_up [M, 2K] and the matmul is of fused.gelu_gate(a), computed as it loads (one launch less again).
    FP8 w: with its row scales ``w_scale``."""
    parts = _partial_sums(a, w, block_n, block_k, splits, num_warps, gated, w_scale)
    return fused.add_rms_norm_parts(x, parts, gate, weight, scale, shift)


@torch.library.custom_op("turbopi::few_rows_linear", mutates_args=())
def few_rows_linear(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None,
                    w_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear(x, w, bias) for x [..., K], w [N, K], bias [N] or None (FP8 w: scaled_linear with its row scales
    ``w_scale`` [N]): the kernels where use_kernels(x, w) (on a GPU the config measured fastest, or cuBLAS:
    kernel_choice.py), else F.linear (scaled_linear)."""
    _check_scale(w, w_scale)
    if not use_kernels(x, w) or (bias is not None and bias.dtype != x.dtype):
        return _library_linear(x, w, bias, w_scale)
    rows = x.reshape(-1, x.shape[-1])
    key = _shape_key(rows.shape[0], w, x.dtype) + (" + bias" if bias is not None else "")
    y = _dispatch("few_rows_linear", key, _library_linear, _launch_bias, (rows, w, bias, w_scale))
    return y.reshape(*x.shape[:-1], w.shape[0])


@few_rows_linear.register_fake
def _(x, w, bias=None, w_scale=None):
    return x.new_empty((*x.shape[:-1], w.shape[0]))


def _library_add_rms_norm(a, w, x, gate, weight, scale, shift, w_scale=None, gated: bool = False):
    h = fused.gelu_gate(a) if gated else a
    return fused.add_rms_norm(x, _library_linear(h, w, None, w_scale), gate, weight, scale, shift)


def _library_gated_add_rms_norm(a, w, x, gate, weight, scale, shift, w_scale=None):
    return _library_add_rms_norm(a, w, x, gate, weight, scale, shift, w_scale, gated=True)


def _launch_gated_add_rms_norm(a, w, x, gate, weight, scale, shift, w_scale=None, **config):
    return launch_add_rms_norm(a, w, x, gate, weight, scale, shift, w_scale, gated=True, **config)


def _norm_ops(gated: bool) -> Tuple[Candidate, Candidate]:
    """(the reference, the launcher) of few_rows_linear_add_rms_norm."""
    return ((_library_gated_add_rms_norm, _launch_gated_add_rms_norm) if gated
            else (_library_add_rms_norm, launch_add_rms_norm))


def norm_candidates(a: torch.Tensor, w: torch.Tensor, gated: bool = False) -> Dict[str, Candidate]:
    """cuBLAS then fused.add_rms_norm (the reference; ``gated``: fused.gelu_gate first), and configs()'s through
    launch_add_rms_norm, each a function of (a [M, K or 2K], w, x, gate, weight, scale, shift, w_scale)."""
    return _options(*_norm_ops(gated), w.shape[0], w.shape[1], _sms(a), _block_k(a))


@torch.library.custom_op("turbopi::few_rows_linear_add_rms_norm", mutates_args=())
def few_rows_linear_add_rms_norm(a: torch.Tensor, w: torch.Tensor, x: torch.Tensor, gate: Optional[torch.Tensor],
                                 weight: Optional[torch.Tensor], scale: Optional[torch.Tensor],
                                 shift: Optional[torch.Tensor], gated: bool,
                                 w_scale: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """fused.add_rms_norm(x, F.linear(a, w), gate, weight, scale, shift) for a [..., K] (x [..., N]); ``gated``: of
    fused.gelu_gate(a) for a [..., 2K]; FP8 w: scaled_linear with its row scales ``w_scale``. Where use_kernels(a,
    w): the few-rows matmul with its K shares summed in the norm's kernel (launch_add_rms_norm; on a GPU the config
    measured fastest, or cuBLAS: kernel_choice.py); else the library ops."""
    _check_scale(w, w_scale)
    if not use_kernels(a, w):
        return _library_add_rms_norm(a, w, x, gate, weight, scale, shift, w_scale, gated)
    rows = a.reshape(-1, a.shape[-1])
    key = (f"{'gelu_gate ' if gated else ''}{_shape_key(rows.shape[0], w, a.dtype)} + "
           f"{'adaRMS' if scale is not None else 'RMS'}{' gated' if gate is not None else ''}")
    return _dispatch("few_rows_linear_add_rms_norm", key, *_norm_ops(gated),
                     (rows, w, x, gate, weight, scale, shift, w_scale))


@few_rows_linear_add_rms_norm.register_fake
def _(a, w, x, gate, weight, scale, shift, gated, w_scale=None):
    return torch.empty_like(x), torch.empty_like(x)


def _library_qkv_rope(y, w, cos, sin, keys, values, start, num_heads, num_kv_heads, w_scale=None):
    return fused.qkv_rope(_library_linear(y, w, None, w_scale), cos, sin, keys, values, start, num_heads,
                          num_kv_heads)


def launch_qkv_rope(y: torch.Tensor, w: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor,
                    values: torch.Tensor, start: int, num_heads: int, num_kv_heads: int,
                    w_scale: Optional[torch.Tensor] = None, block_n: int = BLOCK_N, block_k: int = BLOCK_K,
                    splits: int = 1, num_warps: int = NUM_WARPS) -> torch.Tensor:
    """fused.qkv_rope(F.linear(y [B, L, K], w), ...) in two launches: the first kernel's float32 K shares, summed in
    order and rounded in the rotary kernel (fused.qkv_rope_parts): the values launch() and qkv_rope give (q, and the
    K/V written into the cache), without the sum kernel. FP8 w: with its row scales ``w_scale``."""
    parts = _partial_sums(y.reshape(-1, y.shape[-1]), w, block_n, block_k, splits, num_warps, w_scale=w_scale)
    return fused.qkv_rope_parts(parts, y.shape[0], y.dtype, cos, sin, keys, values, start, num_heads, num_kv_heads)


def qkv_candidates(y: torch.Tensor, w: torch.Tensor) -> Dict[str, Candidate]:
    """cuBLAS then fused.qkv_rope (the reference), and configs()'s through launch_qkv_rope, each a function of
    (y [B, L, K], w, cos, sin, keys, values, start, num_heads, num_kv_heads, w_scale)."""
    return _options(_library_qkv_rope, launch_qkv_rope, w.shape[0], w.shape[1], _sms(y), _block_k(y))


@torch.library.custom_op("turbopi::few_rows_qkv_rope", mutates_args=("keys", "values"))
def few_rows_qkv_rope(y: torch.Tensor, w: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor,
                      values: torch.Tensor, start: int, num_heads: int, num_kv_heads: int,
                      w_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """fused.qkv_rope(F.linear(y, w), cos, sin, keys, values, start, num_heads, num_kv_heads) for y [B, L, K] (FP8
    w: scaled_linear with its row scales ``w_scale``): where use_kernels(y, w), the few-rows matmul with its K
    shares summed in the rotary kernel (launch_qkv_rope; on a GPU the config measured fastest, or cuBLAS:
    kernel_choice.py); else the library ops."""
    _check_scale(w, w_scale)
    if not use_kernels(y, w):
        return _library_qkv_rope(y, w, cos, sin, keys, values, start, num_heads, num_kv_heads, w_scale)
    key = _shape_key(y.numel() // y.shape[-1], w, y.dtype) + " + rope"
    return _dispatch("few_rows_qkv_rope", key, _library_qkv_rope, launch_qkv_rope,
                     (y, w, cos, sin, keys, values, start, num_heads, num_kv_heads, w_scale))


@few_rows_qkv_rope.register_fake
def _(y, w, cos, sin, keys, values, start, num_heads, num_kv_heads, w_scale=None):
    return y.new_empty((*y.shape[:-1], num_heads, w.shape[0] // (num_heads + 2 * num_kv_heads)))


def _plain_linear(module: torch.nn.Module, bias: bool = False) -> bool:
    """Whether ``module`` computes as nn.Linear does (with ``bias``: a bias allowed)."""
    return (isinstance(module, torch.nn.Linear) and type(module).forward is torch.nn.Linear.forward
            and (bias or module.bias is None))


class FP8Weights(torch.nn.Module):
    """A linear layer whose weights the kernels read in FP8 (fp8.FP8WeightLinear): ``qweight`` float8 e4m3 [N, K],
    ``wscale`` float32 [N] (one scale a row), ``bias`` [N] or None."""

    qweight: torch.Tensor
    wscale: torch.Tensor
    bias: Optional[torch.Tensor]


def _matrix(module: torch.nn.Module, bias: bool = False) -> Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """(weight, its row scales or None) of a module the kernels can run: an nn.Linear (with ``bias``: a bias
    allowed), or an FP8Weights (FP8 weights, scales); None for any other (it runs itself)."""
    if _plain_linear(module, bias):
        return module.weight, None
    if isinstance(module, FP8Weights) and (bias or module.bias is None):
        return module.qweight, module.wscale
    return None


class FewRowsMatmuls(fused.StackMatmuls):
    """fused.gemma_stack's matmuls through the few-rows kernels where a module computes as nn.Linear does without
    a bias, or is an FP8Weights (fp8.FP8WeightLinear; the expert's four: gemma.FusedLinear's qkv and gate_up too; an
    fp8.FP8Linear, or a Linear with a bias, runs itself): gate_up (and the float32 action heads) through
    few_rows_linear, qkv through few_rows_qkv_rope, o_proj, and down_proj with gelu_gate as its prologue, through
    few_rows_linear_add_rms_norm."""

    def linear(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        m = _matrix(module, bias=True)
        return few_rows_linear(x, m[0], module.bias, m[1]) if m is not None else module(x)

    def embed_actions(self, model, x_t: torch.Tensor, sc) -> torch.Tensor:
        """PI0Model.embed_actions through few_rows_linear: the float32 action heads openpi keeps in its bfloat16
        models (biases in the kernels' epilogue)."""
        a = self.linear(model.action_in_proj, x_t)
        if model.config.is_pi05:
            return a
        h = F.silu(few_rows_linear(a, sc.action_weight, sc.action_time_bias.reshape(-1)))
        return self.linear(model.action_time_mlp_out, h)

    def qkv_rope(self, module, y, cos, sin, keys, values, start, num_heads, num_kv_heads):
        m = _matrix(module)
        if m is not None:
            return few_rows_qkv_rope(y, m[0], cos, sin, keys, values, start, num_heads, num_kv_heads, m[1])
        return super().qkv_rope(module, y, cos, sin, keys, values, start, num_heads, num_kv_heads)

    def linear_norm(self, module, a, x, gate, weight, scale, shift):
        m = _matrix(module)
        if m is not None:
            return few_rows_linear_add_rms_norm(a, m[0], x, gate, weight, scale, shift, False, m[1])
        return super().linear_norm(module, a, x, gate, weight, scale, shift)

    def gated_linear_norm(self, module, gate_up, x, gate, weight, scale, shift):
        m = _matrix(module)
        if m is not None:
            return few_rows_linear_add_rms_norm(gate_up, m[0], x, gate, weight, scale, shift, True, m[1])
        return super().gated_linear_norm(module, gate_up, x, gate, weight, scale, shift)


__all__ = ["FLOAT32_BLOCK_K", "FP8Weights", "FewRowsMatmuls", "KERNELS", "MAX_ROWS", "candidates", "configs",
           "few_rows_linear", "few_rows_linear_add_rms_norm", "few_rows_qkv_rope", "is_fp8_weight", "launch",
           "launch_add_rms_norm", "launch_qkv_rope", "norm_candidates", "plan", "plan_for", "qkv_candidates",
           "scaled_linear", "use_kernels"]
