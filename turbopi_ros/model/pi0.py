"""pi0 / pi0.5: the fast three-stage engine.

    image_tokens = model.embed_images(images, image_masks)         SigLIP once per PRESENT camera
    cache = model.build_cache(image_tokens, tokens, token_mask, state)
                                                                   Gemma prefix over the VALID tokens only
                                                                   (+ pi0: the state token through the expert once)
    actions = model.denoise(cache, noise, num_steps=10)            Euler steps, expert over the action tokens only,
                                                                   SDPA with NO mask

Why no mask is exact (design.md §2): openpi's denoise queries see every valid prefix key, and (pi0.5) every suffix
key. The cache holds only valid tokens, so "every valid prefix key" is "every cached key". pi0's suffix starts with
a state token that must not see the actions; but it sees only the prefix and itself, so its K/V at every layer do not
depend on x_t or t: we compute them once, append them to the cache, and the action tokens - which see all of it - are
the only queries. Positions are openpi's (cumsum of the pad mask - 1): 0..n-1 for the compacted prefix, n for the
state token, then the actions. reference.py keeps openpi's padded/masked formulation; tests prove the two agree.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Callable, List, Optional, Tuple, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from . import fused
from .few_rows_matmul import FewRowsMatmuls
from .split_attention import split_attention
from .config import ModelConfig
from .gemma import Attend, Gemma, maskless_attention, rope_tables
from .inputs import check_image_inputs, check_noise, check_prefix_inputs
from .reference import sample_actions_reference
from .sampler import Sampler, StepConditioning, euler_schedule, time_embedding  # noqa: F401 (re-exported)
from .siglip import Projector, SiglipVision


F_ = TypeVar("F_", bound=Callable)
MATMULS, FEW_ROWS = fused.StackMatmuls(), FewRowsMatmuls()  # the fused denoise's (few_rows_matmul: FEW_ROWS)


def gpu_current(device: torch.device):
    """A context in which ``device`` is the current GPU (model.device cuda:N; nothing off CUDA). Triton launches a
    kernel on the current GPU, not on its tensors' (triton/runtime/jit.py: driver.active.get_current_device()): the
    fused kernels of a model on cuda:1 would otherwise run on cuda:0 with pointers into cuda:1's memory."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def engine_entry(fn: F_) -> F_:
    """Run an engine entry point (a PI0Model method) under inference mode whatever the caller's autograd mode, so
    that results never carry an autograd graph and every entry point works after any other in any order (a cache
    built under ``torch.inference_mode()`` is written in place by the denoise, which is only allowed inside
    inference mode), with the model's GPU current (gpu_current). A returned tensor is cloned outside inference mode
    into an ordinary tensor the caller may use freely; caches and image tokens are only ever read by other entry
    points."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with torch.inference_mode(), gpu_current(args[0].device):
            out = fn(*args, **kwargs)
        return out.clone() if isinstance(out, torch.Tensor) else out

    return run  # type: ignore[return-value]


class RaggedBatchError(ValueError):
    """Rows of a batch have different numbers of valid prefix tokens: the fast path needs equal counts."""


@dataclasses.dataclass
class ImageTokens:
    """Projected SigLIP tokens of the cameras present in the batch."""

    features: torch.Tensor  # [B, P, T, width]: P present cameras, T tokens each
    present: Tuple[int, ...]  # which camera slots (indices into the model's N cameras) those P are
    mask: torch.Tensor  # [B, P] bool: the camera is present in that row


@dataclasses.dataclass
class PrefixCache:
    """Keys/values of the valid prefix (and pi0's state token) for every expert layer, plus scratch for the actions.

    keys/values: [depth, B, KV, num_cached + action_horizon, head_dim]. ``[..., :num_cached, :]`` is the
    observation; the tail is overwritten by each denoise step with the action tokens' own K/V, so attention over the
    whole buffer is exactly "actions see everything" with no concatenation and no mask.
    """

    keys: torch.Tensor
    values: torch.Tensor
    num_prefix: int  # valid image + language tokens
    num_cached: int  # num_prefix, + 1 for pi0's state token
    cos: torch.Tensor  # rotary tables of the action tokens' positions [B, H, 1, D]
    sin: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]


def run_prefix_stack(stack: Gemma, x, cos, sin, keys, values, start: int, stop: int) -> None:
    """Run tokens [start, stop) through ``stack``, writing their K/V into the cache; they attend to [0, stop)."""
    for li, layer in enumerate(stack.layers):
        def attend(q, k, v, li=li):
            keys[li, :, :, start:stop] = k.transpose(1, 2)
            values[li, :, :, start:stop] = v.transpose(1, 2)
            return maskless_attention(q, keys[li, :, :, :stop], values[li, :, :, :stop])

        x = layer(x, cos, sin, attend, attention_only=li == len(stack.layers) - 1)


def run_prefix_stack_fused(stack: Gemma, x, cos, sin, keys, values, start: int, stop: int,
                           matmuls: Optional[fused.StackMatmuls] = None) -> None:
    """run_prefix_stack with the fused kernels (``matmuls``: gemma_stack's, default the modules)."""
    slot = fused.cache_attention(lambda li: (keys[li], values[li], start, stop), split_attention)
    fused.gemma_stack(stack.layers, x, cos, sin, slot, last_attention_only=True, matmuls=matmuls)


class PI0Model(nn.Module):
    """pi0 / pi0.5 with openpi's module names (checkpoint.py maps the ``paligemma_with_expert.*`` prefixes)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.vision = SiglipVision(c.vision)
        self.projector = Projector(c.vision.width, c.vlm.width)
        self.vlm = Gemma(c.vlm, embed=True, adaptive=False)
        self.expert = Gemma(c.expert, embed=False, adaptive=c.is_pi05)
        we = c.expert.width
        self.action_in_proj = nn.Linear(c.action_dim, we)
        self.action_out_proj = nn.Linear(we, c.action_dim)
        if c.is_pi05:
            self.time_mlp_in = nn.Linear(we, we)
            self.time_mlp_out = nn.Linear(we, we)
        else:
            self.state_proj = nn.Linear(c.action_dim, we)
            self.action_time_mlp_in = nn.Linear(2 * we, we)
            self.action_time_mlp_out = nn.Linear(we, we)
        self.sampler = Sampler()  # the denoise loop, its per-step conditioning cache, its compile switch
        self._fused = False
        self.few_rows_matmul = False  # use_fused: the expert's matmuls (denoise, pi0's state) via few_rows_matmul.py
        self.register_load_state_dict_post_hook(lambda module, keys: module.clear_step_conditioning())

    @property
    def device(self) -> torch.device:
        return self.action_in_proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the transformers compute in (heads, norms and embeddings may stay float32)."""
        qkv = self.expert.layers[0].self_attn.qkv
        return getattr(qkv, "out_dtype", None) or qkv.weight.dtype  # fp8.FP8Linear computes in its out_dtype

    @property
    def fused(self) -> bool:
        """Whether the engine runs the fused layer kernels (model/fused.py) instead of the plain modules."""
        return self._fused

    def use_fused(self, enable: bool = True, few_rows_matmul: Optional[bool] = None) -> "PI0Model":
        """Opt in to (or out of) the fused layer kernels for SigLIP, the prefix cache and the denoise: Triton kernels
        on CUDA, their plain-torch twins elsewhere. The plain path stays the reference (the reference path always runs
        the plain modules); the guided (RTC) denoise differentiates through the fused ops (model/fused_grad.py).
        ``few_rows_matmul`` (None: unchanged): the fused denoise's expert matmuls through model/few_rows_matmul.py,
        and those of pi0's state token in the prefix cache (one row a layer)."""
        self._fused = bool(enable)
        if few_rows_matmul is not None:
            self.few_rows_matmul = bool(few_rows_matmul)
        self.vision.fused = self._fused
        self.sampler.compiled_velocity = None  # a compiled step traced the other path
        return self

    # --- stage 1: vision ------------------------------------------------------------------------------------------
    @engine_entry
    def embed_images(self, images: torch.Tensor, image_masks: torch.Tensor) -> ImageTokens:
        """images [B, N, 3, S, S] in [-1, 1], image_masks [B, N] bool -> SigLIP tokens of the present cameras."""
        s = self.config.vision.image_size
        check_image_inputs(self.config, images, image_masks)
        B = images.shape[0]
        present = tuple(i for i, any_row in enumerate(image_masks.any(dim=0).tolist()) if any_row)
        T, W = self.config.num_image_tokens, self.config.vlm.width
        if present:
            flat = images[:, list(present)].reshape(B * len(present), 3, s, s)
            features = self.projector(self.vision(flat)).view(B, len(present), T, W)
        else:
            features = images.new_zeros((B, 0, T, W), dtype=self.dtype)
        return ImageTokens(features=features, present=present, mask=image_masks[:, list(present)])

    # --- stage 2: the prefix KV cache -------------------------------------------------------------------------------
    def embed_language(self, tokens: torch.Tensor) -> torch.Tensor:
        emb = self.vlm.embed_tokens(tokens)
        return emb * math.sqrt(emb.shape[-1])

    @engine_entry
    def build_cache(self, image_tokens: ImageTokens, tokens: torch.Tensor, token_mask: torch.Tensor,
                    state: torch.Tensor) -> PrefixCache:
        c = self.config
        B = image_tokens.features.shape[0]
        check_prefix_inputs(self.config, B, tokens, token_mask, state)
        T = c.num_image_tokens
        feats = image_tokens.features.reshape(B, -1, c.vlm.width)
        embs = torch.cat([feats.to(self.dtype), self.embed_language(tokens).to(self.dtype)], dim=1)
        valid = torch.cat([image_tokens.mask.repeat_interleave(T, dim=1), token_mask], dim=1)
        counts = valid.sum(dim=1).tolist()
        if len(set(counts)) != 1:
            raise RaggedBatchError(f"rows have {counts} valid prefix tokens; the fast path needs equal counts "
                                   "(sample_actions falls back to the reference path)")
        x = embs[valid].view(B, counts[0], c.vlm.width)  # compaction: only valid tokens enter the prefix
        return self.prefix_cache(x, state)

    def prefix_cache(self, x: torch.Tensor, state: torch.Tensor,
                     buffers: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> PrefixCache:
        """The cache of the valid prefix embeddings x [B, n, vlm width] (all of them valid: compacted), and pi0's
        state token. No host synchronisation and no data-dependent shapes: a CUDA graph can hold it
        (cuda_graph.CudaGraphEncoder). ``buffers``: keys and values [depth, B, KV, L, D] with L at least
        num_cached + action_horizon, to hold the cache in their leading tokens (the graphs of every prompt length
        share one pair of buffers for the longest)."""
        c = self.config
        B, n = x.shape[0], x.shape[1]
        has_state = not c.is_pi05
        num_cached = n + int(has_state)
        g, H = c.vlm, c.action_horizon
        shape = (g.depth, B, g.num_kv_heads, num_cached + H, g.head_dim)
        if buffers is None:
            keys = x.new_empty(shape)
            values = torch.empty_like(keys)
        else:
            big = tuple(buffers[0].shape)
            if (len(big) != 5 or big[:3] != shape[:3] or big[4] != shape[4] or big[3] < shape[3]
                    or tuple(buffers[1].shape) != big):
                raise ValueError(f"prefix_cache buffers must be [depth, B, KV, >= {shape[3]}, head_dim] = "
                                 f"{list(shape)} or longer, got {big} and {tuple(buffers[1].shape)}")
            keys, values = buffers[0][..., :shape[3], :], buffers[1][..., :shape[3], :]

        positions = torch.arange(n, device=x.device).expand(B, n)
        cos, sin = rope_tables(positions, g.head_dim, g.rope_theta, x.dtype)
        run = run_prefix_stack_fused if self._fused else run_prefix_stack
        run(self.vlm, x, cos, sin, keys, values, 0, n)
        if has_state:  # pi0: the state token sees the prefix and itself only -> its K/V are fixed per observation
            s = self.state_proj(state.to(self.state_proj.weight.dtype))[:, None, :].to(self.dtype)
            cos_s, sin_s = rope_tables(torch.full((B, 1), n, device=x.device), g.head_dim, g.rope_theta, x.dtype)
            if self._fused and self.few_rows_matmul:  # its one row a layer through the denoise's few-rows kernels
                run_prefix_stack_fused(self.expert, s, cos_s, sin_s, keys, values, n, n + 1, FEW_ROWS)
            else:
                run(self.expert, s, cos_s, sin_s, keys, values, n, n + 1)
        cos, sin = self.action_rotary(num_cached, B, x.device, x.dtype)
        return PrefixCache(keys=keys, values=values, num_prefix=n, num_cached=num_cached, cos=cos, sin=sin)

    def action_rotary(self, num_cached: int, batch: int, device, dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B, H, 1, D] of the action tokens, at positions num_cached .. num_cached + H - 1 (openpi's
        cumsum positions: they follow every valid prefix token and pi0's state token)."""
        g, H = self.config.expert, self.config.action_horizon
        positions = torch.arange(num_cached, num_cached + H, device=device).expand(batch, H)
        return rope_tables(positions, g.head_dim, g.rope_theta, dtype)

    @engine_entry
    def encode(self, images, image_masks, tokens, token_mask, state) -> PrefixCache:
        return self.build_cache(self.embed_images(images, image_masks), tokens, token_mask, state)

    # --- stage 3: the maskless denoise -----------------------------------------------------------------------------
    def step_conditioning(self, num_steps: int) -> List[StepConditioning]:
        """Per-step time conditioning (the 10 times are fixed): pi0's time half of action_time_mlp_in, pi0.5's time
        MLP and every adaRMS scale/shift/gate. Cached by the sampler (cleared when weights are loaded, or by
        clear_step_conditioning); ordinary tensors without a graph, usable in any autograd mode."""
        return self.sampler.step_conditioning(self, num_steps)

    def clear_step_conditioning(self) -> None:
        """Forget the precomputed per-step conditioning (after changing weights in place, or to time computing it)."""
        self.sampler.clear()

    def embed_actions(self, x_t: torch.Tensor, sc: StepConditioning) -> torch.Tensor:
        a = self.action_in_proj(x_t)
        if self.config.is_pi05:
            return a
        # action_time_mlp_in([a, time_emb]) = a @ W_a^T + (time_emb @ W_t^T + b); the second half is precomputed.
        return self.action_time_mlp_out(F.silu(F.linear(a, sc.action_weight) + sc.action_time_bias))

    def velocity(self, cache: PrefixCache, x_t: torch.Tensor, sc: StepConditioning) -> torch.Tensor:
        """v(x_t, t): the expert over the action tokens only, attending to the whole cache with no mask (the action
        tokens' K/V are written into the cache's tail)."""
        n = cache.num_cached
        if self._fused:
            stop = cache.keys.shape[-2]
            return self.fused_expert_velocity(x_t, sc, cache.cos, cache.sin, fused.cache_attention(
                lambda li: (cache.keys[li], cache.values[li], n, stop), split_attention),
                self.few_rows_matmul)

        def attention(li: int) -> Attend:
            def attend(q, k, v):
                cache.keys[li, :, :, n:] = k.transpose(1, 2)
                cache.values[li, :, :, n:] = v.transpose(1, 2)
                return maskless_attention(q, cache.keys[li], cache.values[li])
            return attend

        return self.expert_velocity(x_t, sc, cache.cos, cache.sin, attention)

    def expert_velocity(self, x_t: torch.Tensor, sc: StepConditioning, cos, sin,
                        attention: Callable[[int], Attend]) -> torch.Tensor:
        """The action expert from x_t to v, with layer li attending through ``attention(li)``."""
        h = self.embed_actions(x_t, sc).to(self.dtype)
        for li, layer in enumerate(self.expert.layers):
            mods = sc.layer_mods[li] if sc.layer_mods is not None else (None, None)
            h = layer(h, cos, sin, attention(li), mods)
        h, _ = self.expert.norm(h, sc.final_mod)
        return self.action_out_proj(h.to(self.action_out_proj.weight.dtype)).float()

    def fused_expert_velocity(self, x_t: torch.Tensor, sc: StepConditioning, cos, sin,
                              attention: fused.StackAttention, few_rows: bool = False) -> torch.Tensor:
        """expert_velocity with the fused kernels (gemma_stack's ``attention``); ``few_rows``: few_rows_matmul.py's."""
        mm = FEW_ROWS if few_rows else MATMULS
        h = fused.gemma_stack(self.expert.layers, mm.embed_actions(self, x_t, sc).to(self.dtype), cos, sin, attention,
                              sc.layer_mods, self.expert.norm, sc.final_mod, matmuls=mm)
        return mm.linear(self.action_out_proj, h.to(self.action_out_proj.weight.dtype)).float()

    @engine_entry
    def denoise(self, cache: PrefixCache, noise: torch.Tensor, num_steps: int = 10) -> torch.Tensor:
        c = self.config
        expected = (cache.batch_size, c.action_horizon, c.action_dim)
        if tuple(noise.shape) != expected:
            raise ValueError(f"noise must be {list(expected)}, got {list(noise.shape)}")
        return self.sampler.denoise(self, cache, noise, num_steps)

    def compile_denoise(self, mode: Optional[str] = None, cache_dir: Optional[str] = None) -> None:
        """Optional: torch.compile one denoise step (the expert pass). The first denoise compiles (seconds to a
        minute); the per-step conditioning tensors are graph inputs, so the steps share one compiled graph.
        ``cache_dir``: inductor's cache directory (warm starts load from it; sampler.Sampler.compile)."""
        self.sampler.compile(self, mode, cache_dir)

    # --- all three ---------------------------------------------------------------------------------------------------
    def sample_noise(self, batch_size: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        c = self.config
        return torch.randn((batch_size, c.action_horizon, c.action_dim), generator=generator,
                           dtype=torch.float32, device=self.device)

    @engine_entry
    def sample_actions(self, images, image_masks, tokens, token_mask, state, noise=None, num_steps: int = 10,
                       path: str = "fast") -> torch.Tensor:
        """Actions [B, H, action_dim] in model space. path "fast" (maskless, compacted) or "reference" (openpi's
        padded, masked formulation). A fast-path batch whose rows have different valid-token counts uses the
        reference path."""
        if noise is None:
            noise = self.sample_noise(images.shape[0])
        check_noise(self.config, images.shape[0], noise)
        if path == "reference":
            return sample_actions_reference(self, images, image_masks, tokens, token_mask, state, noise, num_steps)
        if path != "fast":
            raise ValueError(f"path must be 'fast' or 'reference', got {path!r}")
        try:
            cache = self.encode(images, image_masks, tokens, token_mask, state)
        except RaggedBatchError:
            return self.sample_actions(images, image_masks, tokens, token_mask, state, noise, num_steps, "reference")
        return self.denoise(cache, noise, num_steps)
