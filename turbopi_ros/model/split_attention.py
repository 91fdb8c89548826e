"""Maskless attention for few queries over a long cache, split over the keys (Triton, with SDPA as its twin).

The denoise's attention has few query rows and many keys: pi0's 50 action tokens x 8 heads folded into 400 rows of
one KV head (gemma.maskless_attention), over 800-1100 cached keys, head_dim 256. A flash-attention kernel tiles the
query rows only: 400 rows make 7 tiles, 7 thread blocks on a GPU of 132 SMs, each walking every key. On an H200
cuDNN's kernel took 24.5 us a call (docs/bench/kernel_profile_h200.txt: 4.4 ms of a 12.7 ms fused denoise).

Here the keys are split too (flash-decoding): program (row tile, split) computes the softmax statistics and the
unnormalized output of its row tile over its share of the keys, in float32; a second kernel combines the splits
(rescaling each by exp(its max - the row's max)) and rounds once to the output dtype. Same math as SDPA: scores in
float32, the probabilities rounded to the value dtype for the P.V product (as a flash kernel does), float32
accumulation; in float32 the dot products run in IEEE float32 (no TF32).

    turbopi::split_attention(q [B, G, M, D], k [B, G, N, D], v [B, G, N, D], scale) -> [B, G, M, D]

G groups (KV heads) of M query rows each; every row sees all N keys of its group. Off CUDA (and without Triton) it is
gemma.sdpa. ``use_split(q, k)`` says where it takes the kernels: few query rows.

Measured on an H200 (docs/bench/split_attention_h200.txt, each inside a CUDA graph of 50 calls), pi0 with 3 cameras
(400 rows over 839 keys): SDPA 26.1 us. The first version (64-row tiles, 8 warps, 14 splits, the combine one row tile
a program) took 23.4 us and brought the fused denoise graph from 12.56 to 11.92 ms (pi0) in the GPU report. Its parts
measured apart: the partial kernel with 32-row tiles and 4 warps at 7 splits 6.6 us (25.6 us unsplit), the combine
4.7-7.0 us in its 13 programs. Hence this version: 32-row tiles, 4 warps, splits for one program per SM, and the
combine one row a program (400 programs). Not yet measured as a whole on a GPU.

The best config differed by shape in those sweeps (7 splits for 839 keys, 4 for 327), so on a GPU the op measures
configs() against SDPA the first time a shape runs and launches the fastest that matches SDPA, which may be SDPA
itself (kernel_choice.py); the default config above is what runs where nothing was measured.
"""
from __future__ import annotations

import functools
import os
from typing import Dict, Tuple

import torch

from . import fused
from .fused import kernels_for, triton, tl
from .gemma import sdpa
from .kernel_choice import CHOICES, Candidate
if triton is not None:
    from .fused import _wait_for_inputs  # noqa: F401 - every kernel's first call (programmatic dependent launch)

KERNELS = ("_split_attention_kernel", "_combine_splits_kernel")
BLOCK_M = 32  # query rows per program
BLOCK_N = 64  # keys per inner step
NUM_WARPS = 4
SHARES = (0.25, 0.5, 0.75, 1.0)  # programs an SM that configs() splits the keys for
MAX_ROWS = 1024  # more query rows than this per group: the flash kernel has tiles enough (the prefix passes)
LOG2E = 1.4426950408889634
_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"  # read when Triton is imported, as Triton does


