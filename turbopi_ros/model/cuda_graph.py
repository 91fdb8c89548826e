"""The whole num_steps denoise captured as one CUDA graph per prefix length.

The denoise is hundreds of small kernels (depth x steps layers) whose launch overhead dominates at batch 1; a graph
replays them with one launch. Graphs need fixed addresses, so each captured graph owns static copies of the cache,
rotary tables and noise; a call copies the observation's cache into them (one device copy) and replays. Graphs are
keyed by (cache shape, cached length, num_steps): a new prompt length captures once, then replays.
Only the time-independent work is outside the graph: the per-step conditioning is precomputed before capture.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import torch

from .pi0 import PI0Model, PrefixCache
from .rtc import ConstantPrefix, Guidance, guided_loop


@dataclasses.dataclass
class _Captured:
    graph: "torch.cuda.CUDAGraph"
    cache: PrefixCache
    noise: torch.Tensor
    out: torch.Tensor


class CudaGraphDenoiser:
    """``denoiser(cache, noise, num_steps)`` == ``model.denoise(cache, noise, num_steps)``, replayed from a graph."""

    def __init__(self, model: PI0Model, warmup: int = 2):
        if model.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device, it is on {model.device}")
        self.model = model
        self.warmup = warmup
        self._graphs: Dict[Tuple, _Captured] = {}

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    def __call__(self, cache: PrefixCache, noise: torch.Tensor, num_steps: int = 10) -> torch.Tensor:
        key = (tuple(cache.keys.shape), cache.num_cached, int(num_steps), tuple(noise.shape))
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = self._capture(cache, noise, num_steps)
        for dst, src in ((captured.cache.keys, cache.keys), (captured.cache.values, cache.values),
                         (captured.cache.cos, cache.cos), (captured.cache.sin, cache.sin), (captured.noise, noise)):
            dst.copy_(src)
        captured.graph.replay()
        return captured.out.clone()

    def _capture(self, cache: PrefixCache, noise: torch.Tensor, num_steps: int) -> _Captured:
        model = self.model
        static = dataclasses.replace(cache, keys=cache.keys.clone(), values=cache.values.clone(),
                                     cos=cache.cos.clone(), sin=cache.sin.clone())
        static_noise = noise.to(torch.float32).clone()
        model.step_conditioning(num_steps)  # computed once, outside the graph
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                model.denoise(static, static_noise, num_steps)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = model.denoise(static, static_noise, num_steps)
        return _Captured(graph=graph, cache=static, noise=static_noise, out=out)

    def clear(self) -> None:
        self._graphs.clear()


@dataclasses.dataclass
class _CapturedGuided:
    graph: "torch.cuda.CUDAGraph"
    prefix: ConstantPrefix
    noise: torch.Tensor
    guidance: Guidance
    out: torch.Tensor


class CudaGraphGuidedDenoiser:
    """``denoiser(cache, noise, guidance, num_steps)`` == ``rtc.guided_denoise(model, cache, noise, guidance,
    num_steps)``, replayed from one CUDA graph that holds every step's forward and backward pass.

    The eager guided denoise is a few thousand small kernels per call (launch-bound at batch 1: 3.3x the eager plain
    denoise on an H100); captured, it replays with one launch. Static buffers (ordinary tensors: autograd saves them)
    hold the cached prefix, rotary tables, noise, target and weights; a call copies into them and replays. Graphs are
    keyed by (cached length, cache shape, num_steps, beta): beta is a Python number inside the step's arithmetic."""

    def __init__(self, model: PI0Model, warmup: int = 2):
        if model.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device, it is on {model.device}")
        self.model = model
        self.warmup = warmup
        self._graphs: Dict[Tuple, _CapturedGuided] = {}

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    def __call__(self, cache: PrefixCache, noise: torch.Tensor, guidance: Guidance,
                 num_steps: int = 10) -> torch.Tensor:
        n = cache.num_cached
        key = (tuple(cache.keys.shape), n, int(num_steps), float(guidance.max_guidance), tuple(noise.shape))
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = self._capture(cache, noise, guidance, num_steps)
        weights = guidance.weights.to(device=noise.device, dtype=torch.float32).expand_as(captured.guidance.weights)
        for dst, src in ((captured.prefix.keys, cache.keys[..., :n, :]), (captured.prefix.values, cache.values[..., :n, :]),
                         (captured.prefix.cos, cache.cos), (captured.prefix.sin, cache.sin), (captured.noise, noise),
                         (captured.guidance.target, guidance.target), (captured.guidance.weights, weights)):
            dst.copy_(src)
        captured.graph.replay()
        return captured.out.clone()

    def _capture(self, cache: PrefixCache, noise: torch.Tensor, guidance: Guidance, num_steps: int
                 ) -> _CapturedGuided:
        model = self.model
        with torch.inference_mode(False):
            prefix = ConstantPrefix.from_cache(cache)
            shape = tuple(noise.shape)
            static = Guidance(target=guidance.target.to(noise.device, torch.float32).clone(),
                              weights=guidance.weights.to(noise.device, torch.float32).expand(shape).clone(),
                              max_guidance=float(guidance.max_guidance))
            static_noise = noise.to(torch.float32).clone()
            model.step_conditioning(num_steps)  # computed once, outside the graph
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    guided_loop(model, prefix, static_noise, static, num_steps)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = guided_loop(model, prefix, static_noise, static, num_steps)
        return _CapturedGuided(graph=graph, prefix=prefix, noise=static_noise, guidance=static, out=out)

    def clear(self) -> None:
        self._graphs.clear()
