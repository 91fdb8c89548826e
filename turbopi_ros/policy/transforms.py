"""Observation and action transforms with openpi's conventions. numpy (and Pillow for the resize); no ROS, no torch.

- resize_with_pad: what openpi's inference pipeline runs (``transforms.ResizeImages`` calls
  ``openpi_client.image_tools.resize_with_pad``): keep the aspect ratio, resize with **Pillow's BILINEAR** filter
  (a triangle kernel widened by the downscale factor, i.e. antialiased, in 22-bit fixed point), paste onto zeros with
  the padding centred (the odd pixel goes to the bottom / right). We call Pillow itself, so the pixels are exactly
  openpi's. Pillow is the only practical way to be exact; the alternatives differ: openpi's jax
  ``shared.image_tools.resize_with_pad`` (float, used on the model side only when images are not yet 224x224) is off
  by one grey level on ~8% of the values for a 480x640 camera, and OpenCV's INTER_LINEAR does not antialias at all.
  resize_to_fit is the same resize without the padding, for callers that write the pixels into a batch themselves.
- image_to_model: uint8 -> float32 in [-1, 1], ``x.astype(float32) / 255 * 2 - 1`` (openpi's Observation.from_dict),
  optionally written into a preallocated array.
- normalize / unnormalize (openpi's Normalize / Unnormalize, no clipping):
  z-score ``(x - mean) / (std + 1e-6)`` (pi0), quantile ``(x - q01) / (q99 - q01 + 1e-6) * 2 - 1`` (pi0.5).
  Normalize uses the first len(x) stats (stats longer than x are fine, shorter are an error). Unnormalize on x wider
  than the stats: z-score pads mean with 0 and std with 1, so the extra dims become x * (1 + 1e-6); quantile leaves
  the extra dims as they are. Both exactly as openpi.
- pad_to_dim, make_bool_mask, and delta <-> absolute actions with a joint mask (openpi's DeltaActions /
  AbsoluteActions).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

NORM_EPS = 1e-6
_STAT_NAMES = ("mean", "std", "q01", "q99")


# --- images -----------------------------------------------------------------------------------------------------------
def fit_size(cur_h: int, cur_w: int, height: int, width: int):
    """openpi's aspect-preserving fit of a cur_h x cur_w image into height x width: (new_h, new_w), each
    ``int(cur / ratio)`` with ratio = max(cur_w / width, cur_h / height); at least 1 so that extreme aspect ratios
    still give an image (openpi raises there)."""
    ratio = max(cur_w / width, cur_h / height)
    return max(1, int(cur_h / ratio)), max(1, int(cur_w / ratio))


def _check_resize_args(image: np.ndarray, height: int, width: int, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"{name} expects a uint8 [H, W, 3] (or [H, W, 1]) image, got {image.dtype} "
                         f"{list(image.shape)}")
    if int(height) <= 0 or int(width) <= 0:
        raise ValueError(f"{name}: target size must be positive, got {height}x{width}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name}: empty image {list(image.shape)}")
    return image


def resize_to_fit(image: np.ndarray, height: int = 224, width: int = 224) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [new_h, new_w, C] (``fit_size``) with Pillow's bilinear filter: resize_with_pad
    without the padding, for callers that place the pixels themselves. An image already of the fitted size is
    returned as it is (not a copy)."""
    from PIL import Image  # Pillow: see the module docstring for why

    image = _check_resize_args(image, height, width, "resize_to_fit")
    cur_h, cur_w, channels = image.shape
    new_h, new_w = fit_size(cur_h, cur_w, height, width)
    if (new_h, new_w) == (cur_h, cur_w):
        return image
    pil = Image.fromarray(image[:, :, 0] if channels == 1 else image)
    resized = np.asarray(pil.resize((new_w, new_h), resample=Image.BILINEAR))
    return resized[:, :, None] if channels == 1 else resized


