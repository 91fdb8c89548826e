"""Small random configs and inputs for engine tests (shared by several test modules)."""
from __future__ import annotations

import dataclasses

import torch

from turbopi_ros.model.config import GemmaConfig, ModelConfig, VisionConfig
from turbopi_ros.model.checkpoint import random_model


def small_config(variant: str = "pi0", *, num_kv_heads: int = 1, horizon: int = 6, action_dim: int = 5,
                 max_token_len: int = 10, image_size: int = 56) -> ModelConfig:
    """A fast config: 16 image tokens per camera, 2 layers, 4 query heads."""
    gemma = GemmaConfig(width=32, depth=2, mlp_dim=48, num_heads=4, num_kv_heads=num_kv_heads, head_dim=8,
                        vocab_size=64)
    return ModelConfig(variant=variant, action_dim=action_dim, action_horizon=horizon, max_token_len=max_token_len,
                       vision=VisionConfig(width=16, depth=2, num_heads=2, mlp_dim=24, patch_size=14,
                                           image_size=image_size),
                       vlm=gemma, expert=dataclasses.replace(gemma, width=24, mlp_dim=40, vocab_size=257152))


def random_inputs(config: ModelConfig, *, batch: int = 1, cameras=(True, True, True), valid_tokens=(5,),
                  seed: int = 0):
    """images, image_masks, tokens, token_mask, state, noise; valid_tokens gives each row's prompt length."""
    g = torch.Generator().manual_seed(seed)
    s = config.vision.image_size
    n = len(cameras)
    images = torch.rand((batch, n, 3, s, s), generator=g) * 2 - 1
    image_masks = torch.tensor([list(cameras)] * batch, dtype=torch.bool)
    L = config.max_token_len
    tokens = torch.randint(3, config.vlm.vocab_size, (batch, L), generator=g)
    token_mask = torch.zeros((batch, L), dtype=torch.bool)
    for b in range(batch):
        k = valid_tokens[b % len(valid_tokens)]
        token_mask[b, :k] = True
        tokens[b, 0] = 2
        tokens[b, k:] = 0
    state = torch.rand((batch, config.action_dim), generator=g) * 2 - 1
    noise = torch.randn((batch, config.action_horizon, config.action_dim), generator=g)
    return images, image_masks, tokens, token_mask, state, noise


def model_for(config: ModelConfig, seed: int = 0):
    return random_model(config, seed=seed)
