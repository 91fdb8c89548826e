"""turbopi-verify: run the engine, or the whole policy, on an openpi case and compare with its actions.

    turbopi-verify --config CONFIG.json --weights W.safetensors --case CASE.npz [--path fast|reference] [--tol 1e-4]
    turbopi-verify --policy CASE.npz [--path fast|reference] [--tol 1e-4]

--case: the engine on a case in the openpi fixtures' npz format (preprocessed arrays: images [N, 224, 224, 3] in
[-1, 1], image_masks, tokens + token_mask, normalized state, noise, num_steps, expected actions). --config may be
omitted when --weights is an openpi checkpoint directory.
--policy: an end-to-end case (the openpi_policy fixtures: raw robot inputs, noise, openpi Policy's final actions) run
through the whole policy, robot adapter included. Everything else comes from the JSON sidecar beside the npz (same
stem): robot, model settings, weights, norm stats, tokenizer, camera slots; the policy is built by
load_policy, as the node builds it.
Either prints ``max_abs_err=<float>`` as its last line; exit 0 iff <= --tol; 2 for unusable input.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

CASE_ARRAYS = ("images", "image_masks", "tokens", "token_mask", "state", "noise", "num_steps", "actions")


def load_case(path, device="cpu") -> Dict[str, torch.Tensor]:
    """An npz case (no pickle) as batch-1 tensors: images [1, N, 3, S, S], image_masks, tokens, token_mask, state,
    noise, and expected actions [1, H, D]; num_steps as int."""
    with np.load(path, allow_pickle=False) as d:
        missing = [k for k in CASE_ARRAYS if k not in d.files]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing} (expected {list(CASE_ARRAYS)})")
        arrays = {k: d[k] for k in d.files}
    case = {
        "images": torch.from_numpy(arrays["images"]).float().permute(0, 3, 1, 2)[None],
        "image_masks": torch.from_numpy(arrays["image_masks"].astype(bool))[None],
        "tokens": torch.from_numpy(arrays["tokens"].astype(np.int64))[None],
        "token_mask": torch.from_numpy(arrays["token_mask"].astype(bool))[None],
        "state": torch.from_numpy(arrays["state"]).float()[None],
        "noise": torch.from_numpy(arrays["noise"]).float()[None],
        "actions": torch.from_numpy(arrays["actions"]).float()[None],
    }
    case = {k: v.to(device) for k, v in case.items()}
    case["num_steps"] = int(arrays["num_steps"])
    return case


def run_case(model, case: Dict[str, torch.Tensor], path: str = "fast") -> torch.Tensor:
    with torch.inference_mode():
        return model.sample_actions(case["images"], case["image_masks"], case["tokens"], case["token_mask"],
                                    case["state"], noise=case["noise"], num_steps=case["num_steps"], path=path)


def device_problem(device: str) -> str:
    """Why torch cannot run on ``device`` here ('' if it can)."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        return "not a torch device (cpu, cuda or cuda:N)"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return "this torch has no usable CUDA device"
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return f"this machine has {torch.cuda.device_count()} CUDA device(s)"
    return ""