def resize_with_pad(image: np.ndarray, height: int = 224, width: int = 224) -> np.ndarray:
    """uint8 [H, W, C] (C = 3 RGB, or 1) -> uint8 [height, width, C]: aspect ratio kept, Pillow bilinear, zero padding
    centred. Exactly openpi_client.image_tools.resize_with_pad. An image already height x width is returned as a copy.
    """
    image = _check_resize_args(image, height, width, "resize_with_pad")
    if image.shape[:2] == (height, width):
        return image.copy()
    resized = resize_to_fit(image, height, width)
    new_h, new_w = resized.shape[:2]
    top, left = (height - new_h) // 2, (width - new_w) // 2
    out = np.zeros((height, width, image.shape[2]), dtype=np.uint8)
    out[top:top + new_h, left:left + new_w] = resized
    return out


def image_to_model(image: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [H, W, 3] in [-1, 1]: openpi's ``x.astype(float32) / 255 * 2 - 1``, the same float32
    operations in the same order, so the values are identical. ``out`` (float32, the image's shape, any strides, e.g.
    a window of a preallocated batch) receives the result in place of a new array; no temporaries either way."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image_to_model expects a uint8 [H, W, 3] image, got {image.dtype} {list(image.shape)}")
    if out is None:
        out = np.empty(image.shape, dtype=np.float32)
    elif out.dtype != np.float32 or out.shape != image.shape:
        raise ValueError(f"image_to_model: out must be float32 {list(image.shape)}, got {out.dtype} {list(out.shape)}")
    np.divide(image, np.float32(255.0), out=out)  # uint8 -> float32 is exact; then the float32 division
    out *= np.float32(2.0)
    out -= np.float32(1.0)
    return out


