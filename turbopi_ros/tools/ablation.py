"""The fast denoise with one optimization undone, for turbopi-bench's table (f): what each optimization buys.

Each entry of ``REVERSALS`` is a context manager ``reversal(model, cache)``: while it is active, ``model.denoise``
runs one piece the plain way (as openpi's PyTorch port does it), with the same weights and the same math, so the
bench can time every variant interleaved in one run and report how far its actions are from the optimized path's.
Nothing here is used outside the benchmark and its tests; the engine itself has no switches.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from typing import Callable, ContextManager, Dict, Iterator

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ..model import pi0 as pi0_module
from ..model.gemma import GemmaAttention, repeat_kv
from ..model.pi0 import PI0Model, PrefixCache, time_embedding
from ..model.reference import action_time_mlp

Reversal = Callable[[PI0Model, PrefixCache], ContextManager[None]]


def sdpa_repeated_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask=None) -> torch.Tensor:
    """SDPA the way transformers runs multi-query attention: K/V repeated (copied) to every query head, an optional
    additive mask. q [B, Lq, H, D], k/v [B, KV, Lk, D] -> [B, Lq, H*D]."""
    B, Lq, H, D = q.shape
    k, v = repeat_kv(k, H // k.shape[1]), repeat_kv(v, H // v.shape[1])
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=attn_mask, scale=D ** -0.5)
    return out.transpose(1, 2).reshape(B, Lq, H * D)


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched while active, by name (on a GPU, each is roughly one kernel launch)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def replaced(obj, name: str, value) -> Iterator[None]:
    """Put ``value`` in place of ``obj.name`` for the duration; an instance attribute that shadows a method is
    deleted afterwards rather than written back."""
    shadowing = not isinstance(obj, type) and name not in vars(obj)
    original = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if shadowing:
            delattr(obj, name)
        else:
            setattr(obj, name, original)


def separate_qkv(model: PI0Model, cache: PrefixCache) -> ContextManager[None]:
    """openpi's q_proj, k_proj, v_proj as three matmuls (row blocks of the fused weight: views, no copies)."""
    original = GemmaAttention.project
    return replaced(GemmaAttention, "project", lambda self, x, fused=True: original(self, x, fused=False))


@contextlib.contextmanager
def time_conditioning_every_step(model: PI0Model, cache: PrefixCache) -> Iterator[None]:
    """pi0: the time embedding concatenated to every action token and the whole action_time_mlp_in applied, each
    step; pi0.5: the time MLP and every layer's adaRMS scale/shift/gate computed again for every denoise."""
    if model.config.is_pi05:
        original = model.step_conditioning

        def fresh(num_steps):
            model.clear_step_conditioning()
            return original(num_steps)

        with replaced(model, "step_conditioning", fresh):
            yield  # what it leaves cached equals what was there: the fast path does not recompute after it
        return

    def embed_actions(x_t, sc):
        t = torch.tensor(sc.time, dtype=torch.float32, device=x_t.device)
        return action_time_mlp(model, model.action_in_proj(x_t), time_embedding(t.expand(x_t.shape[0]),
                                                                                model.config.expert.width))

    with replaced(model, "embed_actions", embed_actions):
        yield


def kv_repeated_per_head(model: PI0Model, cache: PrefixCache) -> ContextManager[None]:
    """Multi-query attention with K/V copied to every query head (repeat_kv) instead of heads folded into the query
    length."""
    return replaced(pi0_module, "maskless_attention", sdpa_repeated_kv)


def rotary_every_step(model: PI0Model, cache: PrefixCache) -> ContextManager[None]:
    """The action tokens' rotary tables computed in every step instead of once per observation."""
    original = model.velocity

    def velocity(c: PrefixCache, x_t, sc):
        cos, sin = model.action_rotary(c.num_cached, x_t.shape[0], x_t.device, model.dtype)
        return original(dataclasses.replace(c, cos=cos, sin=sin), x_t, sc)

    return replaced(model, "velocity", velocity)


def kv_concatenated_every_step(model: PI0Model, cache: PrefixCache) -> ContextManager[None]:
    """A fresh [cache | action K/V] tensor per layer and step (torch.cat, as a growing cache does) instead of
    writing the action tokens' K/V into the preallocated tail of the cache."""
    original = pi0_module.maskless_attention
    n = cache.num_cached

    def attention(q, k, v):
        return original(q, torch.cat([k[:, :, :n], k[:, :, n:]], dim=2), torch.cat([v[:, :, :n], v[:, :, n:]], dim=2))

    return replaced(pi0_module, "maskless_attention", attention)


@contextlib.contextmanager
def all_reversed(model: PI0Model, cache: PrefixCache) -> Iterator[None]:
    """Every reversal above at once (K/V both repeated and concatenated)."""
    with contextlib.ExitStack() as stack:
        for reversal in REVERSALS.values():
            stack.enter_context(reversal(model, cache))
        yield


REVERSALS: Dict[str, Reversal] = {
    "fused QKV -> separate q/k/v matmuls": separate_qkv,
    "time conditioning precomputed -> per step": time_conditioning_every_step,
    "MQA heads folded -> K/V repeated per head": kv_repeated_per_head,
    "rotary once per observation -> per step": rotary_every_step,
    "preallocated K/V -> torch.cat per step": kv_concatenated_every_step,
}
ALL_REVERSED = "all five undone"
