"""Loading and saving weights: openpi PyTorch checkpoint directories and bare .safetensors files.

Safetensors only: a pickle (.pt/.pth/.pkl/.bin/.ckpt) is refused, never opened. Key names are openpi's
(``paligemma_with_expert.paligemma.model.language_model.layers.0.self_attn.q_proj.weight``, ...); every missing or
unexpected key and every wrong shape is reported by name. pi0 vs pi0.5 is told from the keys (``state_proj.*`` vs
``time_mlp_in.*``). float16 / bfloat16 / float32 files load into the requested dtype and device.

An openpi checkpoint directory holds ``model.safetensors``, ``config.json`` (``action_dim``, ``action_horizon``,
``paligemma_variant``, ``action_expert_variant``, ``precision``) and ``assets/<asset_id>/norm_stats.json``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch

from .config import GEMMA_VARIANTS, ModelConfig, load_config
from .fp8 import WEIGHTS_ONLY, quantize_model, require_fp8
from .pi0 import PI0Model

# openpi prefix -> ours. The first of each target is what we write; the others are older transformers layouts.
KEY_PREFIXES: Tuple[Tuple[str, str], ...] = (
    ("paligemma_with_expert.paligemma.model.vision_tower.vision_model.", "vision."),
    ("paligemma_with_expert.paligemma.model.multi_modal_projector.", "projector."),
    ("paligemma_with_expert.paligemma.model.language_model.", "vlm."),
    ("paligemma_with_expert.gemma_expert.model.", "expert."),
    ("paligemma_with_expert.paligemma.vision_tower.vision_model.", "vision."),
    ("paligemma_with_expert.paligemma.multi_modal_projector.", "projector."),
    ("paligemma_with_expert.paligemma.language_model.model.", "vlm."),
)
# PaliGemma ties its output head to the token embedding: (embed_tokens key, lm_head key) per transformers layout.
# openpi's converter saves with safetensors.torch.save_model, which keeps one name of a tied pair (the alphabetically
# first: lm_head) and records the dropped one in the file's metadata as {dropped: kept}.
TIED_PAIRS: Tuple[Tuple[str, str], ...] = (
    ("paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight",
     "paligemma_with_expert.paligemma.lm_head.weight"),
    ("paligemma_with_expert.paligemma.language_model.model.embed_tokens.weight",
     "paligemma_with_expert.paligemma.language_model.lm_head.weight"),
)
# Stored by openpi (tied to embed_tokens) but never used for actions.
UNUSED_KEYS = frozenset({
    "paligemma_with_expert.paligemma.lm_head.weight",
    "paligemma_with_expert.gemma_expert.lm_head.weight",
    "paligemma_with_expert.paligemma.language_model.lm_head.weight",
})
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")
FILE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file, key or shape at fault."""


def to_internal(key: str) -> Optional[str]:
    for theirs, ours in KEY_PREFIXES:
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return key if "." in key and key.split(".", 1)[0] in _TOP_LEVEL else None


def to_openpi(key: str) -> str:
    for theirs, ours in KEY_PREFIXES[:4]:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    return key


_TOP_LEVEL = {"action_in_proj", "action_out_proj", "state_proj", "action_time_mlp_in", "action_time_mlp_out",
              "time_mlp_in", "time_mlp_out"}


def openpi_state_dict(model: PI0Model) -> Dict[str, torch.Tensor]:
    """The model's weights under openpi's key names (q/k/v split again)."""
    return {to_openpi(k): v for k, v in model.state_dict().items()}


def variant_from_keys(keys: Iterable[str], where: str) -> str:
    keys = set(keys)
    pi05, pi0 = "time_mlp_in.weight" in keys, "state_proj.weight" in keys
    if pi05 == pi0:
        raise CheckpointError(f"{where}: cannot tell pi0 from pi0.5: expected exactly one of 'state_proj.weight' "
                              f"(pi0) or 'time_mlp_in.weight' (pi0.5), found {'both' if pi0 else 'neither'}")
    return "pi05" if pi05 else "pi0"


# --- dtype policy ---------------------------------------------------------------------------------------------------
def _keeps_float32(name: str) -> bool:
    """As openpi's bfloat16 models: norms, the vision embeddings and the small action/time heads stay float32."""
    return (name.split(".", 1)[0] in _TOP_LEVEL or name.startswith("vision.embeddings.")
            or ".input_layernorm." in name or ".post_attention_layernorm." in name
            or name.startswith(("vlm.norm.", "expert.norm.")))


def set_dtype(model: PI0Model, dtype: torch.dtype) -> PI0Model:
    if dtype not in FILE_DTYPES:
        raise ValueError(f"dtype must be one of float32, bfloat16, float16, got {dtype}")
    for name, p in model.named_parameters():
        p.data = p.data.to(torch.float32 if _keeps_float32(name) else dtype)
    model.clear_step_conditioning()
    return model


