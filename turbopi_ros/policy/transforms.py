"""Observation and action transforms, numpy only, with openpi's conventions.

- resize_with_pad: openpi's image_tools.resize_with_pad (tf.image.resize_with_pad semantics): keep the aspect ratio,
  resize with jax.image.resize's antialiased linear (triangle) filter, round back to uint8, pad with zeros centred.
  Checked against jax 0.10 beside the project: identical but for a few pixels per image off by one grey level
  (float32 summation order), e.g. 2 of 150,528 values for a 480x640 camera.
- image_to_model: uint8 -> float32 in [-1, 1] (x / 255 * 2 - 1).
- normalize / unnormalize: z-score (x - mean) / (std + 1e-6) for pi0, quantile (x - q01) / (q99 - q01 + 1e-6) * 2 - 1
  for pi0.5; stats shorter than x cover the leading dims (openpi slices on the way in and leaves the extra dims
  untouched on the way out).
- pad_to_dim, and delta <-> absolute actions with a joint mask (openpi's DeltaActions / AbsoluteActions).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np

NORM_EPS = 1e-6


# --- images ------------------------------------------------------------------------------------------------------------
def _linear_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] weights of jax.image.resize's antialiased linear kernel along one axis."""
    f32 = np.float32  # jax computes the weights in float32; so do we, to round the same way
    scale = f32(out_size) / f32(in_size)
    inv_scale = f32(1.0) / scale
    kernel_scale = max(inv_scale, f32(1.0))  # downsampling widens the kernel: a low-pass filter, not interpolation
    sample = (np.arange(out_size, dtype=f32) + f32(0.5)) * inv_scale - f32(0.5)
    x = np.abs(sample[:, None] - np.arange(in_size, dtype=f32)[None, :]) / kernel_scale
    w = np.maximum(f32(0.0), f32(1.0) - x)
    total = w.sum(axis=1, keepdims=True, dtype=f32)
    w = np.where(np.abs(total) > 1000.0 * np.finfo(f32).eps, w / np.where(total != 0, total, f32(1)), f32(0.0))
    inside = (sample >= -0.5) & (sample <= in_size - 0.5)
    return np.where(inside[:, None], w, f32(0.0)).astype(f32)


def resize_with_pad(image: np.ndarray, height: int = 224, width: int = 224) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [height, width, C], aspect ratio kept, zero padding centred."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"resize_with_pad expects a uint8 [H, W, C] image, got {image.dtype} {list(image.shape)}")
    cur_h, cur_w = image.shape[:2]
    if cur_h == 0 or cur_w == 0:
        raise ValueError(f"resize_with_pad: empty image {list(image.shape)}")
    if (cur_h, cur_w) == (height, width):
        return image.copy()
    ratio = max(cur_w / width, cur_h / height)
    new_h, new_w = max(1, int(cur_h / ratio)), max(1, int(cur_w / ratio))
    wh, ww = _linear_weights(cur_h, new_h), _linear_weights(cur_w, new_w)
    # height first, then width, each a float32 contraction (jax.image.resize's order)
    resized = np.einsum("oh,hwc->owc", wh, image.astype(np.float32))
    resized = np.einsum("owc,pw->opc", resized, ww)
    resized = np.clip(np.round(resized), 0, 255).astype(np.uint8)
    pad_h0 = (height - new_h) // 2
    pad_w0 = (width - new_w) // 2
    out = np.zeros((height, width, image.shape[2]), dtype=np.uint8)
    out[pad_h0:pad_h0 + new_h, pad_w0:pad_w0 + new_w] = resized
    return out


