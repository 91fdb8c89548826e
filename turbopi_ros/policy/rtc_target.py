"""Real-time chunking, the policy half: the previous chunk becomes the guided denoise's target (numpy, no torch).

The node executes chunk A_prev while the next inference runs. The new chunk's first d actions (d = inference delay
in actions) will already be executed from A_prev by the time it arrives, and the following ones overlap A_prev up to
where A_prev ends. So (arXiv 2506.07339, Eq. 5, with the new chunk's action index i):

    W_i = 1                                  i < d        (frozen: executed from A_prev whatever we compute)
    W_i = c_i (e^c_i - 1) / (e - 1)          d <= i < H - s, c_i = (H - s - i) / (H - s - d + 1)
    W_i = 0                                  i >= H - s   (A_prev has no action there)

where s is the execution horizon: how many actions the robot advanced between the two observations. As in the
authors' code, H - s takes precedence: if d > H - s, the ones stop at H - s.

The target Y: A_prev resampled at the new chunk's action times (stamps rarely fall on the same grid; linear
interpolation, as the command stream interpolates), delta dims re-expressed relative to the NEW observation's state
(the model predicts deltas from the state it sees), normalized with the policy's action stats, padded to the model's
action_dim. Times past A_prev's end and the padded dims get weight 0.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from .transforms import NORM_EPS, NormStats, delta_actions, normalize, pad_to_dim


@dataclasses.dataclass
class PreviousChunk:
    """The chunk the node is executing, as Policy.infer returned it."""

    actions: np.ndarray  # [H, N] robot-space absolute targets (ActionChunk.actions)
    stamp: float  # its observation's stamp: action k is the target at stamp + (k + 1) / rate_hz
    rate_hz: float  # the model's action rate (control_rate_hz)


@dataclasses.dataclass
class GuidanceTarget:
    """Y and W in model space, [H, action_dim] each, and which actions are frozen (the first d that A_prev covers)."""

    target: np.ndarray
    weights: np.ndarray
    frozen: np.ndarray  # [H] bool: weight 1 (the first d actions, at most H - s, where A_prev has a value)

    def prefix_error(self, actions: np.ndarray, dims: int) -> Optional[float]:
        """RMS distance in model space between ``actions`` [H, action_dim] and Y over the frozen actions and the first
        ``dims`` (robot) dims; None when no action is frozen (d = 0)."""
        if not self.frozen.any():
            return None
        diff = np.asarray(actions, dtype=np.float64)[self.frozen, :dims] - self.target[self.frozen, :dims]
        return float(np.sqrt(np.mean(diff * diff)))


def _check_steps(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0 (a number of actions), got {value!r}")
    return int(value)


def prefix_weights(horizon: int, delay_steps: int, execution_horizon: int) -> np.ndarray:
    """The paper's soft prefix mask W [horizon] (module docstring): 1 for the first d actions, exponential decay to 0
    at H - s, 0 after. s >= H means no overlap (all zeros)."""
    horizon = _check_steps(horizon, "horizon")
    d = _check_steps(delay_steps, "delay_steps")
    s = _check_steps(execution_horizon, "execution_horizon")
    end = max(horizon - s, 0)
    start = min(d, end)
    i = np.arange(horizon, dtype=np.float64)
    c = (end - i) / (end - start + 1)
    w = c * np.expm1(c) / (math.e - 1.0)
    return np.where(i < start, 1.0, np.where(i >= end, 0.0, w))


def resample(previous: PreviousChunk, stamp: float, horizon: int):
    """A_prev at the new chunk's action times stamp + (k + 1) / rate, k < horizon -> (values [horizon, N], valid
    [horizon] bool). Linear interpolation between neighbouring actions; before A_prev's first action, its first
    action (as chunking.Chunk.at); past its last action, invalid (value 0)."""
    actions = np.asarray(previous.actions, dtype=np.float64)
    if actions.ndim != 2 or len(actions) == 0:
        raise ValueError(f"previous chunk actions must be [H, joints] with H >= 1, got {list(actions.shape)}")
    if not np.all(np.isfinite(actions)):
        raise ValueError("previous chunk actions have non-finite values")
    rate = float(previous.rate_hz)
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"previous chunk rate_hz must be positive, got {previous.rate_hz}")
    if not (math.isfinite(float(stamp)) and math.isfinite(float(previous.stamp))):
        raise ValueError(f"stamps must be finite, got new {stamp} and previous {previous.stamp}")
    pos = (float(stamp) - float(previous.stamp)) * rate + np.arange(horizon, dtype=np.float64)
    pos = np.where(np.abs(pos - np.round(pos)) < 1e-9, np.round(pos), pos)  # on the grid: no 1e-12 interpolation
    last = len(actions) - 1
    valid = pos <= last
    pos = np.clip(pos, 0.0, last)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, last)
    a = (pos - lo)[:, None]
    values = (1.0 - a) * actions[lo] + a * actions[hi]
    return np.where(valid[:, None], values, 0.0), valid


def to_model_space(actions: np.ndarray, stats: Optional[NormStats], use_quantiles: bool) -> np.ndarray:
    """The exact inverse of transforms.unnormalize (what postprocess applies to the model's output), for any width:
    normalize over the dims the stats cover; beyond them z-score divides by (1 + 1e-6) and quantile is the identity
    (unnormalize pads that way). No stats: the identity."""
    actions = np.asarray(actions, dtype=np.float64)
    if stats is None:
        return actions
    lo = stats.q01 if use_quantiles else stats.mean
    covered = min(0 if lo is None else len(lo), actions.shape[-1])
    head = normalize(actions[..., :covered], stats, use_quantiles, "previous chunk")
    tail = actions[..., covered:] if use_quantiles else actions[..., covered:] / (1.0 + NORM_EPS)
    return np.concatenate([head, tail], axis=-1)


def guidance_target(previous: PreviousChunk, *, stamp: float, state: np.ndarray, horizon: int, action_dim: int,
                    delay_steps: int, execution_horizon: int, stats: Optional[NormStats] = None,
                    use_quantiles: bool = False, delta_mask: Optional[Sequence[bool]] = None) -> GuidanceTarget:
    """Y and W for a new observation at ``stamp`` with (raw) ``state``: the inverse of Policy.postprocess at that
    state (deltas where ``delta_mask``, then the action ``stats``: quantile for pi0.5, z-score for pi0; none: the
    identity)."""
    values, valid = resample(previous, stamp, horizon)
    n = values.shape[1]
    if n > action_dim:
        raise ValueError(f"previous chunk has {n} joints, more than the model's {action_dim} action dims")
    if delta_mask is not None:
        values = delta_actions(values, state, delta_mask)
    target = np.where(valid[:, None], to_model_space(values, stats, use_quantiles), 0.0)
    per_action = prefix_weights(horizon, delay_steps, execution_horizon) * valid
    weights = pad_to_dim(np.repeat(per_action[:, None], n, axis=1), action_dim)
    frozen = (np.arange(horizon) < delay_steps) & (per_action == 1.0)  # the first d (at most H - s) with a target
    return GuidanceTarget(target=pad_to_dim(target, action_dim), weights=weights, frozen=frozen)


def guidance_arguments(current, stamp: float, latencies_s: Sequence[float], rate_hz: float,
                       max_guidance: float) -> dict:
    """Policy.infer's real-time chunking arguments for an observation at ``stamp`` while ``current`` (a chunking.Chunk,
    or None) is executed: none when nothing is or it ends before ``stamp``. d = the actions that will have been
    executed from it before the new chunk can take over (the worst of the recent observation-to-chunk
    ``latencies_s``, in actions, rounded up; 0 where they are negative: inputs stamped ahead of the node's clock, by
    less than max_observation_age_s); s = the actions between the two observations (where the target's overlap
    ends)."""
    if current is None or current.end <= stamp:
        return {}
    delay = max(math.ceil(max(latencies_s) * rate_hz), 0) if len(latencies_s) else 0
    shift = max(int(round((stamp - current.stamp) * rate_hz)), 0)
    return {"previous": PreviousChunk(current.actions, current.stamp, rate_hz), "delay_steps": delay,
            "execution_horizon": shift, "max_guidance": max_guidance}