FP8_NAMES = ("fp8", "float8")


def is_fp8(dtype) -> bool:
    """``model.dtype: fp8``: bfloat16 with the layers' linear weights in FP8 (model/fp8.py)."""
    return isinstance(dtype, str) and dtype.lower() in FP8_NAMES


def is_fp8_weights(dtype) -> bool:
    """``model.dtype: fp8_weights``: bfloat16 with the action expert's linear weights alone in FP8 (model/fp8.py)."""
    return isinstance(dtype, str) and dtype.lower() == WEIGHTS_ONLY


def fp8_mode(dtype) -> Optional[str]:
    """The FP8 mode ``dtype`` names ("fp8" or "fp8_weights", fp8.fp8_support's names), None for any other dtype."""
    return WEIGHTS_ONLY if is_fp8_weights(dtype) else "fp8" if is_fp8(dtype) else None


def parse_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    """The compute dtype; "fp8" and "fp8_weights" compute in bfloat16 (weights quantized after loading)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if fp8_mode(dtype):
        return torch.bfloat16
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"dtype {dtype!r} not supported (float32, bfloat16, float16, fp8, fp8_weights)")
    return names[dtype]


def _fp8_check(dtype, device) -> None:
    if fp8_mode(dtype):
        require_fp8(device, fp8_mode(dtype))  # before any weight is read: a refusal costs nothing


def _fp8_finish(model: PI0Model, dtype) -> PI0Model:
    if fp8_mode(dtype):
        quantize_model(model, weights_only=fp8_mode(dtype) == WEIGHTS_ONLY)
    return model


# --- construction ----------------------------------------------------------------------------------------------------
def random_model(config: Union[str, ModelConfig], *, seed: int = 0, device="cpu",
                 dtype: Union[str, torch.dtype] = torch.float32) -> PI0Model:
    """A model with seeded random weights (demos, tests, benchmarks): N(0, std) with std = min(0.05, fan_in^-0.5)
    for matrices, 0.1 for norm scales and embeddings, 0.05 for biases."""
    config = load_config(config)
    _fp8_check(dtype, device)
    with torch.device("meta"):
        model = PI0Model(config)
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "embed" not in name:
                std = min(0.05, p[0].numel() ** -0.5)
            else:
                std = 0.1 if (p.ndim == 1 and "bias" not in name) or "embed" in name else 0.05
            p.normal_(0.0, std, generator=gen)
    return _fp8_finish(set_dtype(model.eval(), parse_dtype(dtype)).requires_grad_(False), dtype)


def _check_not_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: refusing to load a pickle file ({path.suffix}); only .safetensors weights are "
                              "loaded (unpickling can run arbitrary code). Convert it with safetensors first.")
    with open(path, "rb") as f:
        head = f.read(16)
    # safetensors: an 8-byte little-endian header length (its low bytes may read b"\x80" or b"PK"), then the JSON
    # header, which opens with "{"; a torch zip (PK) or a pickle (\x80, protocol) has no "{" at byte 8
    if head[8:9] != b"{" and (head[:2] == b"PK" or head[:1] == b"\x80"):
        raise CheckpointError(f"{path}: this is a pickle/zip torch file, not safetensors; refusing to unpickle it")
    if len(head) < 8:
        raise CheckpointError(f"{path}: too short to be a safetensors file")


def read_safetensors(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """Every tensor of a safetensors file by name, with the names that ``save_model`` dropped from tied groups
    restored from the file's metadata."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    _check_not_pickle(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except SafetensorError as e:
        raise CheckpointError(f"{path}: {_truncated(path) or 'not a valid safetensors file'} ({e})") from None
    restore_tied(tensors, metadata)
    bad = [f"{k} ({t.dtype})" for k, t in tensors.items() if t.dtype not in FILE_DTYPES]
    if bad:
        raise CheckpointError(f"{path}: unsupported dtypes, expected float16/bfloat16/float32: {_names(bad)}")
    return tensors


