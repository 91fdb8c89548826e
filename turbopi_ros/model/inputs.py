"""The checks on what the engine is given, shared by the fast path, the reference path and the CUDA graphs."""
from __future__ import annotations

import torch

from .config import ModelConfig


def check_prefix_inputs(c: ModelConfig, B: int, tokens, token_mask, state) -> None:
    """The prefix inputs' shapes, dtypes and token ids, each error naming what was expected."""
    if tokens.ndim != 2 or tokens.shape[0] != B or tokens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"tokens must be integer [B={B}, L], got {tokens.dtype} {list(tokens.shape)}")
    if token_mask.dtype != torch.bool or token_mask.shape != tokens.shape:
        raise ValueError(f"token_mask must be bool {list(tokens.shape)}, got {token_mask.dtype} "
                         f"{list(token_mask.shape)}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= c.vlm.vocab_size):
        raise ValueError(f"token ids must be in [0, {c.vlm.vocab_size}) (the model's vocabulary), got "
                         f"[{int(tokens.min())}, {int(tokens.max())}]")
    if tuple(state.shape) != (B, c.action_dim):
        raise ValueError(f"state must be [B={B}, action_dim={c.action_dim}], got {list(state.shape)}")


def check_image_inputs(c: ModelConfig, images, image_masks) -> None:
    """The images' and their masks' shapes and dtypes (no device value read), each error naming what was expected."""
    s = c.vision.image_size
    if not isinstance(images, torch.Tensor) or images.ndim != 5 or tuple(images.shape[2:]) != (3, s, s):
        got = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be [B, cameras, 3, {s}, {s}] in [-1, 1], got {got}")
    if not images.is_floating_point():  # raw camera pixels (0..255) would run, silently wrong
        raise ValueError(f"images must be floating point in [-1, 1] (uint8 pixels x become x / 255 * 2 - 1), got "
                         f"{images.dtype}")
    if (not isinstance(image_masks, torch.Tensor) or image_masks.dtype != torch.bool
            or tuple(image_masks.shape) != tuple(images.shape[:2])):
        got = (f"{image_masks.dtype} {list(image_masks.shape)}" if isinstance(image_masks, torch.Tensor)
               else type(image_masks).__name__)
        raise ValueError(f"image_masks must be bool {list(images.shape[:2])}, got {got}")


def check_noise(c: ModelConfig, B: int, noise) -> None:
    """The denoise's start: [B, action_horizon, action_dim]."""
    expected = [B, c.action_horizon, c.action_dim]
    if not isinstance(noise, torch.Tensor) or list(noise.shape) != expected:
        got = list(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise ValueError(f"noise must be {expected}, got {got}")