def main(argv=None) -> int:
    from ..model.checkpoint import CheckpointError, load_model

    p = argparse.ArgumentParser(prog="turbopi-verify", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="model config JSON or preset (optional for a checkpoint directory)")
    p.add_argument("--weights", default=None, help=".safetensors file or openpi checkpoint directory (with --case)")
    p.add_argument("--case", default=None, help="case .npz (fixtures format)")
    p.add_argument("--policy", default=None, metavar="CASE.npz",
                   help="end-to-end policy case (openpi_policy fixtures format, JSON sidecar beside it)")
    p.add_argument("--path", choices=("fast", "reference"), default="fast")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--tol", type=float, default=1e-4)
    args = p.parse_args(argv)
    problem = device_problem(args.device)
    if problem:
        print(f"turbopi-verify: --device {args.device}: {problem}", file=sys.stderr)
        return 2
    if args.policy is not None:
        if args.case or args.weights or args.config:
            p.error("--policy takes no --case, --weights or --config: the case's JSON sidecar names them")
        return verify_policy(args.policy, path=args.path, device=args.device, dtype=args.dtype, tol=args.tol)
    if not args.case or not args.weights:
        p.error("--weights and --case are required (or --policy CASE.npz for an end-to-end case)")
    try:
        model = load_model(args.weights, config=args.config, device=args.device, dtype=args.dtype)
        case = load_case(args.case, device=args.device)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"turbopi-verify: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    actions = run_case(model, case, args.path)
    elapsed = time.perf_counter() - t0
    err = float((actions.float() - case["actions"]).abs().max())
    c = model.config
    print(f"{Path(args.case).name}: {c.variant}, path={args.path}, {args.dtype} on {args.device}, "
          f"{case['num_steps']} steps, cameras present {case['image_masks'][0].tolist()}, "
          f"{int(case['token_mask'].sum())} valid prompt tokens, {elapsed * 1e3:.0f} ms, tol={args.tol:g}: "
          f"{'PASS' if err <= args.tol else 'FAIL'}")
    print(f"max_abs_err={err:.3e}")
    return 0 if err <= args.tol else 1


# --- end-to-end policy cases ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class PolicyCase:
    """An end-to-end case read from its npz and JSON sidecar."""

    name: str
    settings: Dict[str, Any]  # load_policy keyword arguments, node-style
    observation: Any  # policy.Observation: the raw robot inputs, cameras renamed to model slots
    noise: np.ndarray  # [1, H, action_dim]
    actions: np.ndarray  # openpi Policy's final actions, float64
    sidecar: Dict[str, Any]
    arrays: Dict[str, np.ndarray]


def _sidecar_path(base: Path, value, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"sidecar: {what} must be a path (relative to the sidecar's folder), got {value!r}")
    path = base / value
    if not path.exists():
        raise ValueError(f"sidecar: {what} {path} not found")
    return str(path)