def _truncated(path: Path) -> str:
    """'truncated: ...' when the file is shorter than its own safetensors header says (an interrupted download or
    copy), else ''. The header: an 8-byte little-endian length, then that much JSON with each tensor's data_offsets."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if 8 + header_len > size:
            return f"truncated: {size} bytes, its header alone should be {8 + header_len}"
        try:
            header = json.loads(f.read(header_len))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):  # a header that is not an object
            return ""
    if 8 + header_len + end > size:
        return f"truncated: {size} bytes, its header describes {8 + header_len + end}"
    return ""


def restore_tied(tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> None:
    """Give the names that ``safetensors.torch.save_model`` dropped back their tensors: its metadata maps each
    dropped name to the kept one. Without such metadata, PaliGemma's tied pair is restored from whichever of its
    two names the file has."""
    for dropped, kept in metadata.items():
        if dropped not in tensors and kept in tensors:
            tensors[dropped] = tensors[kept]
    for embed, head in TIED_PAIRS:
        if embed not in tensors and head in tensors:
            tensors[embed] = tensors[head]


def _names(items: List[str], limit: int = 20) -> str:
    items = sorted(items)
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def load_state(model: PI0Model, tensors: Dict[str, torch.Tensor], where: str) -> None:
    """Load openpi-named tensors into ``model``, checking every key and shape first."""
    expected = {k: tuple(v.shape) for k, v in openpi_state_dict(model).items()}
    unexpected = [k for k in tensors if to_internal(k) is None or to_openpi(to_internal(k)) not in expected]
    unexpected = [k for k in unexpected if k not in UNUSED_KEYS]
    given = {to_openpi(to_internal(k)): k for k in tensors if to_internal(k) is not None}
    missing = [k for k in expected if k not in given]
    wrong = [f"{given[k]}: file {list(tensors[given[k]].shape)}, expected {list(shape)}"
             for k, shape in expected.items() if k in given and tuple(tensors[given[k]].shape) != shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_names(wrong)}")
    if problems:
        raise CheckpointError(f"{where} does not match the {model.config.variant} model config: "
                              + "; ".join(problems))
    state = {to_internal(theirs): tensors[theirs] for theirs in given.values()}
    model.load_state_dict(state, strict=True)


def read_checkpoint_config(directory: Path, variant: str) -> ModelConfig:
    path = directory / "config.json"
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: no config.json (an openpi checkpoint directory has model.safetensors, "
                              "config.json and assets/*/norm_stats.json); pass a model config JSON instead") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object (action_dim, action_horizon, paligemma_variant, "
                              f"action_expert_variant, precision), got {type(d).__name__}")
    if "turbopi_model_config" in d:
        return ModelConfig.from_dict(d["turbopi_model_config"])
    try:
        return ModelConfig.from_openpi(d, variant)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _no_weights_hint(directory: Path) -> str:
    """What a checkpoint directory without model.safetensors holds instead, when it is something known."""
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        return f" (found {', '.join(pickles)}: pickle files are refused, convert to safetensors)"
    if (directory / "params").is_dir():
        return (" (found params/: an openpi JAX (orbax) checkpoint; convert it to PyTorch with openpi's "
                "examples/convert_jax_model_to_pytorch.py)")
    return ""


def load_model(path: Union[str, Path], *, config: Union[None, str, ModelConfig] = None, device="cpu",
               dtype: Union[str, torch.dtype] = torch.float32,
               configure: Optional[Callable[[ModelConfig], ModelConfig]] = None) -> PI0Model:
    """An openpi checkpoint directory, or a bare .safetensors file plus a model config (preset name or JSON).
    ``configure``: called with the config once the checkpoint's variant is known, returns the config to build (e.g.
    per-robot settings the weights do not fix: action_horizon, max_token_len)."""
    path = Path(path)
    _fp8_check(dtype, device)
    if path.is_dir():
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(f"{path}: no {WEIGHTS_FILE}{_no_weights_hint(path)}")
    elif path.exists():
        weights = path
    else:
        raise CheckpointError(f"{path}: no such checkpoint directory or weights file")
    tensors = read_safetensors(weights)
    variant = variant_from_keys(tensors, str(weights))
    if config is not None:
        cfg = load_config(config)
    elif path.is_dir():
        cfg = read_checkpoint_config(path, variant)
    else:
        raise CheckpointError(f"{weights}: a bare weights file needs a model config (preset name or JSON)")
    if cfg.variant != variant:
        raise CheckpointError(f"{weights} holds a {variant} model but the model config says {cfg.variant}")
    if configure is not None:
        cfg = configure(cfg)
    with torch.device("meta"):
        model = PI0Model(cfg)
    model = set_dtype(model.to_empty(device=device), parse_dtype(dtype))
    load_state(model, tensors, str(weights))
    return _fp8_finish(model.eval().requires_grad_(False), dtype)


def save_checkpoint(model: PI0Model, directory: Union[str, Path], *, precision: Optional[str] = None) -> Path:
    """Write an openpi-layout directory: model.safetensors (openpi key names) and config.json."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in openpi_state_dict(model).items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    c = model.config

    def variant_name(g):
        return next((n for n, v in GEMMA_VARIANTS.items() if (v.width, v.depth, v.mlp_dim, v.head_dim)
                     == (g.width, g.depth, g.mlp_dim, g.head_dim)), "custom")

    meta = {"action_dim": c.action_dim, "action_horizon": c.action_horizon,
            "paligemma_variant": variant_name(c.vlm), "action_expert_variant": variant_name(c.expert),
            "precision": precision or str(model.dtype).replace("torch.", ""),
            "turbopi_model_config": c.to_dict()}
    (directory / "config.json").write_text(json.dumps(meta, indent=1) + "\n")
    return directory
