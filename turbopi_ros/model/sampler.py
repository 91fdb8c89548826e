"""The sampler: openpi's Euler schedule and time embedding, the per-step time conditioning (computed once per
(num_steps, device, dtype) and cached), and the denoise loop with its optional torch.compile of one step.

It is apart from the nn.Module (pi0.py), which holds the weights and computes one velocity; the sampler only calls the
model's ``velocity`` and reads the weights of its time layers. Numerics (numerics.md): t starts at 1.0 and
accumulates dt = -1/num_steps in float32, as openpi's loop does; the time embedding is computed in float64.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .gemma import Modulation


def euler_schedule(num_steps: int) -> Tuple[List[float], float]:
    """The times openpi's loop visits and its dt, in float32 as openpi accumulates them (1.0, 0.9, 0.79999995, ...)."""
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    dt = np.float32(-1.0 / num_steps)
    t, times = np.float32(1.0), []
    while t >= -dt / np.float32(2):
        times.append(float(t))
        t = np.float32(t + dt)
    return times, float(dt)


def time_embedding(times: torch.Tensor, dim: int) -> torch.Tensor:
    """openpi's sinusoidal embedding of float32 times [n] -> float32 [n, dim], computed in float64."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=times.device)
    period = 4e-3 * (4.0 / 4e-3) ** fraction
    angle = (1.0 / period * 2 * math.pi)[None, :] * times[:, None]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1).to(times.dtype)


@dataclasses.dataclass
class StepConditioning:
    """Everything of one Euler step that depends on t only, computed once per (num_steps, device, dtype)."""

    time: float
    action_time_bias: Optional[torch.Tensor] = None  # pi0: the time half of action_time_mlp_in, plus its bias
    action_weight: Optional[torch.Tensor] = None  # pi0: the action half of action_time_mlp_in (contiguous copy)
    layer_mods: Optional[List[Tuple[Modulation, Modulation]]] = None  # pi0.5: adaRMS per layer (input, post-attn)
    final_mod: Optional[Modulation] = None  # pi0.5: adaRMS of the expert's final norm


def compute_step_conditioning(model, num_steps: int) -> List[StepConditioning]:
    """The conditioning of every step of ``model`` (a PI0Model): pi0's time half of action_time_mlp_in, pi0.5's time
    MLP and every adaRMS scale/shift/gate."""
    times, _ = euler_schedule(num_steps)
    we = model.config.expert.width
    emb = time_embedding(torch.tensor(times, dtype=torch.float32), we).to(model.device)
    steps = []
    w_action = None if model.config.is_pi05 else model.action_time_mlp_in.weight[:, :we].contiguous()
    for i, t in enumerate(times):
        sc = StepConditioning(time=t)
        if model.config.is_pi05:
            cond = F.silu(model.time_mlp_out(F.silu(model.time_mlp_in(emb[i:i + 1]))))
            sc.layer_mods = [(layer.input_layernorm.modulation(cond),
                              layer.post_attention_layernorm.modulation(cond)) for layer in model.expert.layers]
            sc.final_mod = model.expert.norm.modulation(cond)
        else:
            w_time = model.action_time_mlp_in.weight[:, we:]
            sc.action_time_bias = F.linear(emb[i:i + 1], w_time, model.action_time_mlp_in.bias)[:, None, :]
            sc.action_weight = w_action
        steps.append(sc)
    return steps


class Sampler:
    """The Euler loop over a model's velocity, its per-step conditioning cache and its compile switch."""

    def __init__(self):
        self._steps: Dict[tuple, List[StepConditioning]] = {}
        self.compiled_velocity = None  # torch.compile of model.velocity (compile()), or None: eager

    def step_conditioning(self, model, num_steps: int) -> List[StepConditioning]:
        key = (int(num_steps), model.device, model.dtype)
        if key not in self._steps:
            with torch.inference_mode(False), torch.no_grad():
                self._steps[key] = compute_step_conditioning(model, num_steps)
        return self._steps[key]

    def clear(self) -> None:
        self._steps.clear()

    def denoise(self, model, cache, noise: torch.Tensor, num_steps: int) -> torch.Tensor:
        """x = noise; x += dt * v(x, t) at every time of the schedule. The conditioning and the velocity are looked up
        on the model (model.step_conditioning, model.velocity) at each call: what the benchmarks patch there counts."""
        steps = model.step_conditioning(num_steps)
        _, dt = euler_schedule(num_steps)
        velocity = self.compiled_velocity or model.velocity
        x = noise.to(torch.float32)
        if self.compiled_velocity is not None and x.is_inference() != torch.is_inference_mode_enabled():
            # every later x is made in the current mode; a first x of the other kind (noise drawn outside
            # inference mode, denoised inside it) would fail a guard of the compiled step: a second trace
            x = x.clone()
        for sc in steps:
            x = x + dt * velocity(cache, x, sc)
        return x

    def compile(self, model, mode: Optional[str] = None, cache_dir: Optional[str] = None) -> None:
        """torch.compile one step. ``cache_dir`` (model.cache_dir): inductor's cache directory, so that a later start
        loads the compiled kernels instead of compiling them (TORCHINDUCTOR_CACHE_DIR: process-wide, set here)."""
        if cache_dir:
            path = os.path.abspath(os.path.expanduser(str(cache_dir)))
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as e:
                raise ValueError(f"model cache_dir {cache_dir!r}: cannot create it ({e})") from None
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
        self.compiled_velocity = torch.compile(model.velocity, mode=mode, dynamic=False)