def load_policy_case(npz_path, *, device: str = "cpu", dtype: str = "float32") -> PolicyCase:
    """The case's arrays and sidecar -> the node-style settings and the raw observation. ValueError for anything
    missing or inconsistent, naming it."""
    from ..model.config import read_json
    from ..policy.adapters import make_adapter

    npz_path = Path(npz_path)
    side_path = npz_path.with_suffix(".json")
    if not npz_path.is_file():
        raise ValueError(f"{npz_path}: case file not found")
    sidecar = read_json(side_path, "the case's JSON sidecar (same stem as the npz)")
    with np.load(npz_path, allow_pickle=False) as d:
        arrays = {k: d[k] for k in d.files}
    missing = [k for k in ("noise", "num_steps", "actions") if k not in arrays]
    if missing:
        raise ValueError(f"{npz_path}: missing arrays {missing}")
    base = side_path.parent
    try:
        robot, model = sidecar["robot"], sidecar["model"]
        variant = model["variant"]
        slots = sidecar["cameras"]["model_slots"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{side_path}: missing {e} (expected robot, model.variant, cameras.model_slots)") from None
    adapter = make_adapter(robot)
    normalization = sidecar.get("normalization")
    expected_norm = "quantile" if variant == "pi05" else "zscore"
    if normalization not in (None, expected_norm):
        raise ValueError(f"{side_path}: normalization {normalization!r}, but a {variant} policy normalizes with "
                         f"{expected_norm} (as openpi)")
    mask = sidecar.get("delta_action_mask")
    adapt = sidecar.get("adapt_to_pi")
    settings = dict(
        checkpoint=_sidecar_path(base, model.get("weights"), "model.weights"),
        preset=_sidecar_path(base, model.get("fixture_json"), "model.fixture_json"),
        tokenizer=_sidecar_path(base, (sidecar.get("tokenizer") or {}).get("path"), "tokenizer.path"),
        norm_stats=_sidecar_path(base, sidecar.get("norm_stats_file"), "norm_stats_file"),
        asset_id=sidecar.get("asset_id") or "", robot_adapter=robot, adapt_to_pi=True if adapt is None else adapt,
        action_horizon=int(model.get("action_horizon") or 0), max_token_len=int(model.get("max_token_len") or 0),
        discrete_state_input=model.get("discrete_state_input"), num_steps=int(arrays["num_steps"]),
        delta_mask=[] if mask is None else [bool(m) for m in mask], device=device, dtype=dtype)
    return PolicyCase(name=npz_path.stem, settings=settings,
                      observation=_raw_observation(npz_path, arrays, adapter, slots, sidecar.get("prompt", "")),
                      noise=np.asarray(arrays["noise"]), actions=np.asarray(arrays["actions"], dtype=np.float64),
                      sidecar=sidecar, arrays=arrays)


def _raw_observation(npz_path: Path, arrays: Dict[str, np.ndarray], adapter, slots: Dict[str, Any], prompt: str):
    """The robot's raw inputs (raw/...) as an Observation: the state from its parts (the adapter's layout), each
    camera's frame in the model slot the sidecar maps it to (None: the robot has no such camera)."""
    from ..policy.policy import Observation

    raw = {k[len("raw/"):]: v for k, v in arrays.items() if k.startswith("raw/")}
    prompt = str(raw.pop("prompt", prompt))
    frames = {k[len("images/"):]: v for k, v in raw.items() if k.startswith("images/")}
    parts = {k: v for k, v in raw.items() if not k.startswith("images/")}
    if adapter is None:
        if "state" not in parts:
            raise ValueError(f"{npz_path}: no raw/state")
        state = np.asarray(parts["state"], dtype=np.float64)
    else:
        state = adapter.state_from_parts(parts)
    images = {}
    for slot, camera in slots.items():
        if camera is None:
            continue
        if camera not in frames:
            raise ValueError(f"{npz_path}: cameras.model_slots maps {slot} to {camera!r}, but there is no "
                             f"raw/images/{camera} (present: {sorted(frames)})")
        images[slot] = frames[camera]
    return Observation(images=images, state=state, prompt=prompt)


def verify_policy(npz_path, *, path: str = "fast", device: str = "cpu", dtype: str = "float32",
                  tol: float = 1e-4) -> int:
    from ..model.checkpoint import CheckpointError
    from ..policy.loading import load_policy

    policy = None
    try:
        case = load_policy_case(npz_path, device=device, dtype=dtype)
        policy = load_policy(**case.settings)
        if policy.config.variant != case.sidecar["model"]["variant"]:
            raise ValueError(f"the sidecar says {case.sidecar['model']['variant']} but the weights are "
                             f"{policy.config.variant}")
        t0 = time.perf_counter()
        chunk = policy.infer(case.observation, noise=case.noise, path=path)
        elapsed = time.perf_counter() - t0
    except (CheckpointError, ValueError, OSError) as e:
        print(f"turbopi-verify: {e}", file=sys.stderr)
        return 2
    finally:
        if policy is not None:
            policy.close()
    if chunk.actions.shape != case.actions.shape:
        print(f"turbopi-verify: actions {list(chunk.actions.shape)}, expected {list(case.actions.shape)}",
              file=sys.stderr)
        print(f"max_abs_err={float('inf')}")
        return 1
    err = float(np.abs(chunk.actions - case.actions).max())
    c = policy.config
    print(f"{Path(npz_path).name}: {case.sidecar.get('robot')} {c.variant}, path={path}, {dtype} on {device}, "
          f"horizon {c.action_horizon}, max_token_len {c.max_token_len}, state in prompt "
          f"{policy.discrete_state_input}, delta mask {policy.delta_mask is not None}, cameras "
          f"{sorted(case.observation.images)}, {elapsed * 1e3:.0f} ms, tol={tol:g}: "
          f"{'PASS' if err <= tol else 'FAIL'}")
    print(f"max_abs_err={err:.3e}")
    return 0 if err <= tol else 1


if __name__ == "__main__":
    sys.exit(main())
