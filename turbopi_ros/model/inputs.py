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
