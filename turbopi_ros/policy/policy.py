"""Policy: a numpy observation in, an ActionChunk out, each stage timed. Knows the engine's small API, not ROS.

    preprocess   resize_with_pad to the model's image size, uint8 -> [-1, 1], normalize the state (pi0: z-score,
                 pi0.5: quantile), pad to action_dim, tokenize the prompt (pi0.5: with the discretized state);
                 the cameras in parallel (preprocess.CameraBatch), then the inputs' copy to the model's device
    vision       SigLIP on the present cameras            (engine.embed_images)
    prefix_cache Gemma prefix over the valid tokens        (engine.build_cache)
    denoise      num_steps Euler steps, maskless SDPA      (engine.denoise, or its CUDA graph; with a previous
                 chunk: real-time chunking's guided denoise, model/rtc.py, always eager)
    postprocess  unnormalize, first N dims, delta -> absolute where configured, clamp to the joint limits

infer(obs) = run(prepare(obs)): prepare is the host side of preprocess (no device work, so it can run on another
thread while run computes the previous observation on the device), run the rest.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..logs import get_logger
from ..model.checkpoint import load_model, random_model
from ..model.config import load_config
from ..model.pi0 import PI0Model
from ..model.rtc import DEFAULT_MAX_GUIDANCE, Guidance, guided_denoise
from .preprocess import CameraBatch, ImageSource, ModelImage, ObservationError
from .rtc import GuidanceTarget, PreviousChunk, guidance_target
from .tokenizer import make_tokenizer
from .transforms import (NormStats, absolute_actions, find_norm_stats, load_norm_stats, normalize, pad_to_dim,
                         require_stats, unnormalize)

logger = get_logger(__name__)

# openpi's camera slots, in the order the model sees them.
IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
STAGES = ("preprocess", "vision", "prefix_cache", "denoise", "postprocess")
# model.checkpoint value that asks for seeded random weights (demos, tests): never the default, always explicit.
RANDOM_WEIGHTS = "random"


@dataclasses.dataclass
class Observation:
    # camera slot -> uint8 [H, W, 3] RGB, or a zero-argument callable returning one (e.g. the node's
    # ``lambda: image_to_rgb(msg, name)``), called on the preprocessing thread pool so that the cameras' conversions run
    # in parallel too; whatever it raises propagates from preprocess/prepare/infer. A slot left out is an absent camera.
    # Either may also be a ModelImage: that camera already preprocessed by Policy.prepare_image.
    images: Dict[str, ImageSource]
    state: np.ndarray  # joint positions in the state order (raw units)
    prompt: str
    stamp: float = 0.0  # seconds; carried to the chunk


@dataclasses.dataclass
class PreparedObservation:
    """Policy.prepare's result: the model inputs of one observation, on the host (CPU) until Policy.run."""
    inputs: Tuple[torch.Tensor, ...]  # images, image_masks, tokens, token_mask, normalized padded state (batch of 1)
    state: np.ndarray  # the raw state (float64): postprocess adds it to delta actions
    stamp: float
    preprocess_s: float  # the host side of the preprocess stage


@dataclasses.dataclass
class ActionChunk:
    actions: np.ndarray  # [H, N] float64: absolute targets for the first N action dims, clamped to the limits
    stamp: float
    timings: Dict[str, float]  # seconds per stage, and "total"
    clamped: int = 0  # how many values the limits clamped
    # real-time chunking (infer with a previous chunk): RMS distance in model space (normalized units) between this
    # chunk's first delay_steps actions and the previous chunk at the same times, over the robot's dims; None when
    # unguided or delay_steps = 0
    guidance_error: Optional[float] = None


