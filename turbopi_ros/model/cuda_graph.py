"""CUDA graphs of the engine's stages: the whole num_steps denoise (plain or guided) and the encoding (vision, prefix
cache), each captured once per shape and replayed.

The denoise is hundreds of small kernels (depth x steps layers) whose launch overhead dominates at batch 1; a graph
replays them with one launch. Graphs need fixed addresses, so they read and write static buffers; a call copies the
observation into them (one device copy) and replays. Maskless attention over exactly the valid keys means one graph
per cached length: pi0.5's prompt carries the discretized state, so its length moves while the robot moves.

Never capture while the robot moves: ``warm_up`` captures every length a configuration can produce before the node
reports ready (policy/prompt_lengths.py enumerates them from the tokenizer), longest first. Every graph of a model
shares one memory pool (GraphPool) and one set of static buffers sized for the longest length: a graph for length n
works on the leading tokens of the same K/V buffers, so N lengths cost N graphs' launch lists, not N caches. The
alternative, one graph serving every length, would need a mask (or padding keys) in the attention: no longer the exact
maskless SDPA over the valid keys, and the padded keys' work done on every call.

The bookkeeping (which graphs exist, when one must be captured, capture count and time, captures after ready,
memory) is device-independent (GraphBook, GraphPool): with ``static_replay_on_cpu`` the same encoder and denoiser run
on CPU, a "capture" keeping the function and its outputs and a "replay" re-running it into those outputs, so tests
check the length enumeration and the static-buffer protocol without CUDA. Only the time-independent work is outside
the graphs: the per-step conditioning is precomputed before capture.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

import torch

from .config import ModelConfig
from .inputs import check_image_inputs, check_prefix_inputs
from .pi0 import ImageTokens, PI0Model, PrefixCache
from .rtc import ConstantPrefix, Guidance, guided_loop, step_weights


def capture(fn, warmup: int = 2, pool=None, device=None):
    """(graph, fn's output): ``fn`` run ``warmup`` times on a side stream (lazy initialisations, allocator), then
    captured on that stream (into the memory pool ``pool`` when given: torch.cuda.graph_pool_handle()). Its inputs
    must be static buffers the caller copies new values into before each ``graph.replay()``. ``device``: the GPU
    fn's tensors are on (model.device cuda:N), current meanwhile, so that the streams are on it: torch.cuda.graph's
    own stream is on the GPU that was current when the process made its first graph, and a capture there would hold
    none of the kernels of another GPU (an empty graph, its outputs never updated)."""
    with torch.cuda.device(device):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=side):
            out = fn()
    return graph, out


@dataclasses.dataclass
class CaptureStats:
    """What capturing cost: for /diagnostics and the benchmarks."""

    captures: int = 0
    capture_s: float = 0.0
    captures_after_ready: int = 0  # captured after mark_ready(): a length the warm-up did not foresee
    static_bytes: int = 0  # the static buffers the graphs read and write (device-independent)
    pool_reserved_bytes: Optional[int] = None  # CUDA: memory the allocator reserved while capturing (the pool)
    ready: bool = False

    def to_dict(self) -> Dict[str, object]:
        return dataclasses.asdict(self)


class GraphBook:
    """Which graphs exist (by key) and what capturing them cost. Device-independent."""

    def __init__(self):
        self._entries: Dict[Hashable, object] = {}
        self.stats = CaptureStats()

    def __contains__(self, key) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, key: Hashable, capture_fn: Callable[[], object]):
        """The entry of ``key``, captured by ``capture_fn()`` the first time (timed and counted)."""
        entry = self._entries.get(key)
        if entry is None:
            start = time.perf_counter()
            entry = capture_fn()
            self.stats.capture_s += time.perf_counter() - start
            self.stats.captures += 1
            if self.stats.ready:
                self.stats.captures_after_ready += 1
            self._entries[key] = entry
        return entry

    def mark_ready(self) -> None:
        """From now on every capture is one the warm-up missed (counted in captures_after_ready)."""
        self.stats.ready = True

    def remove(self, keys: Iterable[Hashable]) -> None:
        for key in keys:
            self._entries.pop(key, None)


def _copy_into(dst, src) -> None:
    if isinstance(dst, torch.Tensor):
        if dst.data_ptr() != src.data_ptr():
            dst.copy_(src)
    elif isinstance(dst, PrefixCache):
        for name in ("keys", "values", "cos", "sin"):
            _copy_into(getattr(dst, name), getattr(src, name))
    else:
        raise TypeError(f"cannot copy a {type(src).__name__} into a static output")


class GraphPool:
    """One memory pool, one GraphBook and one set of shared static buffers for the graphs of one model (its encoder
    and denoiser). On CUDA, graphs are CUDA graphs captured into the pool. On CPU, only with ``static_replay_on_cpu``
    (tests of the bookkeeping): a capture runs the function once and keeps its outputs, a replay runs it again and
    copies its results into them."""

    def __init__(self, device, static_replay_on_cpu: bool = False):
        device = torch.device(device)
        if device.type != "cuda" and not static_replay_on_cpu:
            raise ValueError(f"CUDA graphs need the model on a CUDA device, it is on {device}")
        self.device = device
        self.is_cuda = device.type == "cuda"
        self.book = GraphBook()
        self.handle = torch.cuda.graph_pool_handle() if self.is_cuda else None
        self._static: Dict[Hashable, torch.Tensor] = {}

    @property
    def stats(self) -> CaptureStats:
        return self.book.stats

    def static(self, name: Hashable, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """The shared static buffer ``name`` (zeros when made), at least ``shape`` in every dimension: a longer request
        makes a new, larger buffer (graphs captured on the old one keep it). Callers slice their leading part."""
        have = self._static.get(name)
        if have is not None and have.dtype == dtype and have.ndim == len(shape) and all(
                h >= s for h, s in zip(have.shape, shape)):
            return have
        if have is not None and have.ndim == len(shape):
            shape = [max(h, s) for h, s in zip(have.shape, shape)]
        buf = torch.zeros(tuple(shape), dtype=dtype, device=self.device)
        self._static[name] = buf
        self.stats.static_bytes += buf.numel() * buf.element_size()
        return buf

    def capture(self, key: Hashable, fn: Callable[[], object], warmup: int):
        """(replay, output) of the graph ``key``, captured from ``fn`` the first time."""
        def make():
            if not self.is_cuda:
                out = fn()
                return (lambda: _copy_into(out, fn())), out
            before = torch.cuda.memory_reserved(self.device)
            graph, out = capture(fn, warmup, self.handle, self.device)
            grown = torch.cuda.memory_reserved(self.device) - before
            self.stats.pool_reserved_bytes = (self.stats.pool_reserved_bytes or 0) + max(grown, 0)
            return graph.replay, out

        return self.book.entry(key, make)

    def mark_ready(self) -> None:
        self.book.mark_ready()


def cached_lengths(config: ModelConfig, camera_counts: Iterable[int], prompt_lengths: Iterable[int]) -> List[int]:
    """Every cached length (valid prefix tokens, + 1 for pi0's state token) that these camera counts and valid
    prompt lengths produce, longest first."""
    extra = 0 if config.is_pi05 else 1
    out = set()
    for cams in camera_counts:
        for n in prompt_lengths:
            if not 1 <= int(n) <= config.max_token_len:
                raise ValueError(f"prompt length {n} is outside 1..max_token_len={config.max_token_len}")
            out.add(int(cams) * config.num_image_tokens + int(n) + extra)
    return sorted(out, reverse=True)


class _PooledGraphs:
    """Graphs of one stage, keyed by their shapes, captured into a pool (GraphPool: shared memory, capture stats)."""

    def __init__(self, model: PI0Model, warmup: int = 2, pool: Optional[GraphPool] = None):
        self.pool = pool if pool is not None else GraphPool(model.device)
        self.model = model
        self.warmup = warmup
        self._entries: Dict[Hashable, Tuple] = {}  # key -> (replay, output, static inputs...)

    @property
    def num_graphs(self) -> int:
        return len(self._entries)

    @property
    def stats(self) -> CaptureStats:
        return self.pool.stats


class CudaGraphDenoiser(_PooledGraphs):
    """``denoiser(cache, noise, num_steps)`` == ``model.denoise(cache, noise, num_steps)``, replayed from a graph.

    One graph per (cached length, batch, num_steps); all of them read one pair of static K/V buffers sized for the
    longest length (a graph for length n uses its first n + horizon tokens), one set of rotary tables and one noise
    buffer. ``warm_up`` captures every length up front."""

    def _entry(self, batch: int, num_cached: int, num_steps: int, dtype: torch.dtype, noise_shape):
        model, c = self.model, self.model.config
        g, H = c.vlm, c.action_horizon
        key = ("denoise", batch, num_cached, int(num_steps), dtype, tuple(noise_shape))
        if key in self._entries:
            return self._entries[key]
        kv_shape = (g.depth, batch, g.num_kv_heads, num_cached + H, g.head_dim)
        keys = self.pool.static(("denoise keys", batch, dtype), kv_shape, dtype)[..., :num_cached + H, :]
        values = self.pool.static(("denoise values", batch, dtype), kv_shape, dtype)[..., :num_cached + H, :]
        cos = self.pool.static(("denoise cos", batch, dtype), (batch, H, 1, g.head_dim), dtype)
        sin = self.pool.static(("denoise sin", batch, dtype), (batch, H, 1, g.head_dim), dtype)
        noise = self.pool.static(("denoise noise", tuple(noise_shape)), tuple(noise_shape), torch.float32)
        static = PrefixCache(keys=keys, values=values, num_prefix=num_cached - (0 if c.is_pi05 else 1),
                             num_cached=num_cached, cos=cos, sin=sin)
        model.step_conditioning(num_steps)  # computed once, outside the graph
        replay, out = self.pool.capture(key, lambda: model.denoise(static, noise, num_steps), self.warmup)
        entry = self._entries[key] = (replay, out, static, noise)
        return entry

    def __call__(self, cache: PrefixCache, noise: torch.Tensor, num_steps: int = 10) -> torch.Tensor:
        c = self.model.config
        n = cache.num_cached
        expected = (cache.batch_size, c.action_horizon, c.action_dim)
        if tuple(noise.shape) != expected:
            raise ValueError(f"noise must be {list(expected)}, got {list(noise.shape)}")
        replay, out, static, static_noise = self._entry(cache.batch_size, n, num_steps, cache.keys.dtype,
                                                        noise.shape)
        # the tail (the action tokens' K/V) is written by every step before it is read: only the prefix is copied
        for dst, src in ((static.keys[..., :n, :], cache.keys[..., :n, :]),
                         (static.values[..., :n, :], cache.values[..., :n, :]),
                         (static.cos, cache.cos), (static.sin, cache.sin), (static_noise, noise)):
            dst.copy_(src)
        replay()
        return out.clone()

    def warm_up(self, num_cached_lengths: Iterable[int], batch: int = 1, num_steps: int = 10) -> CaptureStats:
        """Capture the graph of every cached length (cuda_graph.cached_lengths), longest first, so that the shared
        static buffers are allocated once at their final size."""
        c = self.model.config
        for n in sorted({int(n) for n in num_cached_lengths}, reverse=True):
            self._entry(batch, n, num_steps, self.model.dtype, (batch, c.action_horizon, c.action_dim))
        return self.stats

    def clear(self) -> None:
        self.pool.book.remove(self._entries)
        self._entries.clear()


@dataclasses.dataclass
class _CapturedGuided:
    replay: Callable[[], None]
    prefix: ConstantPrefix
    noise: torch.Tensor
    guidance: Guidance
    weights_by_step: torch.Tensor  # [num_steps] float32: rtc.step_weights, so one graph serves every beta
    out: torch.Tensor


class CudaGraphGuidedDenoiser:
    """``denoiser(cache, noise, guidance, num_steps)`` == ``rtc.guided_denoise(model, cache, noise, guidance,
    num_steps)``, replayed from one CUDA graph that holds every step's forward and backward pass.

    The eager guided denoise is a few thousand small kernels per call (launch-bound at batch 1: 3.3x the eager plain
    denoise on an H100); captured, it replays with one launch. Static buffers (ordinary tensors: autograd saves them)
    hold the cached prefix, rotary tables, noise, target, weights and each step's time weight (from beta: an input, so
    a new rtc.max_guidance captures nothing); a call copies into them and replays. Graphs are keyed by (cache shape,
    cached length, num_steps, noise shape).
    Given the policy's GraphPool, its captures share that pool and are counted in its stats (captures after ready
    included), and ``warm_up`` captures every cached length before the node reports ready (rtc.enabled: never capture
    while the robot moves). On CPU, only with a pool in static-replay mode (the bookkeeping's tests)."""

    def __init__(self, model: PI0Model, warmup: int = 2, pool: Optional[GraphPool] = None):
        if pool is None:
            pool = GraphPool(model.device)  # refuses a model off CUDA
        self.model, self.warmup, self.pool = model, warmup, pool
        self._graphs: Dict[Tuple, _CapturedGuided] = {}

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    @property
    def stats(self) -> CaptureStats:
        return self.pool.stats

    def __call__(self, cache: PrefixCache, noise: torch.Tensor, guidance: Guidance,
                 num_steps: int = 10) -> torch.Tensor:
        n = cache.num_cached
        captured = self._entry(cache, noise, guidance, num_steps)
        weights = guidance.weights.to(device=noise.device, dtype=torch.float32).expand_as(captured.guidance.weights)
        for dst, src in ((captured.prefix.keys, cache.keys[..., :n, :]),
                         (captured.prefix.values, cache.values[..., :n, :]),
                         (captured.prefix.cos, cache.cos), (captured.prefix.sin, cache.sin), (captured.noise, noise),
                         (captured.guidance.target, guidance.target), (captured.guidance.weights, weights),
                         (captured.weights_by_step, step_weights(self.model, num_steps, guidance.max_guidance))):
            dst.copy_(src)
        with torch.inference_mode(False):  # a static replay on CPU runs the loop again: autograd must be on
            captured.replay()
        return captured.out.clone()

    def _entry(self, cache: PrefixCache, noise: torch.Tensor, guidance: Guidance, num_steps: int) -> _CapturedGuided:
        key = ("guided", tuple(cache.keys.shape), cache.num_cached, int(num_steps), tuple(noise.shape))
        if key not in self._graphs:
            self._graphs[key] = self._capture(key, cache, noise, guidance, num_steps)
        return self._graphs[key]

    def _capture(self, key: Hashable, cache: PrefixCache, noise: torch.Tensor, guidance: Guidance, num_steps: int
                 ) -> _CapturedGuided:
        model = self.model
        with torch.inference_mode(False):
            prefix = ConstantPrefix.from_cache(cache)
            shape = tuple(noise.shape)
            static = Guidance(target=guidance.target.to(noise.device, torch.float32).clone(),
                              weights=guidance.weights.to(noise.device, torch.float32).expand(shape).clone(),
                              max_guidance=float(guidance.max_guidance))
            static_noise = noise.to(torch.float32).clone()
            by_step = step_weights(model, num_steps, guidance.max_guidance).to(noise.device)  # (and the steps'
            # conditioning, computed once outside the graph)
            replay, out = self.pool.capture(
                key, lambda: guided_loop(model, prefix, static_noise, static, num_steps, by_step), self.warmup)
        return _CapturedGuided(replay=replay, prefix=prefix, noise=static_noise, guidance=static,
                               weights_by_step=by_step, out=out)

    def captured_lengths(self, batch: int = 1) -> set:
        """The cached lengths whose guided graph is captured (any beta). (A copy of the keys first: the node asks
        from its executor thread while the engine thread may be capturing.)"""
        return {key[2] for key in list(self._graphs) if key[1][1] == batch}

    def warm_up(self, num_cached_lengths: Iterable[int], batch: int = 1, num_steps: int = 10) -> CaptureStats:
        """Capture the guided graph of every cached length (cuda_graph.cached_lengths) on blank inputs (zero prefix,
        zero target and weights): what real-time chunking replays once the robot moves, whatever its beta."""
        model, c = self.model, self.model.config
        g, H = c.vlm, c.action_horizon
        shape = (batch, H, c.action_dim)
        zeros = torch.zeros(shape, device=model.device)
        for n in sorted({int(n) for n in num_cached_lengths}, reverse=True):
            keys = torch.zeros((g.depth, batch, g.num_kv_heads, n + H, g.head_dim), device=model.device,
                               dtype=model.dtype)
            cos, sin = model.action_rotary(n, batch, model.device, model.dtype)
            cache = PrefixCache(keys=keys, values=keys, num_prefix=n - (0 if c.is_pi05 else 1), num_cached=n,
                                cos=cos, sin=sin)
            self._entry(cache, zeros, Guidance(target=zeros, weights=zeros), num_steps)
        return self.stats

    def clear(self) -> None:
        self.pool.book.remove(self._graphs)
        self._graphs.clear()


def host_inputs(image_masks: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """image_masks, tokens, token_mask as CudaGraphEncoder takes them best: on the host, the tokens pinned when CUDA
    is there (their copy into the graph's static buffer is then asynchronous)."""
    tokens = tokens.cpu()
    if torch.cuda.is_available() and not tokens.is_pinned():
        tokens = tokens.pin_memory()
    return image_masks.cpu(), tokens, token_mask.cpu()


class CudaGraphEncoder(_PooledGraphs):
    """``embed_images`` and ``build_cache`` of the model, replayed from CUDA graphs: vision one graph per number of
    present cameras, the prefix cache one per (cameras, valid prompt tokens). At batch 1 both stages are hundreds of
    small kernels (SigLIP's and Gemma's layers), launch-bound like the eager denoise.

    The host work that decides shapes stays outside the graphs: which cameras are present, the input checks, the
    compaction of the prompt to its valid tokens (then every prefix token is valid and PI0Model.prefix_cache runs
    with fixed shapes). A batch whose rows differ in cameras or prompt length runs eagerly. Every prefix graph writes
    into one pair of K/V buffers sized for the longest length, so the returned tokens and cache live in static
    buffers: valid until the next call (the denoisers copy the cache into their own).

    Give it the masks and the tokens on the host (``takes_host_inputs``; the tokens in pinned memory on CUDA): those
    decisions and checks then read no device value, the tokens' copy into their static buffer is asynchronous, and
    vision, the prefix cache and the denoise are enqueued back to back with no host wait between them (Policy.run
    does this). Masks and tokens on the device work too, at the cost of a wait for the device before each decision.
    """

    takes_host_inputs = True

    def _vision_entry(self, batch: int, cameras: int, dtype: torch.dtype):
        model = self.model
        s, T, W = model.config.vision.image_size, model.config.num_image_tokens, model.config.vlm.width
        key = ("vision", batch, cameras, dtype)
        if key not in self._entries:
            images = self.pool.static(("images", batch, cameras, dtype), (batch, cameras, 3, s, s), dtype)

            def vision():
                return model.projector(model.vision(images.reshape(batch * cameras, 3, s, s))).view(
                    batch, cameras, T, W)

            with torch.inference_mode():
                replay, out = self.pool.capture(key, vision, self.warmup)
            self._entries[key] = (replay, out, images)
        return self._entries[key]

    def _prefix_entry(self, batch: int, cameras: int, num_tokens: int, feature_dtype: torch.dtype,
                      token_dtype: torch.dtype, state_shape):
        model, c = self.model, self.model.config
        g, T, W = c.vlm, c.num_image_tokens, c.vlm.width
        key = ("prefix", batch, cameras, num_tokens, feature_dtype, token_dtype, tuple(state_shape))
        if key not in self._entries:
            features = self.pool.static(("features", batch, cameras, feature_dtype), (batch, cameras, T, W),
                                        feature_dtype)
            tokens = self.pool.static(("tokens", batch, token_dtype), (batch, num_tokens),
                                      token_dtype)[:, :num_tokens]
            state = self.pool.static(("state", tuple(state_shape)), tuple(state_shape), torch.float32)
            longest = cameras * T + num_tokens + int(not c.is_pi05) + c.action_horizon
            kv = (g.depth, batch, g.num_kv_heads, longest, g.head_dim)
            buffers = (self.pool.static(("prefix keys", batch, model.dtype), kv, model.dtype),
                       self.pool.static(("prefix values", batch, model.dtype), kv, model.dtype))

            def prefix():
                x = torch.cat([features.reshape(batch, -1, W).to(model.dtype),
                               model.embed_language(tokens).to(model.dtype)], dim=1)
                return model.prefix_cache(x, state, buffers)

            with torch.inference_mode():
                replay, out = self.pool.capture(key, prefix, self.warmup)
            self._entries[key] = (replay, out, features, tokens, state)
        return self._entries[key]

    def embed_images(self, images: torch.Tensor, image_masks: torch.Tensor) -> ImageTokens:
        model = self.model
        check_image_inputs(model.config, images, image_masks)
        present = tuple(i for i, p in enumerate(image_masks.any(dim=0).tolist()) if p)
        if not present or not bool(image_masks[:, list(present)].all()):  # no camera, or rows that differ: eager
            return model.embed_images(images, image_masks.to(images.device))
        replay, features, static_images = self._vision_entry(images.shape[0], len(present), images.dtype)
        first, last = present[0], present[-1] + 1
        with torch.inference_mode():  # a slice when the present cameras are adjacent: no index tensor to copy
            static_images.copy_(images[:, first:last] if len(present) == last - first else images[:, list(present)])
            replay()
        return ImageTokens(features=features, present=present, mask=image_masks[:, list(present)])

    def build_cache(self, image_tokens: ImageTokens, tokens: torch.Tensor, token_mask: torch.Tensor,
                    state: torch.Tensor) -> PrefixCache:
        model = self.model
        B = image_tokens.features.shape[0]
        check_prefix_inputs(model.config, B, tokens, token_mask, state)
        counts = token_mask.sum(dim=1).tolist()
        if len(set(counts)) != 1 or not bool(image_tokens.mask.all()) or counts[0] == 0:  # rows that differ: eager
            device = image_tokens.features.device
            image_tokens = dataclasses.replace(image_tokens, mask=image_tokens.mask.to(device))
            return model.build_cache(image_tokens, tokens.to(device), token_mask.to(device), state)
        n = counts[0]
        P = image_tokens.features.shape[1]
        replay, cache, features, static_tokens, static_state = self._prefix_entry(
            B, P, n, image_tokens.features.dtype, tokens.dtype, state.shape)
        # the tokenizer pads on the right: the valid tokens are a slice (of pinned memory: an asynchronous copy)
        valid = tokens[:, :n] if bool(token_mask[:, :n].all()) else tokens[token_mask].view(B, n)
        with torch.inference_mode():
            _copy_into(features, image_tokens.features)
            static_tokens.copy_(valid, non_blocking=True)
            static_state.copy_(state)
            replay()
        return cache

    def captured_prompt_lengths(self, cameras: int, batch: int = 1) -> set:
        """The valid prompt lengths whose prefix graph is captured for ``cameras`` present cameras. (A copy of the keys
        first: the node asks from its executor thread while the engine thread may be capturing.)"""
        return {key[3] for key in list(self._entries) if key[:3] == ("prefix", batch, cameras)}

    def warm_up(self, camera_counts: Iterable[int], prompt_lengths: Iterable[int], batch: int = 1,
                token_dtype: torch.dtype = torch.int64) -> CaptureStats:
        """Capture vision for every camera count and the prefix for every (camera count, prompt length), longest
        first (the shared K/V buffers are allocated once, at their final size)."""
        c = self.model.config
        dtype = self.model.dtype
        state_shape = (batch, c.action_dim)
        for cams in sorted({int(x) for x in camera_counts}, reverse=True):
            if not 1 <= cams <= 3:
                raise ValueError(f"camera count {cams} is outside 1..3")
            self._vision_entry(batch, cams, torch.float32)
            for n in sorted({int(x) for x in prompt_lengths}, reverse=True):
                if not 1 <= n <= c.max_token_len:
                    raise ValueError(f"prompt length {n} is outside 1..max_token_len={c.max_token_len}")
                self._prefix_entry(batch, cams, n, dtype, token_dtype, state_shape)
        return self.stats

    def clear(self) -> None:
        self.pool.book.remove(self._entries)
        self._entries.clear()
