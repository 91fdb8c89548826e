"""Real-time chunking (RTC): the guided denoise of Black, Galliker, Levine, arXiv 2506.07339 (Algorithm 1).

While the robot still executes the previous chunk, the next one is inpainted: each Euler step computes the velocity
v, the predicted final actions A, and a guidance term that pulls x_t towards the part of the previous chunk that will
still be executed (the target Y, weighted per action by W: the paper's soft prefix mask, see policy/rtc_target.py).

Signs in openpi's convention. openpi runs time t from 1 (noise) to 0 (actions): x_t = t*noise + (1-t)*A, the model
predicts v = noise - A, and the loop is x <- x + dt*v with dt = -1/num_steps. The paper runs tau = 1 - t from 0 to 1
with v_tau = A - noise = -v and x <- x + (1/n) * (v_tau + w * J^T W (Y - A)), where A = x + (1 - tau) v_tau and
J = dA/dx. In openpi's terms A = x_t - t*v, and the same update is

    v_guided = v - w(t) * J^T [W * (Y - A)]          x <- x + dt * v_guided  (dt < 0)

so x moves by -|dt| * w * grad_x L with L = 0.5 * sum W (Y - A)^2: gradient descent on the weighted error of the
predicted actions (test_rtc.py checks the direction against autograd of L and that one step lowers L). The time
weight is the paper's min(beta, (1 - tau) / (tau * r^2)) with r^2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2); in t it is
min(beta, (t^2 + (1 - t)^2) / (t * (1 - t))), which is >= 2 everywhere and infinite at t = 1 (the first step),
where the clip gives beta (as the authors' code does).

Engine path: the prefix cache is a constant; only x_t carries a gradient (the parameters have requires_grad off).
The plain denoise writes the action tokens' K/V into the cache tail in place, which autograd cannot differentiate
(every layer's write bumps the version of the one buffer the earlier layers' attention saved), and a cache built by
the engine holds inference tensors, which cannot be saved for backward. So the guided path clones the cached prefix
K/V (and the rotary tables) once per call outside inference mode and concatenates each layer's action K/V to it:
the same SDPA inputs, bit for bit, so zero weights give exactly the plain denoise. With the fused kernels on
(PI0Model.use_fused), the forward pass runs them (fused.prefix_attention) and autograd goes back through their
closed-form backwards (fused_grad.py). Eager by default; on CUDA, cuda_graph.CudaGraphGuidedDenoiser captures the
whole guided loop, forward and backward passes, as one graph.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Tuple

import torch

from . import fused, fused_grad  # noqa: F401 - fused_grad registers the fused ops' backwards
from .gemma import maskless_attention
from .pi0 import PI0Model, PrefixCache, StepConditioning, euler_schedule, gpu_current

DEFAULT_MAX_GUIDANCE = 5.0  # the paper's beta

Velocity = Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass
class Guidance:
    """What the new chunk should agree with, in model space (normalized, padded to action_dim)."""

    target: torch.Tensor  # [B, H, action_dim]: Y, the previous chunk's actions at the new chunk's action times
    weights: torch.Tensor  # broadcastable to [B, H, action_dim], >= 0: W (soft prefix mask x the dims in use)
    max_guidance: float = DEFAULT_MAX_GUIDANCE  # beta: the clip of the time weight

    def __post_init__(self):
        """beta is checked here, so that every path (eager, CUDA graph: its step weights come from it) sees a valid
        one: an infinite beta is an infinite first-step weight, a NaN one NaN weights (every action NaN)."""
        if not (math.isfinite(float(self.max_guidance)) and float(self.max_guidance) >= 0.0):
            raise ValueError(f"max_guidance (beta) must be a finite number >= 0, got {self.max_guidance}")


def guidance_weight(t: float, max_guidance: float = DEFAULT_MAX_GUIDANCE) -> float:
    """The paper's time weight min(beta, (1 - tau) / (tau r_tau^2)) at openpi time t = 1 - tau (infinite at t = 1
    and t = 0, so clipped to beta there)."""
    t = float(t)
    if t <= 0.0 or t >= 1.0:
        return float(max_guidance)
    return min(float(max_guidance), (t * t + (1.0 - t) ** 2) / (t * (1.0 - t)))


def guided_velocity(velocity: Velocity, x: torch.Tensor, t: float, guidance: Guidance,
                    weight: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step's (guided velocity, plain velocity, predicted actions A = x - t*v) at x [B, H, D], time t.

    ``velocity(x)`` must be differentiable in x. The guidance is the vector-Jacobian product of W * (Y - A) with
    dA/dx, computed by one backward pass; nothing else gets a gradient. ``weight``: the step's time weight as a
    0-d float32 tensor (a CUDA graph's input, so that one graph serves every beta); None: guidance_weight(t, beta)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = velocity(x)
        predicted = x - t * v
        error = (guidance.weights * (guidance.target - predicted)).detach()
        (correction,) = torch.autograd.grad(predicted, x, grad_outputs=error)
    v = v.detach()
    if weight is None:
        weight = guidance_weight(t, guidance.max_guidance)
    return v - weight * correction, v, predicted.detach()


def step_weights(model: PI0Model, num_steps: int, max_guidance: float) -> torch.Tensor:
    """The time weight of each of the ``num_steps`` guided steps, float32 [num_steps] on the CPU (the graphs'
    input: CudaGraphGuidedDenoiser copies it in)."""
    return torch.tensor([guidance_weight(sc.time, max_guidance) for sc in model.step_conditioning(num_steps)],
                        dtype=torch.float32)


@dataclasses.dataclass
class ConstantPrefix:
    """The cached prefix (and pi0's state token) as ordinary tensors: K/V [depth, B, KV, num_cached, D] and the
    action tokens' rotary tables, cloned once per guided call outside inference mode."""

    keys: torch.Tensor
    values: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor

    @classmethod
    def from_cache(cls, cache: PrefixCache) -> "ConstantPrefix":
        n = cache.num_cached
        with torch.inference_mode(False):
            return cls(keys=cache.keys[..., :n, :].clone(), values=cache.values[..., :n, :].clone(),
                       cos=cache.cos.clone(), sin=cache.sin.clone())


def differentiable_velocity(model: PI0Model, prefix: ConstantPrefix, x_t: torch.Tensor,
                            sc: StepConditioning) -> torch.Tensor:
    """PI0Model.velocity without the in-place cache write: each layer's action K/V are concatenated to the constant
    prefix, so autograd can go back through every layer to x_t. Same SDPA inputs as the plain step. The fused
    kernels when the model runs them (PI0Model.fused)."""
    if model.fused:
        return model.fused_expert_velocity(x_t, sc, prefix.cos, prefix.sin,
                                           fused.prefix_attention(prefix.keys, prefix.values))

    def attention(li: int):
        def attend(q, k, v):
            keys = torch.cat([prefix.keys[li], k.transpose(1, 2)], dim=2)
            values = torch.cat([prefix.values[li], v.transpose(1, 2)], dim=2)
            return maskless_attention(q, keys, values)
        return attend

    return model.expert_velocity(x_t, sc, prefix.cos, prefix.sin, attention)


def guided_denoise(model: PI0Model, cache: PrefixCache, noise: torch.Tensor, guidance: Guidance,
                   num_steps: int = 10) -> torch.Tensor:
    """RTC's guided Euler loop on the maskless fast path -> actions [B, H, action_dim] in model space (an ordinary
    float32 tensor without a graph). Same schedule and step conditioning as PI0Model.denoise; callable inside or
    outside inference mode."""
    c = model.config
    expected = (cache.batch_size, c.action_horizon, c.action_dim)
    if tuple(noise.shape) != expected:
        raise ValueError(f"noise must be {list(expected)}, got {list(noise.shape)}")
    if tuple(guidance.target.shape) != expected:
        raise ValueError(f"guidance target must be {list(expected)} (model-space actions), got "
                         f"{list(guidance.target.shape)}")
    try:
        torch.broadcast_shapes(tuple(guidance.weights.shape), expected)
    except RuntimeError:
        raise ValueError(f"guidance weights {list(guidance.weights.shape)} do not broadcast to {list(expected)}") \
            from None
    with torch.inference_mode(False), gpu_current(model.device):  # the model's GPU: its fused kernels launch there
        prefix = ConstantPrefix.from_cache(cache)
        guidance = Guidance(target=guidance.target.to(device=noise.device, dtype=torch.float32).clone(),
                            weights=guidance.weights.to(device=noise.device, dtype=torch.float32).clone(),
                            max_guidance=float(guidance.max_guidance))
        return guided_loop(model, prefix, noise.to(torch.float32).clone(), guidance, num_steps)


def guided_loop(model: PI0Model, prefix: ConstantPrefix, noise: torch.Tensor, guidance: Guidance,
                num_steps: int, weights_by_step: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The guided Euler steps on inputs that are already ordinary tensors (what guided_denoise prepares, or a CUDA
    graph's static buffers, ``weights_by_step`` [num_steps] among them: step_weights): no copies, no checks; call
    outside inference mode."""
    steps = model.step_conditioning(num_steps)
    _, dt = euler_schedule(num_steps)
    x = noise
    for i, sc in enumerate(steps):
        v, _, _ = guided_step(model, prefix, x, sc, guidance, None if weights_by_step is None else weights_by_step[i])
        x = x + dt * v
    return x


def guided_step(model: PI0Model, prefix: ConstantPrefix, x: torch.Tensor, sc: StepConditioning,
                guidance: Guidance, weight: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One guided step's guided_velocity at x: the expert forward over the constant prefix, and backward to x."""
    return guided_velocity(lambda x_t: differentiable_velocity(model, prefix, x_t, sc), x, sc.time, guidance, weight)