class Policy:
    def __init__(self, model: PI0Model, *, tokenizer, norm_stats: Optional[Dict[str, NormStats]] = None,
                 num_steps: int = 10, action_dims: Optional[int] = None, image_keys: Sequence[str] = IMAGE_KEYS,
                 delta_mask: Optional[Sequence[bool]] = None, lower_limits: Optional[Sequence[float]] = None,
                 upper_limits: Optional[Sequence[float]] = None, seed: int = 0, cuda_graph: bool = False,
                 preprocess_mode: str = "exact", preprocess_threads: Optional[int] = None):
        """preprocess_mode: "exact" (openpi's pixels) or "fast" (preprocess.py: not bit-exact, docs/preprocessing.md);
        preprocess_threads: cameras converted and resized at once (default: one per image slot; 1: serially)."""
        self.model = model
        self.config = model.config
        self.tokenizer = tokenizer
        self.num_steps = int(num_steps)
        self.image_keys = tuple(image_keys)
        self.action_dims = int(action_dims or self.config.action_dim)
        if not 0 < self.action_dims <= self.config.action_dim:
            raise ValueError(f"action dims {self.action_dims} must be in 1..{self.config.action_dim}")
        self.norm_stats = norm_stats
        self.use_quantiles = self.config.is_pi05
        if norm_stats is not None:
            for key in ("state", "actions"):
                if key not in norm_stats:
                    raise ValueError(f"norm stats have no '{key}' entry")
                require_stats(norm_stats[key], self.use_quantiles, f"norm stats [{key}]")
        self.delta_mask = None if delta_mask is None or not any(delta_mask) else list(delta_mask)
        self.lower = self._limits(lower_limits, -np.inf, "lower")
        self.upper = self._limits(upper_limits, np.inf, "upper")
        if np.any(self.lower > self.upper):
            raise ValueError("action lower limits exceed upper limits")
        self.device = model.device
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self.cameras = CameraBatch(self.image_keys, self.config.vision.image_size, preprocess_mode, preprocess_threads)
        self.denoiser = model.denoise
        self.guided_denoiser = functools.partial(guided_denoise, model)  # real-time chunking
        self.encoder = model  # embed_images, build_cache
        if cuda_graph and self.device.type == "cuda":
            from ..model.cuda_graph import CudaGraphDenoiser, CudaGraphEncoder, CudaGraphGuidedDenoiser, GraphPool

            pool = GraphPool(self.device)  # one memory pool and one set of capture stats for both stages
            self.denoiser = CudaGraphDenoiser(model, pool=pool)
            self.guided_denoiser = CudaGraphGuidedDenoiser(model)
            self.encoder = CudaGraphEncoder(model, pool=pool)

    def warm_up_graphs(self, prompt: str, state_dims: Optional[int] = None,
                       camera_counts: Optional[Sequence[int]] = None):
        """Capture the graphs of every prompt length ``prompt`` can produce (pi0.5: over every state of
        ``state_dims`` values, policy/prompt_lengths.py) for ``camera_counts`` present cameras (default: every image
        slot), then mark the graphs ready: a later capture counts in ``captures_after_ready``. Returns the capture
        stats (model/cuda_graph.CaptureStats), or None when the policy runs without graphs."""
        from .prompt_lengths import prompt_lengths

        if not hasattr(self.encoder, "warm_up") or not hasattr(self.denoiser, "warm_up"):
            return None
        if self.config.is_pi05 and state_dims is None:
            raise ValueError("pi0.5 writes the state into the prompt: warm_up_graphs needs state_dims")
        from ..model.cuda_graph import cached_lengths

        lengths = prompt_lengths(self.tokenizer, prompt, state_dims if self.config.is_pi05 else None)
        cams = tuple(camera_counts) if camera_counts else (len(self.image_keys),)
        self.encoder.warm_up(cams, lengths)
        self.denoiser.warm_up(cached_lengths(self.config, cams, lengths), num_steps=self.num_steps)
        self.denoiser.pool.mark_ready()
        return self.denoiser.stats

    @property
    def graph_stats(self):
        """The CUDA graphs' capture stats (count, time, memory, captures after ready), or None without graphs."""
        return getattr(self.denoiser, "stats", None)

    def _limits(self, values, default, name) -> np.ndarray:
        if values is None or len(values) == 0:
            return np.full(self.action_dims, default)
        if len(values) != self.action_dims:
            raise ValueError(f"{len(values)} {name} limits for {self.action_dims} action joints")
        return np.asarray(values, dtype=np.float64)

    @classmethod
    def from_params(cls, *, checkpoint: str, preset: str = "tiny", device: str = "cpu", dtype: str = "float32",
                    tokenizer: str = "", norm_stats: str = "", seed: int = 0, **kwargs) -> "Policy":
        """checkpoint: an openpi checkpoint directory or .safetensors file, or "random" for seeded random weights of
        ``preset`` (demos, tests): then no tokenizer file and no norm stats are needed (a byte tokenizer and identity
        normalization are used, and the log says so)."""
        if not checkpoint:
            raise ValueError("model.checkpoint is not set: give an openpi checkpoint directory or .safetensors file, "
                             f"or '{RANDOM_WEIGHTS}' for random weights of model.preset (demos and tests only)")
        if checkpoint != RANDOM_WEIGHTS:
            if not tokenizer:  # checked first: loading a checkpoint takes a while
                raise ValueError("model.tokenizer is required with a real checkpoint (paligemma_tokenizer.model)")
            model = load_model(checkpoint, config=None if Path(checkpoint).is_dir() else preset, device=device,
                               dtype=dtype)
        else:
            model = random_model(load_config(preset), seed=seed, device=device, dtype=dtype)
            logger.warning("model.checkpoint is '%s': random weights of preset '%s' (actions are meaningless)",
                           RANDOM_WEIGHTS, preset)
        real = checkpoint != RANDOM_WEIGHTS
        stats_path = norm_stats or (find_norm_stats(checkpoint) if real and Path(checkpoint).is_dir() else None)
        stats = load_norm_stats(stats_path) if stats_path else None
        if stats is None:
            logger.warning("no norm stats: state and actions pass through unnormalized")
        tok = make_tokenizer(tokenizer, model.config.max_token_len, model.config.vlm.vocab_size, model.config.variant)
        return cls(model, tokenizer=tok, norm_stats=stats, seed=seed, **kwargs)

    # --- inference -------------------------------------------------------------------------------------------------
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @property
    def reduced_decode_size(self) -> Optional[Tuple[int, int]]:
        """For image decoders (conversions.compressed_to_rgb's reduce_for): None in the exact mode (decode at full
        size), (height, width) the images are fit into in the fast mode (a JPEG may be decoded at 1/2, 1/4, 1/8)."""
        return self.cameras.reduced_decode_size

    def close(self) -> None:
        """Stop the camera threads (optional: idle threads also end when the policy is garbage collected)."""
        self.cameras.close()

    def preprocess(self, obs: Observation):
        """-> (images, image_masks, tokens, token_mask, normalized padded state, raw state): the model's inputs as CPU
        tensors (batch of 1) and the raw float64 state. Host work only; run() moves the inputs to the device."""
        c = self.config
        unknown = sorted(set(obs.images) - set(self.image_keys))
        if unknown:
            raise ObservationError(f"cameras {unknown} are not model image slots {list(self.image_keys)}")
        state = np.asarray(obs.state, dtype=np.float64)
        if state.ndim != 1 or len(state) > c.action_dim:
            raise ObservationError(f"state must be a vector of at most {c.action_dim} values, got {list(state.shape)}")
        if not np.all(np.isfinite(state)):
            raise ObservationError(f"state has non-finite values at {np.nonzero(~np.isfinite(state))[0].tolist()}")
        images, masks = self.cameras(obs.images)
        norm_state = normalize(state, self.norm_stats["state"], self.use_quantiles) if self.norm_stats else state
        try:
            tokens, token_mask = self.tokenizer.encode(obs.prompt, state=norm_state if c.is_pi05 else None)
        except ValueError as e:
            raise ObservationError(str(e)) from None
        return (torch.from_numpy(images).permute(0, 3, 1, 2)[None], torch.from_numpy(masks)[None],
                torch.from_numpy(tokens.astype(np.int64))[None], torch.from_numpy(token_mask)[None],
                torch.from_numpy(pad_to_dim(norm_state, c.action_dim).astype(np.float32))[None], state)

    def postprocess(self, raw: np.ndarray, state: np.ndarray):
        actions = unnormalize(raw, self.norm_stats["actions"], self.use_quantiles) if self.norm_stats else raw
        actions = np.asarray(actions, dtype=np.float64)[:, : self.action_dims]
        if self.delta_mask is not None:
            actions = absolute_actions(actions, state, self.delta_mask)
        clipped = np.clip(actions, self.lower, self.upper)
        return clipped, int(np.count_nonzero(clipped != actions))

    def guidance(self, previous: PreviousChunk, stamp: float, state: np.ndarray, delay_steps: int,
                 execution_horizon: int) -> GuidanceTarget:
        """Real-time chunking's target in model space for an observation at ``stamp`` with raw ``state`` (rtc.py):
        the previous chunk at the new action times, deltas from ``state`` where delta_mask, normalized like the
        actions, padded to action_dim with weight 0 beyond the robot's dims."""
        prev = np.asarray(previous.actions)
        if prev.ndim != 2 or prev.shape[1] != self.action_dims:
            raise ValueError(f"previous chunk actions must be [H, {self.action_dims}] (the policy's action dims), got "
                             f"{list(prev.shape)}")
        return guidance_target(
            previous, stamp=stamp, state=state, horizon=self.config.action_horizon, action_dim=self.config.action_dim,
            delay_steps=delay_steps, execution_horizon=execution_horizon, delta_mask=self.delta_mask,
            stats=self.norm_stats["actions"] if self.norm_stats else None, use_quantiles=self.use_quantiles)

    def prepare_image(self, key: str, source: ImageSource) -> ModelImage:
        """One camera's image preprocessed on its own, in the calling thread (e.g. as its frame arrives): an
        Observation holding it gives the model inputs that holding ``source`` gives, bit for bit."""
        if key not in self.image_keys:
            raise ObservationError(f"camera '{key}' is not a model image slot {list(self.image_keys)}")
        return self.cameras.model_image(key, source)

    def prepare(self, obs: Observation) -> PreparedObservation:
        """The host side of the preprocess stage, timed; touches no device, so it may run on another thread while
        run() computes an earlier observation."""
        t0 = time.perf_counter()
        *inputs, state = self.preprocess(obs)
        return PreparedObservation(inputs=tuple(inputs), state=state, stamp=obs.stamp,
                                   preprocess_s=time.perf_counter() - t0)

    def infer(self, obs: Observation, previous: Optional[PreviousChunk] = None, **guidance) -> ActionChunk:
        """One chunk: run(prepare(obs)). With ``previous``, real-time chunking (see run)."""
        return self.run(self.prepare(obs), previous, **guidance)

    def run(self, prepared: PreparedObservation, previous: Optional[PreviousChunk] = None, *, delay_steps: int = 0,
            execution_horizon: int = 0, max_guidance: float = DEFAULT_MAX_GUIDANCE) -> ActionChunk:
        """The model stages of a prepared observation. With ``previous`` (the chunk being executed), real-time
        chunking: the denoise is guided towards it (delay_steps: actions executed before this chunk can take over;
        execution_horizon: actions between the two observations; max_guidance: the paper's beta); without it,
        exactly the plain result. timings: preprocess = prepare's time plus the copy of the inputs to the device
        (and the guidance target's few microseconds); total = the sum of the stages (prepare may have run long
        before)."""
        timings: Dict[str, float] = {}
        t0 = time.perf_counter()
        images, masks, tokens, token_mask, state_t = (x.to(self.device) for x in prepared.inputs)
        target = None
        if previous is not None:
            target = self.guidance(previous, prepared.stamp, prepared.state, delay_steps, execution_horizon)
        self._sync()
        t1 = time.perf_counter()
        with torch.inference_mode():
            image_tokens = self.encoder.embed_images(images, masks)
            self._sync()
            t2 = time.perf_counter()
            cache = self.encoder.build_cache(image_tokens, tokens, token_mask, state_t)
            self._sync()
            t3 = time.perf_counter()
            noise = self.model.sample_noise(1, generator=self.generator)
            if target is None:
                raw = self.denoiser(cache, noise, self.num_steps)[0].float().cpu().numpy()
            else:
                guidance = Guidance(target=torch.from_numpy(target.target).float()[None].to(self.device),
                                    weights=torch.from_numpy(target.weights).float()[None].to(self.device),
                                    max_guidance=max_guidance)
                raw = self.guided_denoiser(cache, noise, guidance, self.num_steps)[0].float().cpu().numpy()
        t4 = time.perf_counter()
        if not np.all(np.isfinite(raw)):
            raise ObservationError("the model produced non-finite actions; nothing published")
        actions, clamped = self.postprocess(raw, prepared.state)
        t5 = time.perf_counter()
        for name, a, b in zip(STAGES, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
            timings[name] = b - a
        timings["preprocess"] += prepared.preprocess_s
        timings["total"] = t5 - t0 + prepared.preprocess_s
        error = target.prefix_error(raw, self.action_dims) if target is not None else None
        return ActionChunk(actions=actions, stamp=prepared.stamp, timings=timings, clamped=clamped,
                           guidance_error=error)


def camera_slots(names: Sequence[str]) -> List[str]:
    """Validate node camera names against the model's slots."""
    bad = [n for n in names if n not in IMAGE_KEYS]
    if bad:
        raise ValueError(f"cameras.names {bad} are not model image slots {list(IMAGE_KEYS)}")
    return list(names)
