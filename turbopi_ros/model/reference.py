"""The reference path: openpi's own formulation of sample_actions, kept to prove the fast path exact.

Every camera goes through SigLIP (absent ones too); the prompt stays padded to max_token_len; the prefix runs under
openpi's boolean mask (pad mask x block-causal cumsum rule) with eager attention that adds -2.3819763e38 where the
mask is False; every denoise step runs the whole suffix (pi0: [state, actions]) through the expert under the full
suffix mask, over the padded prefix cache, with the time conditioning computed afresh. Positions are
cumsum(pad mask) - 1. The Gemma layers project q, k and v with three matmuls and the MLP's gate and up with two, as
openpi's q_proj/k_proj/v_proj and gate_proj/up_proj do (the fast path fuses each group into one). It also serves
batches whose rows have different numbers of valid tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from typing import TYPE_CHECKING

from .gemma import Gemma, masked_eager_attention, rope_tables
from .inputs import check_image_inputs, check_noise, check_prefix_inputs
from .sampler import euler_schedule, time_embedding

if TYPE_CHECKING:  # pi0.py imports this module: the model class is needed for annotations only
    from .pi0 import PI0Model


def make_att_2d_masks(pad_masks: torch.Tensor, att_masks: torch.Tensor) -> torch.Tensor:
    """big_vision's rule: a query sees valid keys whose cumulative att_mask is <= its own. -> [B, Lq, Lk] bool."""
    cumsum = torch.cumsum(att_masks, dim=1)
    att_2d = cumsum[:, None, :] <= cumsum[:, :, None]
    return att_2d & (pad_masks[:, None, :] & pad_masks[:, :, None])


def _run_stack(stack: Gemma, x, positions, mask, past=None, mods=None, final_norm_mod=None):
    """Run ``stack`` over x [B, L, W] with a [B, L, Lk] mask; ``past`` is a list of per-layer (k, v) [B, KV, Lp, D]
    prepended to the keys. Returns (final-norm output, per-layer (k, v) of these tokens)."""
    g = stack.cfg
    cos, sin = rope_tables(positions, g.head_dim, g.rope_theta, x.dtype)
    kv = []
    for li, layer in enumerate(stack.layers):
        def attend(q, k, v, li=li):
            k, v = k.transpose(1, 2), v.transpose(1, 2)
            kv.append((k, v))
            if past is not None:
                k, v = torch.cat([past[li][0], k], dim=2), torch.cat([past[li][1], v], dim=2)
            return masked_eager_attention(q, k, v, mask)

        x = layer(x, cos, sin, attend, mods[li] if mods is not None else (None, None), fused_qkv=False,
                  fused_gate_up=False)
    out, _ = stack.norm(x, final_norm_mod)
    return out, kv


def embed_prefix(model: PI0Model, images, image_masks, tokens, token_mask):
    B, N = images.shape[:2]
    embs, pads = [], []
    for i in range(N):
        feats = model.projector(model.vision(images[:, i]))
        embs.append(feats)
        pads.append(image_masks[:, i:i + 1].expand(B, feats.shape[1]))
    embs.append(model.embed_language(tokens))
    pads.append(token_mask)
    embs = torch.cat([e.to(model.dtype) for e in embs], dim=1)
    pad = torch.cat(pads, dim=1)
    return embs, pad, torch.zeros_like(pad, dtype=torch.int64)


def action_time_mlp(model: PI0Model, action_emb: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
    """pi0's action tokens as openpi embeds them: action_time_mlp over [action, time] concatenated per token.
    action_emb [B, H, W], time_emb [B, W] (the same time for every token)."""
    x = model.action_time_mlp_in(torch.cat([action_emb, time_emb[:, None, :].expand_as(action_emb)], dim=2))
    return model.action_time_mlp_out(F.silu(x))


def embed_suffix(model: PI0Model, state, x_t, t: torch.Tensor):
    c = model.config
    B, H = x_t.shape[:2]
    time_emb = time_embedding(t.expand(B), c.expert.width)
    action_emb = model.action_in_proj(x_t)
    embs, att, cond = [], [], None
    if not c.is_pi05:
        embs.append(model.state_proj(state.to(torch.float32))[:, None, :])
        att.append(1)
        embs.append(action_time_mlp(model, action_emb, time_emb))
    else:
        cond = F.silu(model.time_mlp_out(F.silu(model.time_mlp_in(time_emb))))
        embs.append(action_emb)
    att += [1] + [0] * (H - 1)
    embs = torch.cat(embs, dim=1)
    pad = torch.ones(embs.shape[:2], dtype=torch.bool, device=embs.device)
    att = torch.tensor(att, dtype=torch.int64, device=embs.device)[None].expand(B, len(att))
    return embs, pad, att, cond


def reference_prefix(model: PI0Model, images, image_masks, tokens, token_mask):
    """openpi's prefix pass: every camera through SigLIP, the padded prompt, the masked prefix. -> (pad mask, per-layer
    (k, v) over the whole padded prefix)."""
    prefix, prefix_pad, prefix_att = embed_prefix(model, images, image_masks, tokens, token_mask)
    prefix_mask = make_att_2d_masks(prefix_pad, prefix_att)
    prefix_pos = torch.cumsum(prefix_pad.long(), dim=1) - 1
    _, past = _run_stack(model.vlm, prefix, prefix_pos, prefix_mask)
    return prefix_pad, past


def reference_velocity(model: PI0Model, prefix_pad, past, state, x: torch.Tensor, t) -> torch.Tensor:
    """One step's v(x, t) as openpi computes it: the whole suffix (pi0: [state, actions]) through the expert under the
    full mask, over the padded cache, with the time conditioning computed afresh."""
    c = model.config
    B = x.shape[0]
    t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
    suffix, suffix_pad, suffix_att, cond = embed_suffix(model, state, x, t)
    Ls = suffix.shape[1]
    mask = torch.cat([prefix_pad[:, None, :].expand(B, Ls, prefix_pad.shape[1]),
                      make_att_2d_masks(suffix_pad, suffix_att)], dim=2)
    positions = prefix_pad.sum(dim=-1, keepdim=True) + torch.cumsum(suffix_pad.long(), dim=1) - 1
    mods = final = None
    if cond is not None:
        mods = [(layer.input_layernorm.modulation(cond), layer.post_attention_layernorm.modulation(cond))
                for layer in model.expert.layers]
        final = model.expert.norm.modulation(cond)
    out, _ = _run_stack(model.expert, suffix.to(model.dtype), positions, mask, past, mods, final)
    return model.action_out_proj(out[:, -c.action_horizon:].to(model.action_out_proj.weight.dtype)).float()


def reference_denoise(model: PI0Model, prefix_pad, past, state, noise, num_steps=10):
    """openpi's Euler loop over reference_velocity."""
    times, dt = euler_schedule(num_steps)
    x = noise.to(torch.float32)
    for t in times:
        x = x + dt * reference_velocity(model, prefix_pad, past, state, x, t)
    return x


def sample_actions_reference(model: PI0Model, images, image_masks, tokens, token_mask, state, noise, num_steps=10):
    check_image_inputs(model.config, images, image_masks)
    check_prefix_inputs(model.config, images.shape[0], tokens, token_mask, state)
    check_noise(model.config, images.shape[0], noise)
    prefix_pad, past = reference_prefix(model, images, image_masks, tokens, token_mask)
    return reference_denoise(model, prefix_pad, past, state, noise, num_steps)