def image_to_model(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [H, W, 3] in [-1, 1]."""
    if image.dtype != np.uint8:
        raise ValueError(f"image_to_model expects uint8, got {image.dtype}")
    return image.astype(np.float32) / 255.0 * 2.0 - 1.0


# --- normalization ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class NormStats:
    mean: Optional[np.ndarray] = None
    std: Optional[np.ndarray] = None
    q01: Optional[np.ndarray] = None
    q99: Optional[np.ndarray] = None

    @classmethod
    def from_dict(cls, d: dict, where: str = "norm stats") -> "NormStats":
        fields = {}
        for name in ("mean", "std", "q01", "q99"):
            if d.get(name) is not None:
                arr = np.asarray(d[name], dtype=np.float64)
                if arr.ndim != 1 or not np.all(np.isfinite(arr)):
                    raise ValueError(f"{where}: '{name}' must be a finite 1-D list of numbers")
                fields[name] = arr
        return cls(**fields)


def load_norm_stats(path: Union[str, Path]) -> Dict[str, NormStats]:
    """openpi's norm_stats.json: {"norm_stats": {"state": {mean, std, q01, q99}, "actions": {...}}}."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"norm stats {path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"norm stats {path}: not valid JSON ({e})") from None
    stats = d.get("norm_stats", d) if isinstance(d, dict) else None
    if not isinstance(stats, dict) or not {"state", "actions"} <= set(stats):
        raise ValueError(f"norm stats {path}: expected {{\"norm_stats\": {{\"state\": ..., \"actions\": ...}}}}")
    return {k: NormStats.from_dict(v, f"norm stats {path} [{k}]") for k, v in stats.items() if isinstance(v, dict)}


def find_norm_stats(checkpoint_dir: Union[str, Path], asset_id: Optional[str] = None) -> Optional[Path]:
    """assets/<asset_id>/norm_stats.json in an openpi checkpoint directory; None if there is none."""
    assets = Path(checkpoint_dir) / "assets"
    found = sorted(assets.glob("*/norm_stats.json")) if assets.is_dir() else []
    if asset_id:
        path = assets / asset_id / "norm_stats.json"
        if not path.is_file():
            raise ValueError(f"{path} not found (asset ids here: {[p.parent.name for p in found]})")
        return path
    if len(found) > 1:
        raise ValueError(f"{assets} holds several norm stats {[p.parent.name for p in found]}: name one")
    return found[0] if found else None


def _stat(stats: NormStats, name: str, where: str) -> np.ndarray:
    value = getattr(stats, name)
    if value is None:
        raise ValueError(f"{where}: norm stats have no '{name}'")
    return value


def normalize(x: np.ndarray, stats: NormStats, use_quantiles: bool, where: str = "state") -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    if use_quantiles:
        q01, q99 = _stat(stats, "q01", where)[:n], _stat(stats, "q99", where)[:n]
        if q01.shape[-1] < n:
            raise ValueError(f"{where}: {n} values but quantile stats for only {q01.shape[-1]}")
        return (x - q01) / (q99 - q01 + NORM_EPS) * 2.0 - 1.0
    mean, std = _stat(stats, "mean", where)[:n], _stat(stats, "std", where)[:n]
    if mean.shape[-1] < n:
        raise ValueError(f"{where}: {n} values but z-score stats for only {mean.shape[-1]}")
    return (x - mean) / (std + NORM_EPS)


def unnormalize(x: np.ndarray, stats: NormStats, use_quantiles: bool, where: str = "actions") -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if use_quantiles:
        q01, q99 = _stat(stats, "q01", where), _stat(stats, "q99", where)
        d = min(q01.shape[-1], x.shape[-1])
        head = (x[..., :d] + 1.0) / 2.0 * (q99[:d] - q01[:d] + NORM_EPS) + q01[:d]
        return np.concatenate([head, x[..., d:]], axis=-1)
    mean, std = _stat(stats, "mean", where), _stat(stats, "std", where)
    d = min(mean.shape[-1], x.shape[-1])
    return np.concatenate([x[..., :d] * (std[:d] + NORM_EPS) + mean[:d], x[..., d:]], axis=-1)


# --- shapes and action spaces --------------------------------------------------------------------------------------------
def pad_to_dim(x: np.ndarray, dim: int, value: float = 0.0) -> np.ndarray:
    x = np.asarray(x)
    if x.shape[-1] > dim:
        raise ValueError(f"{x.shape[-1]} values do not fit the model's {dim} dims")
    if x.shape[-1] == dim:
        return x
    pad = [(0, 0)] * (x.ndim - 1) + [(0, dim - x.shape[-1])]
    return np.pad(x, pad, constant_values=value)


def absolute_actions(actions: np.ndarray, state: np.ndarray, mask: Sequence[bool]) -> np.ndarray:
    """Delta actions [H, D] -> absolute: add the state to the dims where ``mask`` is True (openpi AbsoluteActions)."""
    mask = np.asarray(mask, dtype=bool)
    d = mask.shape[-1]
    out = np.array(actions, dtype=np.float64, copy=True)
    out[..., :d] += np.where(mask, np.asarray(state, dtype=np.float64)[..., :d], 0.0)[None]
    return out


def delta_actions(actions: np.ndarray, state: np.ndarray, mask: Sequence[bool]) -> np.ndarray:
    """Absolute actions [H, D] -> deltas relative to the state (openpi DeltaActions)."""
    mask = np.asarray(mask, dtype=bool)
    d = mask.shape[-1]
    out = np.array(actions, dtype=np.float64, copy=True)
    out[..., :d] -= np.where(mask, np.asarray(state, dtype=np.float64)[..., :d], 0.0)[None]
    return out