def use_split(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether attention of q [B, G, M, D] over k [B, G, N, D] takes the split kernels: Triton runs on q's device,
    few query rows (M <= MAX_ROWS), a head_dim tl.dot takes (a power of two >= 16), 16-bit values (float32 only
    under the interpreter, for the parity tests: on a GPU its IEEE float32 dots of 256-wide heads spill registers
    on sm_90, and float32 is not a speed path: SDPA)."""
    D = q.shape[-1]
    return (kernels_for(q) and q.shape[-2] <= MAX_ROWS and D >= 16 and D & (D - 1) == 0
            and (q.dtype in (torch.bfloat16, torch.float16) or (q.dtype == torch.float32 and _INTERPRETER)))


def _sms(q: torch.Tensor) -> int:
    return fused.sm_count(q.device.index or 0) if q.is_cuda else 8


def _splits(programs: int, n_keys: int, sms: int, programs_per_sm: float) -> int:
    target = max(1, round(sms * programs_per_sm))
    return max(1, min(triton.cdiv(n_keys, BLOCK_N), triton.cdiv(target, programs)))


def num_splits(q: torch.Tensor, n_keys: int, block_m: int = BLOCK_M, programs_per_sm: float = 1.0) -> int:
    """How many key splits: enough programs for ``programs_per_sm`` per SM (132 SMs on an H100/H200; 8 "SMs" on
    CPU), each split at least one BLOCK_N step of keys."""
    B, G, M, _ = q.shape
    return _splits(B * G * triton.cdiv(M, block_m), n_keys, _sms(q), programs_per_sm)


@functools.lru_cache(maxsize=256)
def configs(groups: int, rows: int, n_keys: int, sms: int) -> Dict[str, Dict[str, int]]:
    """The configs a GPU measures (kernel_choice.py) for ``groups`` (B x G) of ``rows`` query rows over ``n_keys``
    keys on ``sms`` SMs, by name: 16- and 32-row tiles of 4 warps with splits for about a quarter, a half, three
    quarters and one program an SM, and 64-row tiles of 8 warps for a half (the sweeps' best were among these:
    docs/bench/split_attention_h200.txt); duplicates once."""
    out: Dict[str, Dict[str, int]] = {}
    for block_m, warps, shares in ((16, 4, SHARES), (32, 4, SHARES), (64, 8, (0.5,))):
        for per_sm in shares:
            splits = _splits(groups * triton.cdiv(rows, block_m), n_keys, sms, per_sm)
            out.setdefault(f"split {block_m} rows, {splits} splits, {warps} warps",
                           {"splits": splits, "block_m": block_m, "num_warps": warps})
    return out


@functools.lru_cache(maxsize=256)
def _candidates(groups: int, rows: int, n_keys: int, sms: int, scale: float) -> Dict[str, Candidate]:
    out: Dict[str, Candidate] = {"sdpa": functools.partial(sdpa, scale=scale)}
    for name, config in configs(groups, rows, n_keys, sms).items():
        out[name] = functools.partial(launch, scale=scale, **config)
    return out


def candidates(q: torch.Tensor, n_keys: int, scale: float) -> Dict[str, Candidate]:
    """SDPA (the reference) and configs()'s, each a function of (q, k, v)."""
    B, G, M, _ = q.shape
    return _candidates(B * G, M, n_keys, _sms(q), float(scale))


if triton is not None:
    @triton.jit
    def _split_attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, m_ptr, l_ptr, M, N, keys_per_split, qk_scale,
                                stride_qb, stride_qg, stride_qm, stride_kb, stride_kg, stride_kn,
                                stride_vb, stride_vg, stride_vn, G, SPLITS,
                                D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
                                UPCAST: tl.constexpr, PDL: tl.constexpr):
        """Program (row tile, split, b * G + g): rows [tile * BLOCK_M, +BLOCK_M) over keys [split * keys_per_split,
        +keys_per_split) -> o (float32, unnormalized) [BG, SPLITS, M, D], the rows' max m and sum l [BG, SPLITS, M]
        (scores in log2 units: qk_scale holds log2(e)). IEEE: float32 inputs, float32 products. UPCAST (Triton's
        interpreter, whose tl.dot does not take bfloat16): the same products of 16-bit values in float32."""
        _wait_for_inputs(PDL)
        tile = tl.program_id(0)
        split = tl.program_id(1)
        bg = tl.program_id(2)
        b = bg // G
        g = bg % G
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < M
        d = tl.arange(0, D)
        q = tl.load(q_ptr + b * stride_qb + g * stride_qg + rows[:, None] * stride_qm + d[None, :],
                    mask=rmask[:, None], other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        start = split * keys_per_split
        stop = tl.minimum(start + keys_per_split, N)
        k_base = k_ptr + b * stride_kb + g * stride_kg
        v_base = v_ptr + b * stride_vb + g * stride_vg
        for n0 in range(start, stop, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            cmask = cols < stop
            k = tl.load(k_base + cols[:, None] * stride_kn + d[None, :], mask=cmask[:, None], other=0.0)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            elif UPCAST:
                s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            s = tl.where(cmask[None, :], s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_base + cols[:, None] * stride_vn + d[None, :], mask=cmask[:, None], other=0.0)
            if IEEE:
                pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
            elif UPCAST:
                pv = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            m_i = m_new
        part = bg * SPLITS + split
        tl.store(o_ptr + (part * M + rows[:, None]) * D + d[None, :], acc, mask=rmask[:, None])
        tl.store(m_ptr + part * M + rows, m_i, mask=rmask)
        tl.store(l_ptr + part * M + rows, l_i, mask=rmask)

    @triton.jit
    def _combine_splits_kernel(o_ptr, m_ptr, l_ptr, out_ptr, M, G, SPLITS, stride_ob, stride_og, stride_om,
                               D: tl.constexpr, SPLITS_P2: tl.constexpr, PDL: tl.constexpr):
        """Program (row, b * G + g): out = sum_s 2^(m_s - m) o_s / sum_s 2^(m_s - m) l_s, m = max_s m_s (a split
        with no keys has m_s = -inf, l_s = 0: weight 0). One row a program: every split's part in one load."""
        _wait_for_inputs(PDL)
        row = tl.program_id(0)
        bg = tl.program_id(1)
        b = bg // G
        g = bg % G
        s = tl.arange(0, SPLITS_P2)
        smask = s < SPLITS
        d = tl.arange(0, D)
        part = (bg * SPLITS + s) * M + row
        ms = tl.load(m_ptr + part, mask=smask, other=float("-inf"))
        w = tl.exp2(ms - tl.max(ms, axis=0))
        den = tl.sum(w * tl.load(l_ptr + part, mask=smask, other=0.0), axis=0)
        o = tl.load(o_ptr + part[:, None] * D + d[None, :], mask=smask[:, None], other=0.0)
        out = tl.sum(w[:, None] * o, axis=0) / den
        tl.store(out_ptr + b * stride_ob + g * stride_og + row * stride_om + d, out)  # rounded by the store

    fused.register_kernels(globals(), KERNELS)


def partial(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, splits: int, block_m: int = BLOCK_M,
            num_warps: int = NUM_WARPS, block_n: int = BLOCK_N) -> Tuple[torch.Tensor, ...]:
    """The first kernel: (parts [BG, S, M, D], maxes m [BG, S, M], sums l [BG, S, M]), float32; S: ``splits`` shares
    of whole block_n steps of keys (fused.split_in_steps)."""
    B, G, M, D = q.shape
    N = k.shape[-2]
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"split_attention: {name} must be unit-stride in head_dim, strides {t.stride()}")
    keys_per_split, splits = fused.split_in_steps(N, splits, block_n)
    parts = torch.empty((B * G, splits, M, D), dtype=torch.float32, device=q.device)
    m = torch.empty((B * G, splits, M), dtype=torch.float32, device=q.device)
    l_ = torch.empty_like(m)
    _split_attention_kernel[(triton.cdiv(M, block_m), splits, B * G)](
        q, k, v, parts, m, l_, M, N, keys_per_split, scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), G, splits,
        D=D, BLOCK_M=block_m, BLOCK_N=block_n, IEEE=q.dtype == torch.float32, UPCAST=_INTERPRETER,
        num_warps=num_warps, **fused.launch_options())
    return parts, m, l_


