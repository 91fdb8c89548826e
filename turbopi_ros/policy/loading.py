"""A Policy from the node's settings: the checkpoint (or random weights), the tokenizer, the norm stats, the robot
adapter and the model settings openpi's training configs set. The node, turbopi-replay and turbopi-verify --policy
all build their policy here, so that what is verified and replayed is what runs."""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Dict, Optional, Union

from ..logs import get_logger
from ..model.checkpoint import PICKLE_SUFFIXES, CheckpointError, load_model, random_model
from ..model.config import load_config
from .adapters import ADAPTERS, RobotAdapter, make_adapter
from .policy import RANDOM_WEIGHTS, Policy
from .tokenizer import make_tokenizer
from .transforms import find_norm_stats, load_norm_stats

logger = get_logger(__name__)
NO_NORM_STATS = "none"  # model.norm_stats: no normalization, said explicitly


def load_policy(*, checkpoint: str, preset: str = "tiny", device: str = "cpu", dtype: str = "float32",
                tokenizer: str = "", norm_stats: str = "", seed: int = 0, robot_adapter: str = "none",
                adapt_to_pi: bool = True, asset_id: str = "", action_horizon: int = 0, max_token_len: int = 0,
                discrete_state_input: Union[None, bool, str] = None, **kwargs) -> Policy:
    """The policy that the node's settings ask for (the node, turbopi-replay and turbopi-verify --policy build it
    here). checkpoint: an openpi checkpoint directory or .safetensors file (with ``preset``: a preset name or a
    model config JSON), or "random" for seeded random weights of ``preset`` (demos, tests): then no tokenizer
    file and no norm stats are needed (a byte tokenizer and identity normalization are used, and the log says
    so). norm_stats: a norm_stats.json, a directory holding one (or, with asset_id, holding
    <asset_id>/norm_stats.json); "" = the checkpoint directory's assets/<asset_id>/norm_stats.json; "none" = no
    normalization. Real weights without norm stats are refused unless "none" says so, as openpi refuses them.
    robot_adapter: one of adapters.ADAPTERS; adapt_to_pi: aloha's openpi conversion (on by default).
    action_horizon, max_token_len (0 = default) and discrete_state_input (None or "auto" = default): the model
    settings openpi's training configs set. Each comes from the parameter, else the checkpoint's config.json,
    else the robot adapter's openpi config for the checkpoint's variant, else the model config; a parameter that
    contradicts the checkpoint's config.json is an error naming it."""
    if robot_adapter not in ADAPTERS:  # checked first: loading a checkpoint takes a while
        raise ValueError(f"robot.adapter {robot_adapter!r} is unknown: expected one of {list(ADAPTERS)}")
    adapter = make_adapter(robot_adapter, adapt_to_pi)
    discrete_state_input = _tristate(discrete_state_input, "model.discrete_state_input")
    if not checkpoint:
        raise ValueError("model.checkpoint is not set: give an openpi checkpoint directory or .safetensors file, "
                         f"or '{RANDOM_WEIGHTS}' for random weights of model.preset (demos and tests only)")
    real = checkpoint != RANDOM_WEIGHTS
    stats_path = _norm_stats_path(norm_stats, checkpoint if real else "", asset_id)
    stated = _checkpoint_settings(checkpoint) if real and Path(checkpoint).is_dir() else {}
    configure = functools.partial(_model_settings, adapter=adapter, stated=stated,
                                  asked={"action_horizon": action_horizon, "max_token_len": max_token_len})
    if real:
        if not tokenizer:  # checked first: loading a checkpoint takes a while
            raise ValueError("model.tokenizer is required with a real checkpoint (paligemma_tokenizer.model)")
        weights = Path(checkpoint)
        loadable = weights.is_dir() or (weights.is_file() and weights.suffix.lower() not in PICKLE_SUFFIXES)
        if loadable and stats_path is None and norm_stats != NO_NORM_STATS:  # any name; a pickle: load_model says
            raise ValueError(
                f"no norm stats for {checkpoint}: an openpi checkpoint directory keeps them in "
                "assets/<asset_id>/norm_stats.json, and openpi refuses a checkpoint without them (the state would go "
                "in and the actions come out unnormalized); set model.norm_stats to a norm_stats.json (or the folder "
                f"holding it), or to '{NO_NORM_STATS}' for weights trained on unnormalized data")
        model = _load_checkpoint(checkpoint, preset, device=device, dtype=dtype, configure=configure)
    else:
        model = random_model(configure(load_config(preset)), seed=seed, device=device, dtype=dtype)
        logger.warning("model.checkpoint is '%s': random weights of preset '%s' (actions are meaningless)",
                       RANDOM_WEIGHTS, preset)
    if "discrete_state_input" in stated:
        if discrete_state_input is not None and discrete_state_input != stated["discrete_state_input"]:
            raise ValueError(f"model.discrete_state_input is {discrete_state_input} but the checkpoint's "
                             f"config.json says {stated['discrete_state_input']}")
        discrete_state_input = stated["discrete_state_input"]
    stats = load_norm_stats(stats_path) if stats_path else None
    if stats is None:
        logger.warning("no norm stats: state and actions pass through unnormalized")
    c = model.config
    if discrete_state_input is None:
        discrete_state_input = adapter.defaults(c.variant).discrete_state_input if adapter else c.is_pi05
    prompt_format = "pi05" if discrete_state_input else "pi0"  # pi0.5 without the state: pi0's prompt format
    tok = make_tokenizer(tokenizer, c.max_token_len, c.vlm.vocab_size, prompt_format if c.is_pi05 else c.variant)
    return Policy(model, tokenizer=tok, norm_stats=stats, seed=seed, robot_adapter=adapter,
               discrete_state_input=discrete_state_input, **kwargs)


