"""CUDA graphs of the engine's stages: the whole num_steps denoise (plain or guided) and the encoding (vision, prefix
cache), each captured once per shape and replayed.

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

from .pi0 import ImageTokens, PI0Model, PrefixCache
from .rtc import ConstantPrefix, Guidance, guided_loop


def capture(fn, warmup: int = 2):
    """(graph, fn's output): ``fn`` run ``warmup`` times on a side stream (lazy initialisations, allocator), then
    captured. Its inputs must be static buffers the caller copies new values into before each ``graph.replay()``."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


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
        graph, out = capture(lambda: model.denoise(static, static_noise, num_steps), self.warmup)
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
            graph, out = capture(lambda: guided_loop(model, prefix, static_noise, static, num_steps), self.warmup)
        return _CapturedGuided(graph=graph, prefix=prefix, noise=static_noise, guidance=static, out=out)

    def clear(self) -> None:
        self._graphs.clear()


class CudaGraphEncoder:
    """``embed_images`` and ``build_cache`` of the model, replayed from CUDA graphs: vision one graph per set of
    present cameras, the prefix cache one per (cameras, valid prompt tokens). At batch 1 both stages are hundreds of
    small kernels (SigLIP's and Gemma's layers), launch-bound like the eager denoise.

    The host work that decides shapes stays outside the graphs: which cameras are present, the input checks, the
    compaction of the prompt to its valid tokens (then every prefix token is valid and PI0Model.prefix_cache runs
    with fixed shapes). A batch whose rows differ in cameras or prompt length runs eagerly. The returned tokens and
    cache live in the graphs' static buffers: valid until the next call with the same shapes (the denoisers copy
    the cache into their own)."""

    def __init__(self, model: PI0Model, warmup: int = 2):
        if model.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device, it is on {model.device}")
        self.model = model
        self.warmup = warmup
        self._graphs: Dict[Tuple, Tuple] = {}  # key -> (graph, static inputs, output)

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    def _replay(self, key, make, inputs):
        """Copy ``inputs`` into the static inputs of the graph ``key`` (captured from ``make(static inputs)`` the
        first time) and replay it."""
        entry = self._graphs.get(key)
        if entry is None:
            static = tuple(x.clone() for x in inputs)
            graph, out = capture(lambda: make(*static), self.warmup)
            entry = self._graphs[key] = (graph, static, out)
        graph, static, out = entry
        for dst, src in zip(static, inputs):
            dst.copy_(src)
        graph.replay()
        return out

    def embed_images(self, images: torch.Tensor, image_masks: torch.Tensor) -> ImageTokens:
        model = self.model
        present = tuple(i for i, p in enumerate(image_masks.any(dim=0).tolist()) if p)
        if not present or not bool(image_masks[:, list(present)].all()):
            return model.embed_images(images, image_masks)  # no camera, or rows that differ: eager
        B, s = images.shape[0], model.config.vision.image_size
        T, W = model.config.num_image_tokens, model.config.vlm.width

        def vision(x):
            return model.projector(model.vision(x.reshape(B * len(present), 3, s, s))).view(B, len(present), T, W)

        with torch.inference_mode():
            features = self._replay(("vision", tuple(images.shape), present, images.dtype), vision,
                                    (images[:, list(present)],))
        return ImageTokens(features=features, present=present, mask=image_masks[:, list(present)])

    def build_cache(self, image_tokens: ImageTokens, tokens: torch.Tensor, token_mask: torch.Tensor,
                    state: torch.Tensor) -> PrefixCache:
        model = self.model
        B = image_tokens.features.shape[0]
        model._check_prefix_inputs(B, tokens, token_mask, state)
        counts = token_mask.sum(dim=1).tolist()
        if len(set(counts)) != 1 or not bool(image_tokens.mask.all()):
            return model.build_cache(image_tokens, tokens, token_mask, state)  # rows that differ: eager
        W = model.config.vlm.width

        def prefix(features, valid_tokens, state):
            x = torch.cat([features.reshape(B, -1, W).to(model.dtype),
                           model.embed_language(valid_tokens).to(model.dtype)], dim=1)
            return model.prefix_cache(x, state)

        with torch.inference_mode():
            valid_tokens = tokens[token_mask].view(B, counts[0])
            return self._replay(("prefix", tuple(image_tokens.features.shape), image_tokens.present, counts[0],
                                 tuple(state.shape)), prefix, (image_tokens.features, valid_tokens, state))

    def clear(self) -> None:
        self._graphs.clear()
