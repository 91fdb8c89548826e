"""Gemma decoder pieces shared by the PaliGemma language model and the action expert.

Numerics follow openpi's patched transformers Gemma (../shared/numerics.md): RMSNorm in float32 scaled by (1 + w),
adaRMS (scale, shift, gate) for pi0.5's expert, rotate-half rotary embeddings, multi-query attention, gelu-tanh MLP.
Checkpoint key names are openpi's; q/k/v, and the MLP's gate/up, are fused into one matmul each by a load hook that
keeps those names.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import GemmaConfig

RMS_EPS = 1e-6
# openpi adds this where its boolean attention mask is False.
MASKED_LOGIT = -2.3819763e38

Modulation = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # adaRMS (scale, shift, gate), each [B, 1, width]
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class FusedLinear(nn.Linear):
    """One Linear for several projections that checkpoints store apart (``q_proj``, ``k_proj``, ``v_proj``;
    ``gate_proj``, ``up_proj``).

    ``state_dict`` and ``load_state_dict`` of the owning module see the separate names: a load hook concatenates
    them, a state-dict hook splits them again, so checkpoints keep their key names and round-trip.
    """

    def __init__(self, owner: nn.Module, in_features: int, parts: Tuple[Tuple[str, int], ...], bias: bool):
        super().__init__(in_features, sum(size for _, size in parts), bias=bias)
        self.parts = parts
        self.split_sizes = [size for _, size in parts]
        owner._register_load_state_dict_pre_hook(self._fuse_on_load)
        owner._register_state_dict_hook(self._split_on_save)
        self._owner_attr = None

    def _fuse_on_load(self, state_dict, prefix, *args, **kwargs):
        fused_prefix = prefix + self._owner_attr + "."
        for kind in ("weight", "bias") if self.bias is not None else ("weight",):
            names = [f"{prefix}{name}.{kind}" for name, _ in self.parts]
            if all(n in state_dict for n in names):
                state_dict[fused_prefix + kind] = torch.cat([state_dict.pop(n) for n in names], dim=0)

    def _split_on_save(self, module, state_dict, prefix, local_metadata):
        if getattr(module, self._owner_attr, None) is not self:  # replaced (fp8.FP8Linear): its own keys stay
            return state_dict
        fused_prefix = prefix + self._owner_attr + "."
        for kind in ("weight", "bias") if self.bias is not None else ("weight",):
            fused = state_dict.pop(fused_prefix + kind)
            for (name, _), piece in zip(self.parts, torch.split(fused, self.split_sizes, dim=0)):
                state_dict[f"{prefix}{name}.{kind}"] = piece
        return state_dict


def fused_qkv(owner: nn.Module, attr: str, in_features: int, q: int, kv: int, bias: bool) -> FusedLinear:
    layer = FusedLinear(owner, in_features, (("q_proj", q), ("k_proj", kv), ("v_proj", kv)), bias)
    layer._owner_attr = attr
    return layer


def fused_gate_up(owner: nn.Module, attr: str, in_features: int, mlp_dim: int) -> FusedLinear:
    """The MLP's gate_proj and up_proj as one Linear of 2 * mlp_dim outputs (gate rows first, then up)."""
    layer = FusedLinear(owner, in_features, (("gate_proj", mlp_dim), ("up_proj", mlp_dim)), bias=False)
    layer._owner_attr = attr
    return layer