def _load_checkpoint(checkpoint: str, preset: str, **kwargs):
    """load_model with the checkpoint's config.json, or model.preset where there is none: a bare weights file, or a
    directory as openpi's scripts/train_pytorch.py writes one (model.safetensors, assets/, and the training config
    only in a pickle, metadata.pt, never read). A refusal of such a directory says that the preset was its config
    (the default preset, tiny, fits no real checkpoint)."""
    path = Path(checkpoint)
    has_config = path.is_dir() and (path / "config.json").exists()
    try:
        return load_model(checkpoint, config=None if has_config else preset, **kwargs)
    except CheckpointError as e:
        if has_config or not path.is_dir():
            raise
        raise CheckpointError(f"{e} ({checkpoint} has no config.json, as openpi's scripts/train_pytorch.py writes "
                              f"none: model.preset {preset!r} was its model config; set model.preset to the "
                              "checkpoint's: pi0, pi05 or a model config JSON)") from None


def _tristate(value, name: str) -> Optional[bool]:
    """None / "auto" / "" -> None (the default); a bool or "true" / "false" -> that bool."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("", "auto", "true", "false"):
        return {"": None, "auto": None, "true": True, "false": False}[value.lower()]
    raise ValueError(f"{name} must be true, false or auto, got {value!r}")


def _checkpoint_settings(directory) -> Dict[str, object]:
    """The model settings an openpi checkpoint directory's config.json states (openpi writes action_horizon; a
    turbopi_model_config block also max_token_len); nothing when it has no readable config.json (load_model reports
    that)."""
    try:
        d = json.loads((Path(directory) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(d, dict):
        return {}
    inner = d.get("turbopi_model_config") if isinstance(d.get("turbopi_model_config"), dict) else {}
    out = {}
    for key in ("action_horizon", "max_token_len", "discrete_state_input"):
        value = d.get(key, inner.get(key))
        try:
            if value is not None:
                out[key] = bool(value) if key == "discrete_state_input" else int(value)
        except (TypeError, ValueError, OverflowError):
            pass  # no integer (a word, NaN): load_model names the key
    return out


def _model_settings(cfg, *, adapter: Optional[RobotAdapter], stated: Dict[str, object], asked: Dict[str, int]):
    """The model config with action_horizon and max_token_len resolved (load_policy says the order)."""
    changes = {}
    for key, value in asked.items():
        value = int(value or 0)
        if value < 0:
            raise ValueError(f"model.{key} must be positive (or 0 for the default), got {value}")
        if value and key in stated and stated[key] != value:
            raise ValueError(f"model.{key} is {value} but the checkpoint's config.json says {stated[key]}: they must "
                             f"agree (0 takes the checkpoint's)")
        if not value:
            value = stated.get(key) or (getattr(adapter.defaults(cfg.variant), key) if adapter else 0)
        if value and value != getattr(cfg, key):
            changes[key] = value
    return dataclasses.replace(cfg, **changes) if changes else cfg


def _norm_stats_path(norm_stats: str, checkpoint: str, asset_id: str) -> Optional[Path]:
    """Where the norm stats are (load_policy), or None for none. With asset_id, a norm_stats.json given as a
    file must lie in a folder of that name (as openpi's assets/<asset_id>/norm_stats.json)."""
    if norm_stats == NO_NORM_STATS:
        return None
    if norm_stats:
        path = Path(norm_stats)
        if asset_id and path.is_dir() and not (path / "norm_stats.json").is_file():
            path = path / asset_id / "norm_stats.json"
            if not path.is_file():
                raise ValueError(f"model.norm_stats: {path} not found (asset id {asset_id!r})")
        elif asset_id and path.is_file() and not ("/" + path.parent.as_posix()).endswith("/" + asset_id.strip("/")):
            raise ValueError(f"model.norm_stats {path} is not in a folder named after the asset id {asset_id!r}")
        return path
    if checkpoint and Path(checkpoint).is_dir():
        return find_norm_stats(checkpoint, asset_id or None)
    return None
