"""SigLIP vision tower and PaliGemma's projector, with openpi's (transformers') key names.

Input: CHW images in [-1, 1]. Patch conv (with bias) + learned position embedding, pre-norm encoder layers
(LayerNorm eps 1e-6, attention with biases and no mask, gelu-tanh MLP), post LayerNorm, no pooling head.
The projector is one Linear(vision width -> Gemma width); its output is not scaled.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig
from .fused import siglip_stack
from .gemma import fused_qkv

LN_EPS = 1e-6


class SiglipAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv = fused_qkv(self, "qkv", cfg.width, cfg.width, cfg.width, bias=True)
        self.out_proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, W = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.head_dim ** -0.5)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, W))


class SiglipMLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipLayer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=LN_EPS)
        self.self_attn = SiglipAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=LN_EPS)
        self.mlp = SiglipMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Embedding(cfg.num_patches, cfg.width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(images.to(self.patch_embedding.weight.dtype))
        return patches.flatten(2).transpose(1, 2) + self.position_embedding.weight


class SiglipEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(SiglipLayer(cfg) for _ in range(cfg.depth))


class SiglipVision(nn.Module):
    """images [N, 3, S, S] in [-1, 1] -> tokens [N, (S/patch)^2, vision width]. ``fused`` (PI0Model.use_fused)
    runs the encoder through model/fused.py's kernels."""

    fused = False

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = SiglipEmbeddings(cfg)
        self.encoder = SiglipEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.width, eps=LN_EPS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.cfg.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"vision tower: images must be [N, 3, {size}, {size}], got {list(images.shape)}")
        # The embeddings may be kept in float32 while the encoder runs in bfloat16 (as openpi does).
        x = self.embeddings(images).to(self.post_layernorm.weight.dtype)
        if self.fused:
            return siglip_stack(self, x)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)


class Projector(nn.Module):
    """PaliGemma's multi_modal_projector: one Linear with bias (key ``linear``)."""

    def __init__(self, vision_width: int, width: int):
        super().__init__()
        self.linear = nn.Linear(vision_width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.to(self.linear.weight.dtype))
