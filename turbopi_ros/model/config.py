"""Model configuration: the model config JSON schema of design.md §4, with named presets.

    {"variant": "pi0", "action_dim": 32, "action_horizon": 50, "max_token_len": 48,
     "vision": {"width", "depth", "num_heads", "mlp_dim", "patch_size", "image_size"},
     "vlm":    {"width", "depth", "mlp_dim", "num_heads", "num_kv_heads", "head_dim", "vocab_size"},
     "expert": {"width", "depth", "mlp_dim", "num_heads", "num_kv_heads", "head_dim"}}
"""
from __future__ import annotations

import dataclasses
import json
import numbers
from pathlib import Path
from typing import Any, Dict, Union

VARIANTS = ("pi0", "pi05")
# openpi's PaliGemma vocabulary; the expert has no embedding table.
PALIGEMMA_VOCAB_SIZE = 257152


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    width: int = 1152
    depth: int = 27
    num_heads: int = 16
    mlp_dim: int = 4304
    patch_size: int = 14
    image_size: int = 224

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int = 8
    num_kv_heads: int = 1
    head_dim: int = 256
    vocab_size: int = PALIGEMMA_VOCAB_SIZE
    rope_theta: float = 10000.0


# openpi's Gemma variants (openpi/models/gemma.py get_config), named as in an openpi config.json.
GEMMA_VARIANTS: Dict[str, GemmaConfig] = {
    "gemma_2b": GemmaConfig(width=2048, depth=18, mlp_dim=16384),
    "gemma_300m": GemmaConfig(width=1024, depth=18, mlp_dim=4096),
    "dummy": GemmaConfig(width=64, depth=4, mlp_dim=128, head_dim=16),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    variant: str = "pi0"
    action_dim: int = 32
    action_horizon: int = 50
    max_token_len: int = 48
    vision: VisionConfig = VisionConfig()
    vlm: GemmaConfig = GEMMA_VARIANTS["gemma_2b"]
    expert: GemmaConfig = GEMMA_VARIANTS["gemma_300m"]

    def __post_init__(self):
        problems = []
        if self.variant not in VARIANTS:
            problems.append(f"variant {self.variant!r} is not one of {VARIANTS}")
        sizes = [(name, getattr(self, name)) for name in ("action_dim", "action_horizon", "max_token_len")]
        for section in ("vision", "vlm", "expert"):
            sub = getattr(self, section)
            sizes += [(f"{section}.{f.name}", getattr(sub, f.name)) for f in dataclasses.fields(sub)
                      if f.type in (int, "int")]
        bad = [(name, value) for name, value in sizes
               if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0]
        if bad:  # the checks below divide by them, and torch takes them as tensor sizes
            raise ValueError("invalid model config: " + "; ".join(
                f"{name} must be a positive integer, got {value!r}" for name, value in bad))
        v = self.vision
        if v.width % v.num_heads:
            problems.append(f"vision.width {v.width} is not divisible by vision.num_heads {v.num_heads}")
        if v.image_size % v.patch_size:
            problems.append(f"vision.image_size {v.image_size} is not a multiple of patch_size {v.patch_size}")
        for name in ("vlm", "expert"):
            g = getattr(self, name)
            if g.num_heads % g.num_kv_heads:
                problems.append(f"{name}.num_heads {g.num_heads} is not a multiple of num_kv_heads {g.num_kv_heads}")
            if g.head_dim % 2:
                problems.append(f"{name}.head_dim {g.head_dim} must be even (rotary embedding)")
        if self.vlm.depth != self.expert.depth:
            problems.append(f"vlm.depth {self.vlm.depth} != expert.depth {self.expert.depth} (layers are paired)")
        if (self.vlm.num_heads, self.vlm.num_kv_heads, self.vlm.head_dim) != (
            self.expert.num_heads, self.expert.num_kv_heads, self.expert.head_dim
        ):
            problems.append("vlm and expert must share num_heads, num_kv_heads and head_dim (they attend together)")
        if self.expert.width % 2:
            problems.append(f"expert.width {self.expert.width} must be even (sinusoidal time embedding)")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    @property
    def is_pi05(self) -> bool:
        return self.variant == "pi05"

    @property
    def num_image_tokens(self) -> int:
        return self.vision.num_patches

    # --- JSON ---------------------------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["expert"].pop("vocab_size")  # the expert has no vocabulary
        for g in ("vlm", "expert"):
            if d[g]["rope_theta"] == GemmaConfig.rope_theta:  # written only when it is not the default
                d[g].pop("rope_theta")
        return d

    def to_json(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelConfig":
        if not isinstance(d, dict):
            raise ValueError(f"model config must be a JSON object, got {type(d).__name__}")
        known = {"variant", "action_dim", "action_horizon", "max_token_len", "vision", "vlm", "expert"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"model config: unknown keys {sorted(unknown)} (expected {sorted(known)})")
        missing = {"variant", "vision", "vlm", "expert"} - set(d)
        if missing:
            raise ValueError(f"model config: missing keys {sorted(missing)}")
        try:
            vision = VisionConfig(**d["vision"])
            vlm = GemmaConfig(**d["vlm"])
            expert = GemmaConfig(**d["expert"])
        except TypeError as e:
            raise ValueError(f"model config: {e}") from None
        top = {k: d[k] for k in ("action_dim", "action_horizon", "max_token_len") if k in d}
        if "max_token_len" not in top:
            top["max_token_len"] = 200 if d["variant"] == "pi05" else 48
        return cls(variant=d["variant"], vision=vision, vlm=vlm, expert=expert, **top)

    @classmethod
    def from_json(cls, path: Union[str, Path]) -> "ModelConfig":
        return cls.from_dict(read_json(path, "model config"))

    @classmethod
    def from_openpi(cls, d: Dict[str, Any], variant: str) -> "ModelConfig":
        """From an openpi PyTorch checkpoint's config.json (``paligemma_variant``, ``action_expert_variant``, ...).

        openpi's config.json does not say pi0 or pi0.5; the checkpoint keys do (see checkpoint.py).
        """
        names = {}
        for key in ("paligemma_variant", "action_expert_variant"):
            # openpi's LoRA configs name gemma_2b_lora / gemma_300m_lora: the same dimensions as the plain variants
            name = d.get(key)
            names[key] = name[: -len("_lora")] if isinstance(name, str) and name.endswith("_lora") else name
            if names[key] not in GEMMA_VARIANTS:
                known = sorted(GEMMA_VARIANTS) + [n + "_lora" for n in sorted(GEMMA_VARIANTS) if n != "dummy"]
                raise ValueError(f"openpi config.json: {key}={name!r}, expected one of {known}")
        return cls(
            variant=variant,
            action_dim=_openpi_int(d, "action_dim", 32),
            action_horizon=_openpi_int(d, "action_horizon", 50),
            max_token_len=_openpi_int(d, "max_token_len", 200 if variant == "pi05" else 48),
            vlm=GEMMA_VARIANTS[names["paligemma_variant"]],
            expert=GEMMA_VARIANTS[names["action_expert_variant"]],
        )

    @classmethod
    def preset(cls, name: str) -> "ModelConfig":
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown model preset {name!r} (presets: {', '.join(PRESETS)})") from None


def _openpi_int(d: Dict[str, Any], key: str, default: int) -> int:
    """An openpi config.json size: a ValueError naming the key when it is no integer (null, a word)."""
    value = d.get(key, default)
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: Infinity
        raise ValueError(f"openpi config.json: {key}={value!r}, expected an integer") from None


_TINY_VISION = VisionConfig(width=32, depth=2, num_heads=2, mlp_dim=64)
_TINY_GEMMA = dataclasses.replace(GEMMA_VARIANTS["dummy"], vocab_size=1024)

PRESETS: Dict[str, ModelConfig] = {
    # The released models (openpi pi0_* / pi05_* PyTorch checkpoints).
    "pi0": ModelConfig(variant="pi0", max_token_len=48),
    "pi05": ModelConfig(variant="pi05", max_token_len=200),
    # openpi's "dummy" Gemma with a shrunken SigLIP and vocabulary: the sizes of the shared openpi fixtures.
    "tiny": ModelConfig(variant="pi0", max_token_len=48, vision=_TINY_VISION, vlm=_TINY_GEMMA,
                        expert=GEMMA_VARIANTS["dummy"]),
    "tiny_pi05": ModelConfig(variant="pi05", max_token_len=200, vision=_TINY_VISION, vlm=_TINY_GEMMA,
                             expert=GEMMA_VARIANTS["dummy"]),
}


def read_json(path: Union[str, Path], what: str) -> Any:
    """A JSON file's content; a missing or malformed file is a ValueError naming ``what`` and the path."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{what} {path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path}: not valid JSON ({e})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path}: not a JSON text (a binary file?)") from None
    except OSError as e:  # a directory, an unreadable file
        raise ValueError(f"{what} {path}: cannot be read ({e.strerror or e})") from None


def load_config(spec: Union[str, Path, ModelConfig, Dict[str, Any]]) -> ModelConfig:
    """A preset name, a path to a model config JSON, a dict in that schema, or a ModelConfig."""
    if isinstance(spec, ModelConfig):
        return spec
    if isinstance(spec, dict):
        return ModelConfig.from_dict(spec)
    spec = str(spec)
    if spec in PRESETS:
        return PRESETS[spec]
    if spec.endswith(".json") or Path(spec).is_file():
        return ModelConfig.from_json(spec)
    raise ValueError(f"model config {spec!r}: neither a preset ({', '.join(PRESETS)}) nor a JSON file")