class RMSNorm(nn.Module):
    """Gemma RMSNorm, or adaRMS when ``cond_dim`` is set (then ``dense`` maps the condition to scale/shift/gate)."""

    def __init__(self, dim: int, cond_dim: Optional[int] = None):
        super().__init__()
        if cond_dim is None:
            self.weight = nn.Parameter(torch.zeros(dim))
            self.dense = None
        else:
            self.dense = nn.Linear(cond_dim, 3 * dim)

    @property
    def adaptive(self) -> bool:
        return self.dense is not None

    def modulation(self, cond: torch.Tensor) -> Modulation:
        """(scale, shift, gate) for a condition [B, cond_dim]: depends on t only, so callers may precompute it."""
        scale, shift, gate = torch.chunk(self.dense(cond)[:, None, :], 3, dim=-1)
        return scale, shift, gate

    def forward(self, x: torch.Tensor, mod: Optional[Modulation] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        dtype = x.dtype
        var = torch.mean(torch.square(x.float()), dim=-1, keepdim=True)
        normed = x * torch.rsqrt(var + RMS_EPS)
        if self.dense is None:
            return (normed * (1.0 + self.weight.float())).to(dtype), None
        if mod is None:
            raise ValueError("adaRMS norm needs a time condition")
        scale, shift, gate = mod
        return (normed * (1 + scale.float()) + shift.float()).to(dtype), gate.to(dtype)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: Optional[torch.Tensor]) -> torch.Tensor:
    return x + y if gate is None else x + y * gate


class GemmaMLP(nn.Module):
    """down_proj(gelu_tanh(gate_proj(x)) * up_proj(x)) with gate_proj and up_proj fused into one matmul (``gate_up``,
    [2 * mlp_dim, width]); state dicts keep the names ``gate_proj.weight`` and ``up_proj.weight``."""

    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.gate_up = fused_gate_up(self, "gate_up", cfg.width, cfg.mlp_dim)
        self.down_proj = nn.Linear(cfg.mlp_dim, cfg.width, bias=False)

    def gate_and_up(self, x: torch.Tensor, fused: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """(gate_proj(x), up_proj(x)), each [..., mlp_dim]. ``fused=False`` runs openpi's two matmuls (gate_proj,
        up_proj: row blocks of the fused weight, views) instead of one."""
        if fused:
            gate, up = torch.split(self.gate_up(x), self.gate_up.split_sizes, dim=-1)
            return gate, up
        gate_w, up_w = torch.split(self.gate_up.weight, self.gate_up.split_sizes, dim=0)
        return F.linear(x, gate_w), F.linear(x, up_w)

    def forward(self, x: torch.Tensor, fused: bool = True) -> torch.Tensor:
        gate, up = self.gate_and_up(x, fused)
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)


class GemmaAttention(nn.Module):
    """Projections only; the attention itself is a function of the path (maskless SDPA or openpi's masked eager)."""

    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.qkv = fused_qkv(self, "qkv", cfg.width, q, kv, bias=False)
        self.o_proj = nn.Linear(q, cfg.width, bias=False)

    def project(self, x: torch.Tensor, fused: bool = True) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, L, width] -> q [B, L, H, D], k and v [B, L, KV, D] (token-major: no transposes). ``fused=False``
        runs openpi's three matmuls (q_proj, k_proj, v_proj: row blocks of the fused weight, views) instead of one."""
        B, L, _ = x.shape
        if fused:
            q, k, v = torch.split(self.qkv(x), self.qkv.split_sizes, dim=-1)
        else:
            weights = torch.split(self.qkv.weight, self.qkv.split_sizes, dim=0)
            biases = torch.split(self.qkv.bias, self.qkv.split_sizes) if self.qkv.bias is not None else (None,) * 3
            q, k, v = (F.linear(x, w, b) for w, b in zip(weights, biases))
        return (q.view(B, L, self.num_heads, self.head_dim), k.view(B, L, self.num_kv_heads, self.head_dim),
                v.view(B, L, self.num_kv_heads, self.head_dim))


class GemmaLayer(nn.Module):
    def __init__(self, cfg: GemmaConfig, adaptive: bool):
        super().__init__()
        cond_dim = cfg.width if adaptive else None
        self.input_layernorm = RMSNorm(cfg.width, cond_dim)
        self.self_attn = GemmaAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.width, cond_dim)
        self.mlp = GemmaMLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend,
                mods: Tuple[Optional[Modulation], Optional[Modulation]] = (None, None),
                attention_only: bool = False, fused_qkv: bool = True, fused_gate_up: bool = True) -> torch.Tensor:
        """One decoder layer. ``attend(q, k, v)`` receives rotated q [B, L, H, D] and k, v [B, L, KV, D], keeps
        whatever it caches, and returns [B, L, H*D]. ``attention_only`` skips the MLP half (for the last layer of
        a pass whose hidden states nobody reads: only its K/V matter). ``fused_qkv=False``: openpi's three
        projections; ``fused_gate_up=False``: openpi's separate gate and up projections (the reference path)."""
        y, gate = self.input_layernorm(x, mods[0])
        q, k, v = self.self_attn.project(y, fused_qkv)
        x = gated_residual(x, self.self_attn.o_proj(attend(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v)), gate)
        if attention_only:
            return x
        y, gate = self.post_attention_layernorm(x, mods[1])
        return gated_residual(x, self.mlp(y, fused_gate_up), gate)