def combine(parts: torch.Tensor, m: torch.Tensor, l_: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The second kernel: partial()'s splits combined into the output [B, G, M, D] in ``like``'s shape and dtype."""
    B, G, M, D = like.shape
    splits = parts.shape[1]
    out = torch.empty((B, G, M, D), dtype=like.dtype, device=like.device)
    _combine_splits_kernel[(M, B * G)](parts, m, l_, out, M, G, splits, out.stride(0), out.stride(1), out.stride(2),
                                       D=D, SPLITS_P2=fused._pow2(splits), num_warps=4,
                                       **fused.launch_options())
    return out


def launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, splits: int, **config) -> torch.Tensor:
    """Both kernels, about ``splits`` shares of the keys, partial()'s ``config``."""
    return combine(*partial(q, k, v, scale, splits, **config), like=q)


@torch.library.custom_op("turbopi::split_attention", mutates_args=())
def split_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v for q [B, G, M, D] over k, v [B, G, N, D] (no mask): the split kernels where
    use_split(q, k), else SDPA."""
    if not use_split(q, k):
        return sdpa(q, k, v, scale)
    options = candidates(q, k.shape[-2], scale)
    B, G, M, D = q.shape
    key = f"B{B} G{G} M{M} N{k.shape[-2]} D{D} {str(q.dtype).replace('torch.', '')}"
    picked = CHOICES.choose("split_attention", key, options, (q, k, v), "sdpa")
    if picked is None:
        return launch(q, k, v, scale, num_splits(q, k.shape[-2]))
    return options[picked](q, k, v)


@split_attention.register_fake
def _(q, k, v, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


__all__ = ["KERNELS", "candidates", "combine", "configs", "launch", "num_splits", "partial", "split_attention",
           "use_split"]
