"""Between the model's actions and the robot's: the action norm stats, the delta mask, the robot adapter and the joint
limits. Model-space actions [H, action_dim] become the robot's [H, action_dims] (postprocess), and a chunk being
executed becomes real-time chunking's model-space target (guidance), in openpi's order (policy.py says it)."""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ..model.config import ModelConfig
from .adapters import RobotAdapter
from .rtc_target import GuidanceTarget, PreviousChunk, guidance_target
from .transforms import NormStats, absolute_actions, normalize, pad_to_dim, require_stats, unnormalize


class ActionSpace:
    def __init__(self, config: ModelConfig, *, norm_stats: Optional[Dict[str, NormStats]],
                 adapter: Optional[RobotAdapter], action_dims: Optional[int] = None,
                 delta_mask: Optional[Sequence[bool]] = None, lower_limits: Optional[Sequence[float]] = None,
                 upper_limits: Optional[Sequence[float]] = None):
        """With an adapter, action_dims defaults to the robot's and delta_mask None means the adapter's openpi config
        default ([] or all False: none). Every inconsistency is a ValueError naming it."""
        self.config, self.adapter, self.norm_stats = config, adapter, norm_stats
        self.use_quantiles = config.is_pi05
        if adapter is not None:
            if action_dims and int(action_dims) != adapter.action_dims:
                raise ValueError(f"{action_dims} action dims (action.joints) but robot adapter '{adapter.name}' "
                                 f"outputs {adapter.action_dims}")
            action_dims = adapter.action_dims
            if adapter.state_dim > config.action_dim:
                raise ValueError(f"robot adapter '{adapter.name}' has {adapter.state_dim} state dims, more than the "
                                 f"model's {config.action_dim}")
            if delta_mask is None:
                delta_mask = adapter.defaults(config.variant).delta_mask
        self.action_dims = int(action_dims or config.action_dim)
        if not 0 < self.action_dims <= config.action_dim:
            raise ValueError(f"action dims {self.action_dims} must be in 1..{config.action_dim}")
        if norm_stats is not None:
            for key in ("state", "actions"):
                if key not in norm_stats:
                    raise ValueError(f"norm stats have no '{key}' entry")
                require_stats(norm_stats[key], self.use_quantiles, f"norm stats [{key}]")
        if delta_mask is not None and len(delta_mask) and np.asarray(delta_mask).dtype != bool:
            raise ValueError(f"delta mask must be a list of bools, got {np.asarray(delta_mask).dtype} "
                             f"{list(delta_mask)}")
        self.delta_mask = None if delta_mask is None or not any(delta_mask) else list(delta_mask)
        if adapter is not None:
            self._check_adapter_sizes()
        else:
            self._check_sizes()
        self.lower = self._limits(lower_limits, -np.inf, "lower")
        self.upper = self._limits(upper_limits, np.inf, "upper")
        if np.any(self.lower > self.upper):
            raise ValueError("action lower limits exceed upper limits")

    def _check_adapter_sizes(self) -> None:
        a, d = self.adapter, self.config.action_dim
        if self.delta_mask is not None and len(self.delta_mask) > d:
            raise ValueError(f"delta mask has {len(self.delta_mask)} entries, more than the model's {d} action dims")
        if self.norm_stats is not None:
            for key, need in (("state", a.state_dim), ("actions", 1)):
                lo = self.norm_stats[key].q01 if self.use_quantiles else self.norm_stats[key].mean
                if not need <= len(lo) <= d:
                    raise ValueError(f"norm stats [{key}] have {len(lo)} values: robot adapter '{a.name}' needs "
                                     f"{need} to {d}")

    def _check_sizes(self) -> None:
        """Without an adapter the actions are cut to action_dims before the delta mask and after unnormalizing."""
        n, d = self.action_dims, self.config.action_dim
        if self.delta_mask is not None and len(self.delta_mask) > n:
            raise ValueError(f"delta mask has {len(self.delta_mask)} entries, more than the {n} action joints")
        if self.norm_stats is not None:  # (fewer than n: the joints beyond them pass through, as openpi's)
            lo = self.norm_stats["actions"].q01 if self.use_quantiles else self.norm_stats["actions"].mean
            if len(lo) > d:  # else every unnormalize, after the model ran, refuses them
                raise ValueError(f"norm stats [actions] have {len(lo)} values, more than the model's {d} action dims")

    def _limits(self, values, default, name) -> np.ndarray:
        if values is None or len(values) == 0:
            return np.full(self.action_dims, default)
        if len(values) != self.action_dims:
            raise ValueError(f"{len(values)} {name} limits for {self.action_dims} action joints")
        limits = np.asarray(values, dtype=np.float64)
        if limits.shape != (self.action_dims,):
            raise ValueError(f"{name} limits must be a list of {self.action_dims} values, got shape "
                             f"{list(limits.shape)}")
        nan = np.flatnonzero(np.isnan(limits)).tolist()
        if nan:  # np.clip would make every action of that joint NaN
            raise ValueError(f"{name} limits must be numbers or ±inf: NaN at {nan}")
        return limits

    def state_to_model(self, state: np.ndarray) -> np.ndarray:
        """The raw state in the model's space (the adapter's input side), normalized: not yet padded."""
        model_state = self.adapter.state_in(state) if self.adapter is not None else state
        return normalize(model_state, self.norm_stats["state"], self.use_quantiles) if self.norm_stats else model_state

    def postprocess(self, raw: np.ndarray, state: np.ndarray,
                    model_state: Optional[np.ndarray] = None) -> Tuple[np.ndarray, int]:
        """Model-space actions [H, action_dim] -> (the robot's actions [H, action_dims] clamped to the limits, how
        many values were clamped). state: the raw state; model_state (robot adapters): the normalized padded state
        that entered the model, computed from ``state`` when not given."""
        if self.adapter is not None:
            actions = self._adapted(raw, state, model_state)
        else:
            actions = unnormalize(raw, self.norm_stats["actions"], self.use_quantiles) if self.norm_stats else raw
            actions = np.asarray(actions, dtype=np.float64)[:, : self.action_dims]
            if self.delta_mask is not None:
                actions = absolute_actions(actions, state, self.delta_mask)
        clipped = np.clip(actions, self.lower, self.upper)
        return clipped, int(np.count_nonzero(clipped != actions))

    def _adapted(self, raw, state, model_state) -> np.ndarray:
        """openpi's output transforms: Unnormalize (actions and the state), AbsoluteActions, the robot's outputs."""
        stats = self.norm_stats
        if model_state is None:
            model_state = pad_to_dim(self.state_to_model(state), self.config.action_dim)
        actions = unnormalize(raw, stats["actions"], self.use_quantiles) if stats else raw
        actions = np.asarray(actions, dtype=np.float64)
        if self.delta_mask is not None:
            base = unnormalize(model_state, stats["state"], self.use_quantiles, "state") if stats else model_state
            actions = absolute_actions(actions, base, self.delta_mask)
        return self.adapter.actions_out(actions)

    def guidance(self, previous: PreviousChunk, stamp: float, state: np.ndarray, delay_steps: int,
                 execution_horizon: int) -> GuidanceTarget:
        """Real-time chunking's target in model space for an observation at ``stamp`` with raw ``state``
        (rtc_target.py): the previous chunk at the new action times, deltas from ``state`` where delta_mask,
        normalized like the actions, padded to action_dim with weight 0 beyond the robot's dims."""
        prev = np.asarray(previous.actions)
        if prev.ndim != 2 or prev.shape[1] != self.action_dims:
            raise ValueError(f"previous chunk actions must be [H, {self.action_dims}] (the policy's action dims), got "
                             f"{list(prev.shape)}")
        if self.adapter is not None:  # model space: the actions before the adapter's output, the state after its input
            previous = dataclasses.replace(previous, actions=self.adapter.actions_to_model(prev))
            state = self.adapter.state_in(state)
        return guidance_target(
            previous, stamp=stamp, state=state, horizon=self.config.action_horizon, action_dim=self.config.action_dim,
            delay_steps=delay_steps, execution_horizon=execution_horizon, delta_mask=self.delta_mask,
            stats=self.norm_stats["actions"] if self.norm_stats else None, use_quantiles=self.use_quantiles)