class Gemma(nn.Module):
    """A Gemma decoder stack. The forward pass lives with the caller (pi0.py / reference.py): the prefix model and
    the expert run different token sets through the same kind of layer."""

    def __init__(self, cfg: GemmaConfig, *, embed: bool, adaptive: bool):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.width) if embed else None
        self.layers = nn.ModuleList(GemmaLayer(cfg, adaptive) for _ in range(cfg.depth))
        self.norm = RMSNorm(cfg.width, cfg.width if adaptive else None)


# --- rotary embedding ---------------------------------------------------------------------------------------------
def rope_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> Tuple[torch.Tensor, ...]:
    """cos, sin [B, L, 1, D] for integer positions [B, L], as transformers' Gemma rotary embedding computes them."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float()
                                / head_dim))
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, L, heads, D] with cos/sin [B, L, 1, D]."""
    return x * cos + rotate_half(x) * sin


# --- attention kernels ---------------------------------------------------------------------------------------------
def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


# kernel(q [B, G, M, D], k [B, G, N, D], v, scale) -> [B, G, M, D]: softmax(q k^T scale) v, no mask
AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


def maskless_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       kernel: AttentionKernel = sdpa) -> torch.Tensor:
    """Every query sees every key: plain SDPA, no mask.

    q [B, Lq, H, D] token-major; k, v [B, KV, Lk, D] head-major (the cache layout). With one KV head the query
    heads fold into the query length ([B, 1, Lq*H, D] is a free view of q), so K/V are never repeated and the
    output [B, 1, Lq*H, D] is already the [B, Lq, H*D] layout o_proj wants. (On this project's CPU, folding measured
    1.25 ms a call against 1.40 ms for K/V expanded to every head with stride 0: docs/performance.md.)
    ``kernel``: SDPA, or the fused path's split_attention.split_attention (the same math).
    """
    B, Lq, H, D = q.shape
    KV = k.shape[1]
    scale = D ** -0.5
    if KV == 1:
        out = kernel(q.reshape(B, 1, Lq * H, D), k, v, scale)
        return out.view(B, Lq, H * D)
    qh = q.transpose(1, 2).reshape(B, KV, (H // KV) * Lq, D)  # heads of one KV group are adjacent
    out = kernel(qh, k, v, scale)
    return out.view(B, H, Lq, D).transpose(1, 2).reshape(B, Lq, H * D)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    B, KV, L, D = x.shape
    return x if n_rep == 1 else x[:, :, None].expand(B, KV, n_rep, L, D).reshape(B, KV * n_rep, L, D)


def masked_eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """openpi's eager attention: repeat K/V to every head, add MASKED_LOGIT where ``mask`` [B, Lq, Lk] is False,
    softmax in float32. q [B, Lq, H, D]; k, v [B, KV, Lk, D]. Returns [B, Lq, H*D]. The mask is added in float32,
    as openpi adds its float32 mask: MASKED_LOGIT is -inf in float16, which made a padded query's row NaN."""
    B, Lq, H, D = q.shape
    k, v = repeat_kv(k, H // k.shape[1]), repeat_kv(v, H // v.shape[1])
    qh = q.transpose(1, 2)
    logits = torch.matmul(qh, k.transpose(2, 3)) * D ** -0.5
    logits = logits.float() + torch.where(mask[:, None], 0.0, MASKED_LOGIT)
    weights = torch.softmax(logits, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, v).transpose(1, 2).reshape(B, Lq, H * D)
