"""turbopi-verify: run the engine on a case in the openpi fixtures' npz format and compare with its actions.

    turbopi-verify --config CONFIG.json --weights W.safetensors --case CASE.npz [--path fast|reference] [--tol 1e-4]

The case holds preprocessed arrays (images [N, 224, 224, 3] in [-1, 1], image_masks, tokens + token_mask, normalized
state, noise, num_steps, expected actions). Prints ``max_abs_err=<float>`` as its last line; exit 0 iff <= --tol.
--config may be omitted when --weights is an openpi checkpoint directory.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict

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


def main(argv=None) -> int:
    from .model.checkpoint import CheckpointError, load_model

    p = argparse.ArgumentParser(prog="turbopi-verify", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="model config JSON or preset (optional for a checkpoint directory)")
    p.add_argument("--weights", required=True, help=".safetensors file or openpi checkpoint directory")
    p.add_argument("--case", required=True, help="case .npz (fixtures format)")
    p.add_argument("--path", choices=("fast", "reference"), default="fast")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--tol", type=float, default=1e-4)
    args = p.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