# --- normalization ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class NormStats:
    """Per-dimension statistics (float64 1-D arrays); any of them may be None."""

    mean: Optional[np.ndarray] = None
    std: Optional[np.ndarray] = None
    q01: Optional[np.ndarray] = None
    q99: Optional[np.ndarray] = None

    @classmethod
    def from_dict(cls, d: dict, where: str = "norm stats") -> "NormStats":
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected an object with mean/std/q01/q99, got {type(d).__name__}")
        fields = {}
        for name in _STAT_NAMES:
            if d.get(name) is None:
                continue
            try:
                arr = np.asarray(d[name], dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: '{name}' must be a list of numbers") from None
            if arr.ndim != 1 or arr.size == 0:
                raise ValueError(f"{where}: '{name}' must be a non-empty, finite 1-D list of numbers, got shape "
                                 f"{list(arr.shape)}")
            if not np.all(np.isfinite(arr)):
                bad = np.nonzero(~np.isfinite(arr))[0].tolist()
                raise ValueError(f"{where}: '{name}' must be a non-empty, finite 1-D list of numbers: NaN or inf at "
                                 f"indices {bad[:8]}{' ...' if len(bad) > 8 else ''}")
            fields[name] = arr
        if not fields:
            raise ValueError(f"{where}: none of {list(_STAT_NAMES)} given")
        for a, b in (("mean", "std"), ("q01", "q99")):
            if (a in fields) != (b in fields):
                raise ValueError(f"{where}: '{a}' and '{b}' must be given together")
            if a in fields and fields[a].shape != fields[b].shape:
                raise ValueError(f"{where}: '{a}' has {fields[a].size} values but '{b}' has {fields[b].size}")
        return cls(**fields)


def load_norm_stats(path: Union[str, Path]) -> Dict[str, NormStats]:
    """openpi's norm_stats.json (a file, or a directory holding one):
    ``{"norm_stats": {"state": {mean, std, q01, q99}, "actions": {...}}}`` -> {"state": NormStats, "actions": ...}."""
    path = Path(path)
    if path.is_dir():
        path = path / "norm_stats.json"
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"norm stats {path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"norm stats {path}: not valid JSON ({e})") from None
    stats = d.get("norm_stats") if isinstance(d, dict) else None
    if not isinstance(stats, dict) or not {"state", "actions"} <= set(stats):
        raise ValueError(f"norm stats {path}: expected "
                         f"{{\"norm_stats\": {{\"state\": {{...}}, \"actions\": {{...}}}}}}, "
                         f"got top-level keys {sorted(d) if isinstance(d, dict) else type(d).__name__}"
                         f"{' / ' + str(sorted(stats)) if isinstance(stats, dict) else ''}")
    return {k: NormStats.from_dict(v, f"norm stats {path} [{k}]") for k, v in stats.items()}


def find_norm_stats(checkpoint_dir: Union[str, Path], asset_id: Optional[str] = None) -> Optional[Path]:
    """assets/<asset_id>/norm_stats.json in an openpi checkpoint directory. Without ``asset_id``: the only one there,
    None if there is none, an error naming the choices if there are several. An asset id may span folders: openpi's
    LeRobot configs default it to the dataset's repo id (pi0_libero: assets/physical-intelligence/libero/)."""
    assets = Path(checkpoint_dir) / "assets"
    found = _norm_stats_files(assets) if assets.is_dir() else []
    choices = [p.parent.relative_to(assets).as_posix() for p in found]
    if asset_id:
        path = assets / asset_id / "norm_stats.json"
        if not path.is_file():
            raise ValueError(f"{path} not found (asset ids with norm stats here: {choices})")
        return path
    if len(found) > 1:
        raise ValueError(f"{assets} holds norm stats for several asset ids {choices}: set model.norm_stats to the "
                         f"one the checkpoint was trained with, one of {[str(p) for p in found]}")
    return found[0] if found else None


def _norm_stats_files(assets: Path) -> List[Path]:
    """Every norm_stats.json in a folder below ``assets`` (not in it), through symlinked folders too (Path.glob's
    ``**`` does not enter them); a folder reached twice (a symlink loop) is read once."""
    found, seen = [], set()
    for root, dirs, files in os.walk(assets, followlinks=True):
        if os.path.realpath(root) in seen:
            dirs[:] = []
            continue
        seen.add(os.path.realpath(root))
        if "norm_stats.json" in files and Path(root) != assets:
            found.append(Path(root) / "norm_stats.json")
    return sorted(found)


def _stats_pair(stats: NormStats, use_quantiles: bool, where: str):
    a, b = ("q01", "q99") if use_quantiles else ("mean", "std")
    lo, hi = getattr(stats, a), getattr(stats, b)
    if lo is None or hi is None:
        kind = "quantile" if use_quantiles else "z-score"
        raise ValueError(f"{where}: {kind} normalization needs '{a}' and '{b}' in the norm stats")
    return lo, hi


def require_stats(stats: NormStats, use_quantiles: bool, where: str) -> None:
    """A ValueError naming ``where`` unless ``stats`` hold what the normalization needs (z-score: mean and std;
    quantile: q01 and q99): for checking at load rather than at the first observation."""
    _stats_pair(stats, use_quantiles, where)


def _as_float_array(x, where: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0:
        raise ValueError(f"{where}: expected an array with a last dimension, got a scalar")
    return x


def normalize(x: np.ndarray, stats: NormStats, use_quantiles: bool, where: str = "state") -> np.ndarray:
    """openpi's Normalize: the first x.shape[-1] stats apply; no clipping."""
    x = _as_float_array(x, where)
    lo, hi = _stats_pair(stats, use_quantiles, where)
    n = x.shape[-1]
    if lo.shape[-1] < n:
        raise ValueError(f"{where}: {n} values but norm stats for only {lo.shape[-1]}")
    lo, hi = lo[:n], hi[:n]
    if use_quantiles:
        return (x - lo) / (hi - lo + NORM_EPS) * 2.0 - 1.0
    return (x - lo) / (hi + NORM_EPS)


def unnormalize(x: np.ndarray, stats: NormStats, use_quantiles: bool, where: str = "actions") -> np.ndarray:
    """openpi's Unnormalize (see the module docstring for dims beyond the stats). A float32 ``x`` (the model's
    actions) stays float32 until the float64 stats meet it, as in openpi: its quantile (x + 1) / 2 rounds in float32."""
    x = np.asarray(x)
    x = _as_float_array(x, where) if x.dtype not in (np.float32, np.float64) or x.ndim == 0 else x
    lo, hi = _stats_pair(stats, use_quantiles, where)
    d, n = lo.shape[-1], x.shape[-1]
    if d > n:
        raise ValueError(f"{where}: {n} values but norm stats for {d}: expected at least as many values as stats")
    if use_quantiles:
        head = (x[..., :d] + 1.0) / 2.0 * (hi - lo + NORM_EPS) + lo
        return np.concatenate([head, x[..., d:]], axis=-1)
    return x * (pad_to_dim(hi, n, value=1.0) + NORM_EPS) + pad_to_dim(lo, n)


# --- shapes and action spaces -----------------------------------------------------------------------------------------
def pad_to_dim(x: np.ndarray, dim: int, value: float = 0.0) -> np.ndarray:
    """Pad the last axis with ``value`` up to ``dim`` (openpi's pad_to_dim); wider than ``dim`` is an error here."""
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError("pad_to_dim: expected an array with a last dimension, got a scalar")
    if x.shape[-1] > dim:
        raise ValueError(f"pad_to_dim: {x.shape[-1]} values do not fit the model's {dim} dims")
    if x.shape[-1] == dim:
        return x
    pad = [(0, 0)] * (x.ndim - 1) + [(0, dim - x.shape[-1])]
    return np.pad(x, pad, constant_values=value)


def make_bool_mask(*dims: int) -> tuple:
    """openpi's make_bool_mask: positive n -> n x True, negative n -> |n| x False. (6, -1) -> 6 x True, False."""
    out = []
    for d in dims:
        out.extend([d > 0] * abs(int(d)))
    return tuple(out)


def _delta_terms(actions, state, mask, name: str):
    mask = np.asarray(mask)
    if mask.size == 0:
        mask = mask.astype(bool).reshape(0)
    if mask.ndim != 1 or mask.dtype != bool:
        raise ValueError(f"{name}: mask must be a 1-D sequence of bools, got {mask.dtype} {list(mask.shape)}")
    actions = np.array(actions, dtype=np.float64, copy=True)
    state = np.asarray(state, dtype=np.float64)
    d = mask.shape[0]
    if actions.ndim != 2 or actions.shape[1] < d:
        raise ValueError(f"{name}: actions must be [H, D] with D >= {d} (the mask's length), got "
                         f"{list(actions.shape)}")
    if state.ndim != 1 or state.shape[0] < d:
        raise ValueError(f"{name}: state must be a vector of at least {d} values (the mask's length), got "
                         f"{list(state.shape)}")
    return actions, np.where(mask, state[:d], 0.0)[None], d


def absolute_actions(actions: np.ndarray, state: np.ndarray, mask: Sequence[bool]) -> np.ndarray:
    """Delta actions [H, D] -> absolute: add the state to the dims where ``mask`` is True (openpi AbsoluteActions).
    The mask may be shorter than D: dims beyond it are untouched. Returns a new float64 array."""
    actions, offset, d = _delta_terms(actions, state, mask, "absolute_actions")
    actions[:, :d] += offset
    return actions


def delta_actions(actions: np.ndarray, state: np.ndarray, mask: Sequence[bool]) -> np.ndarray:
    """Absolute actions [H, D] -> deltas relative to the state where ``mask`` is True (openpi DeltaActions)."""
    actions, offset, d = _delta_terms(actions, state, mask, "delta_actions")
    actions[:, :d] -= offset
    return actions
