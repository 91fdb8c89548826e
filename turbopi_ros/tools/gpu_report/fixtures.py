"""openpi's fixtures (tiny models, openpi's own actions) through the fast path on this device: float32,
bfloat16 and the FP8 modes."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch

from ...model.checkpoint import load_model
from ...model import fp8
from .fp8_parts import FP8_MODES
from .session import REPO_ROOT, Session, max_abs


def default_fixtures() -> Optional[Path]:
    """openpi's reference fixtures: ../shared/fixtures/openpi beside the repository, else .fixtures/openpi inside it
    (a copy that travels to a lent machine: docs/performance.md, "The command"); None when neither is there."""
    for root in (REPO_ROOT.parent / "shared" / "fixtures" / "openpi", REPO_ROOT / ".fixtures" / "openpi"):
        if (root / "pi0_case_a.npz").is_file():
            return root
    return None


def _fixture_actions(s: Session, root: Path, variant: str, dtype: str, case) -> torch.Tensor:
    """The fast path's actions on openpi's case a with the weights in ``dtype`` (fp8: quantized; in a dry run the
    dequantized twin of torch._scaled_mm on the CPU)."""
    from ..verify import run_case

    stem = root / f"{variant}_tiny"
    twin = dtype in FP8_MODES and s.dry  # on the CPU: bfloat16 weights quantized here, unchecked
    model = load_model(stem.with_suffix(".safetensors"), config=str(stem.with_suffix(".json")), device=s.device,
                       dtype="bfloat16" if twin else dtype)
    if twin:
        fp8.quantize_model(model, check_device=False, weights_only=dtype == fp8.WEIGHTS_ONLY)
    return run_case(model, case).float()


def fixtures_block(s: Session, root: Optional[Path]) -> Dict[str, object]:
    """openpi's fixtures (tiny models; openpi's own actions) through the fast path on this device in float32,
    bfloat16 and the FP8 modes (FP8_MODES): each one's max abs difference from openpi's actions, and the FP8
    modes' from bfloat16's. Seconds."""
    if root is None:
        why = "no openpi fixtures (../shared/fixtures/openpi, or a copy in .fixtures/openpi)"
        s.budget.skip_once(why)
        return {"skipped": why}
    from ..verify import load_case

    out: Dict[str, object] = {"root": str(root)}
    support = {mode: fp8.fp8_support(s.device, mode) for mode in FP8_MODES}
    dtypes = ("float32", "bfloat16") + tuple(mode for mode, (ok, _) in support.items() if ok or s.dry)
    for variant in ("pi0", "pi05"):
        try:
            case = load_case(root / f"{variant}_case_a.npz", device=s.device)
            actions = {dtype: _fixture_actions(s, root, variant, dtype, case) for dtype in dtypes}
            row = {f"{dtype}_vs_openpi": max_abs(a, case["actions"]) for dtype, a in actions.items()}
            row["openpi_max_abs"] = float(case["actions"].abs().max())  # for scale
            for mode, (_, why) in support.items():  # each FP8 mode against bfloat16, or why it did not run
                if mode in actions:
                    row[f"{mode}_vs_bfloat16"] = max_abs(actions[mode], actions["bfloat16"])
                else:
                    row[mode] = why
            out[variant] = row
        except Exception as e:
            s.budget.failed(out, f"openpi fixtures, {variant}", e)
    return out

