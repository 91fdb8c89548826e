"""Policy: a numpy observation in, an ActionChunk out, each stage timed. Knows the engine's small API, not ROS.

    preprocess   resize_with_pad to the model's image size, uint8 -> [-1, 1], normalize the state (pi0: z-score,
                 pi0.5: quantile), pad to action_dim, tokenize the prompt (pi0.5: with the discretized state);
                 the cameras in parallel (preprocess.CameraBatch), then the inputs' copy to the model's device
    vision       SigLIP on the present cameras            (engine.embed_images)
    prefix_cache Gemma prefix over the valid tokens        (engine.build_cache)
    denoise      num_steps Euler steps, maskless SDPA      (engine.denoise, or its CUDA graph; with a previous
                 chunk: real-time chunking's guided denoise, model/rtc.py, or its graph)
    postprocess  unnormalize, first N dims, delta -> absolute where configured, clamp to the joint limits

With a robot adapter (adapters.py: aloha, droid, libero), openpi's order: the adapter maps the robot's state into the
model's space before normalization and fills the model slots it has; after the model, unnormalize, absolute actions
from the normalized-then-unnormalized padded state that entered the model (model space), then the adapter maps the
actions back to the robot, then the limits clamp. Without one ("none"), the state and actions are the model's.

infer(obs) = run(prepare(obs)): prepare is the host side of preprocess (no device work, so it can run on another
thread while run computes the previous observation on the device), run the rest.
"""
from __future__ import annotations

import dataclasses
import functools
import numbers
import threading
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..logs import get_logger
from ..model.config import ModelConfig
from ..model.pi0 import PI0Model
from ..model.rtc import DEFAULT_MAX_GUIDANCE, Guidance, guided_denoise
from .action_space import ActionSpace
from .adapters import RobotAdapter, make_adapter
from .preprocess import CameraBatch, ImageSource, ModelImage, ObservationError
from .rtc_target import GuidanceTarget, PreviousChunk
from .stage_clock import StageClock
from .transforms import (NormStats, pad_to_dim)

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
    # the normalized, padded float64 state that entered the model (with a robot adapter, postprocess adds it back,
    # unnormalized, to delta actions, as openpi does)
    model_state: Optional[np.ndarray] = None


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
    state: Optional[np.ndarray] = None  # the raw state of its observation (state order, robot units)


class Policy:
    def __init__(self, model: PI0Model, *, tokenizer, norm_stats: Optional[Dict[str, NormStats]] = None,
                 num_steps: int = 10, action_dims: Optional[int] = None, image_keys: Sequence[str] = IMAGE_KEYS,
                 delta_mask: Optional[Sequence[bool]] = None, lower_limits: Optional[Sequence[float]] = None,
                 upper_limits: Optional[Sequence[float]] = None, seed: int = 0, cuda_graph: bool = False,
                 preprocess_mode: str = "exact", preprocess_threads: Optional[int] = None,
                 robot_adapter: Union[None, str, RobotAdapter] = None, discrete_state_input: Optional[bool] = None):
        """preprocess_mode: "exact" (openpi's pixels) or "fast" (preprocess.py: not bit-exact, docs/preprocessing.md);
        preprocess_threads: cameras converted and resized at once (default: one per image slot; 1: serially).
        robot_adapter: None / "none", an adapter name (adapters.ADAPTERS, aloha with adapt_to_pi) or a RobotAdapter;
        with one, action_dims defaults to the robot's and delta_mask None means the adapter's openpi config default
        ([] or all False: none). discrete_state_input: pi0.5 writes the discretized state into the prompt; None = the
        adapter's openpi config default, or for "none" every pi0.5 model (the tokenizer must use the same format)."""
        self.model = model
        self.config = model.config
        self.tokenizer = tokenizer
        if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
        self.num_steps = int(num_steps)
        self.image_keys = tuple(image_keys)
        self.adapter = make_adapter(robot_adapter) if isinstance(robot_adapter, str) else robot_adapter
        defaults = self.adapter.defaults(self.config.variant) if self.adapter is not None else None
        if discrete_state_input is None:
            discrete_state_input = defaults.discrete_state_input if defaults else self.config.is_pi05
        if discrete_state_input and not self.config.is_pi05:
            raise ValueError("model.discrete_state_input is true but the model is pi0, which takes the state as a "
                             "continuous input: only pi0.5 can write it into the prompt")
        self.discrete_state_input = bool(discrete_state_input)
        self.actions = ActionSpace(self.config, norm_stats=norm_stats, adapter=self.adapter, action_dims=action_dims,
                                   delta_mask=delta_mask, lower_limits=lower_limits, upper_limits=upper_limits)
        self.action_dims, self.delta_mask = self.actions.action_dims, self.actions.delta_mask
        self.norm_stats, self.use_quantiles = norm_stats, self.actions.use_quantiles
        self.device = model.device
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self.cameras = CameraBatch(self.image_keys, self.config.vision.image_size, preprocess_mode, preprocess_threads)
        self.denoiser = model.denoise
        self.guided_denoiser = functools.partial(guided_denoise, model)  # real-time chunking
        self.encoder = model  # embed_images, build_cache
        # one run at a time on the device: the graphs replay from one set of static buffers, so two threads' runs
        # interleaved would each compute on the other's inputs
        self._run_lock = threading.Lock()
        if cuda_graph and self.device.type == "cuda":
            self.use_graphs()

    def use_graphs(self, static_replay_on_cpu: bool = False) -> None:
        """Run the encoding and the denoise, plain and guided, as graphs (model/cuda_graph.py): CUDA graphs on CUDA
        (what ``cuda_graph=True`` does there); ``static_replay_on_cpu``: the same bookkeeping on CPU, for tests."""
        from ..model.cuda_graph import CudaGraphDenoiser, CudaGraphEncoder, CudaGraphGuidedDenoiser, GraphPool

        pool = GraphPool(self.device, static_replay_on_cpu)  # one memory pool and one set of capture stats for all
        self.denoiser = CudaGraphDenoiser(self.model, pool=pool)
        self.guided_denoiser = CudaGraphGuidedDenoiser(self.model, pool=pool)
        self.encoder = CudaGraphEncoder(self.model, pool=pool)

    def warm_up_graphs(self, prompt: Union[str, Sequence[str]], state_dims: Optional[int] = None,
                       camera_counts: Optional[Sequence[int]] = None, guided: bool = False):
        """Capture the graphs of every prompt length ``prompt`` (one prompt, or several: every length of each) can
        produce (pi0.5 with the state in the prompt: over every state of ``state_dims`` values,
        policy/prompt_lengths.py) for ``camera_counts`` present cameras (default: every image slot), with
        ``guided`` (real-time chunking on; one guided graph per length serves every beta) the guided denoise's
        too, then mark the graphs ready: a later capture counts in ``captures_after_ready``. Returns
        the capture stats (model/cuda_graph.CaptureStats), or None when the policy runs without graphs."""
        if not hasattr(self.encoder, "warm_up") or not hasattr(self.denoiser, "warm_up"):
            return None
        if self.discrete_state_input and state_dims is None:
            raise ValueError("pi0.5 writes the state into the prompt: warm_up_graphs needs state_dims")
        from ..model.cuda_graph import cached_lengths

        lengths = self.prompt_lengths([prompt] if isinstance(prompt, str) else prompt, state_dims)
        cams = tuple(camera_counts) if camera_counts else (len(self.image_keys),)
        self.encoder.warm_up(cams, lengths)
        cached = cached_lengths(self.config, cams, lengths)
        self.denoiser.warm_up(cached, num_steps=self.num_steps)
        if guided:
            self.guided_denoiser.warm_up(cached, num_steps=self.num_steps)
        self.denoiser.pool.mark_ready()
        return self.denoiser.stats

    def prompt_lengths(self, prompts: Sequence[str], state_dims: Optional[int]) -> List[int]:
        """Every valid length ``prompts`` can produce, ascending (pi0.5: over every state of ``state_dims`` values)."""
        from .prompt_lengths import prompt_lengths

        dims = state_dims if self.discrete_state_input else None
        return sorted({n for p in prompts for n in prompt_lengths(self.tokenizer, p, dims)})

    @property
    def graph_stats(self):
        """The CUDA graphs' capture stats (count, time, memory, captures after ready), or None without graphs."""
        return getattr(self.denoiser, "stats", None)

    # --- inference -------------------------------------------------------------------------------------------------
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
        return self._model_inputs(obs)[:6]

    def _model_inputs(self, obs: Observation):
        """preprocess's result and the normalized padded float64 state."""
        c = self.config
        check_camera_slots(obs.images, self.image_keys, self.adapter)
        state = checked_state(obs.state, c.action_dim, None if self.adapter else self.delta_mask)
        try:
            norm_state = self.actions.state_to_model(state)
        except ValueError as e:  # the adapter's check of the robot's state
            raise ObservationError(str(e)) from None
        over = np.flatnonzero(~(np.abs(norm_state) <= np.finfo(np.float32).max))
        if over.size:  # finite in float64, inf in the model's float32 input
            raise ObservationError(f"state values at {over.tolist()} are beyond float32's range once normalized "
                                   f"({norm_state[over].tolist()}): the model's input would be infinite")
        images, masks = self.cameras(obs.images)
        try:
            tokens, token_mask = self.tokenizer.encode(obs.prompt,
                                                       state=norm_state if self.discrete_state_input else None)
        except ValueError as e:
            raise ObservationError(str(e)) from None
        padded = pad_to_dim(norm_state, c.action_dim)
        return (torch.from_numpy(images).permute(0, 3, 1, 2)[None], torch.from_numpy(masks)[None],
                torch.from_numpy(tokens.astype(np.int64))[None], torch.from_numpy(token_mask)[None],
                torch.from_numpy(padded.astype(np.float32))[None], state, padded)

    def postprocess(self, raw: np.ndarray, state: np.ndarray, model_state: Optional[np.ndarray] = None):
        """The model's actions as the robot's (action_space.ActionSpace.postprocess)."""
        return self.actions.postprocess(raw, state, model_state)

    def guidance(self, previous: PreviousChunk, stamp: float, state: np.ndarray, delay_steps: int,
                 execution_horizon: int) -> GuidanceTarget:
        """Real-time chunking's model-space target (action_space.ActionSpace.guidance)."""
        return self.actions.guidance(previous, stamp, state, delay_steps, execution_horizon)

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
        *inputs, state, model_state = self._model_inputs(obs)
        return PreparedObservation(inputs=tuple(inputs), state=state, stamp=obs.stamp,
                                   preprocess_s=time.perf_counter() - t0, model_state=model_state)

    def infer(self, obs: Observation, previous: Optional[PreviousChunk] = None, **guidance) -> ActionChunk:
        """One chunk: run(prepare(obs)). With ``previous``, real-time chunking (see run)."""
        return self.run(self.prepare(obs), previous, **guidance)

    def run(self, prepared: PreparedObservation, previous: Optional[PreviousChunk] = None, *, delay_steps: int = 0,
            execution_horizon: int = 0, max_guidance: float = DEFAULT_MAX_GUIDANCE, noise=None,
            path: str = "fast") -> ActionChunk:
        """The model stages of a prepared observation. With ``previous`` (the chunk being executed), real-time
        chunking: the denoise is guided towards it (delay_steps: actions executed before this chunk can take over;
        execution_horizon: actions between the two observations; max_guidance: the paper's beta); without it,
        exactly the plain result. noise: the denoise's start [1, H, action_dim] or [H, action_dim] (a parity check
        feeding openpi's noise; default: drawn from the policy's seeded generator). path: "fast" (the engine) or
        "reference" (openpi's padded, masked formulation, model/reference.py: parity checks; no real-time chunking,
        its whole time counts as denoise). timings: preprocess = prepare's time plus the copy of the inputs to the
        device (and the guidance target's few microseconds); vision, prefix_cache and denoise as the device ran them
        (policy/stage_clock.py: on CUDA no host wait between them); total = the sum of the stages (prepare may have run
        long before)."""
        if path not in ("fast", "reference"):
            raise ValueError(f"path must be 'fast' or 'reference', got {path!r}")
        if path == "reference" and previous is not None:
            raise ValueError("real-time chunking (a previous chunk) runs on the fast path only")
        t0 = time.perf_counter()
        inputs = self._device_inputs(prepared, host_masks=path == "fast")
        target = guidance = None
        if previous is not None:
            target = self.guidance(previous, prepared.stamp, prepared.state, delay_steps, execution_horizon)
            guidance = guidance_on_device(target, max_guidance, self.device)
        given_noise = None if noise is None else given_noise_on(noise, self.config, self.device)
        with self._run_lock:
            clock = StageClock(self.device)  # vision, prefix_cache, denoise: nothing on the host between them
            t1 = time.perf_counter()
            with torch.inference_mode():
                actions_t = self._enqueue(inputs, clock, given_noise, guidance, path)
                raw = actions_t[0].float().cpu().numpy()  # the one wait for the device
                clock.mark()
        vision_s, prefix_s, denoise_s = clock.durations()
        t4 = time.perf_counter()
        if not np.all(np.isfinite(raw)):
            raise ObservationError("the model produced non-finite actions; nothing published")
        actions, clamped = self.postprocess(raw, prepared.state, prepared.model_state)
        t5 = time.perf_counter()
        timings = dict(zip(STAGES, (t1 - t0, vision_s, prefix_s, denoise_s, t5 - t4)))
        timings["preprocess"] += prepared.preprocess_s
        timings["total"] = sum(timings[name] for name in STAGES)
        error = target.prefix_error(raw, self.action_dims) if target is not None else None
        return ActionChunk(actions=actions, stamp=prepared.stamp, timings=timings, clamped=clamped,
                           guidance_error=error, state=prepared.state)

    def _device_inputs(self, prepared: PreparedObservation, host_masks: bool) -> Tuple[torch.Tensor, ...]:
        """images, image_masks, tokens, token_mask, state: every copy to the device made before the first stage
        starts (a copy from pageable host memory waits for the device). With ``host_masks`` and an encoder that
        decides on the host (cuda_graph.CudaGraphEncoder.takes_host_inputs), the masks and tokens stay on the host,
        the tokens pinned on CUDA (copied asynchronously into the graph's static buffer)."""
        images, masks, tokens, token_mask, state = prepared.inputs
        images, state = images.to(self.device), state.to(self.device)
        if host_masks and getattr(self.encoder, "takes_host_inputs", False):
            from ..model.cuda_graph import host_inputs

            return (images, *host_inputs(masks, tokens, token_mask), state)
        return images, masks.to(self.device), tokens.to(self.device), token_mask.to(self.device), state

    def _enqueue(self, inputs: Tuple[torch.Tensor, ...], clock: StageClock, noise: Optional[torch.Tensor],
                 guidance: Optional[Guidance], path: str) -> torch.Tensor:
        """The model stages enqueued on the device, a clock mark before the first and after vision and the prefix
        cache (the caller marks the denoise's end): the actions [1, H, action_dim] on the device, not read yet. With
        graphs it reads no device value (test_graph_lengths runs it on the meta device, where any read raises)."""
        images, masks, tokens, token_mask, state = inputs
        clock.mark()
        if path == "reference":
            clock.mark()
            clock.mark()  # its whole time counts as denoise
        else:
            image_tokens = self.encoder.embed_images(images, masks)
            clock.mark()
            cache = self.encoder.build_cache(image_tokens, tokens, token_mask, state)
            clock.mark()
        if noise is None:
            noise = self.model.sample_noise(1, generator=self.generator)
        if path == "reference":
            return self.model.sample_actions(images, masks, tokens, token_mask, state, noise=noise,
                                             num_steps=self.num_steps, path="reference")
        if guidance is None:
            return self.denoiser(cache, noise, self.num_steps)
        return self.guided_denoiser(cache, noise, guidance, self.num_steps)


def check_camera_slots(images, image_keys: Sequence[str], adapter) -> None:
    """An observation's images: a mapping of model image slots (those the robot adapter fills, with one)."""
    if not isinstance(images, Mapping):
        raise ObservationError(f"images must be a dict of camera slot -> image (slots {list(image_keys)}), "
                               f"got {type(images).__name__}")
    unknown = sorted(set(images) - set(image_keys))
    if unknown:
        raise ObservationError(f"cameras {unknown} are not model image slots {list(image_keys)}")
    if adapter is not None:
        unfilled = sorted(k for k in images if k not in adapter.slots)
        if unfilled:
            raise ObservationError(f"cameras {unfilled}: robot adapter '{adapter.name}' fills only the model "
                                   f"slots {list(adapter.slots)} (openpi leaves the others empty)")


def checked_state(state, action_dim: int, delta_mask: Optional[Sequence[bool]]) -> np.ndarray:
    """An observation's state as a float64 vector of at most ``action_dim`` finite values, as long as ``delta_mask``
    (without a robot adapter: postprocess adds the state to the actions it marks)."""
    state = np.asarray(state, dtype=np.float64)
    if state.ndim != 1 or len(state) > action_dim:
        raise ObservationError(f"state must be a vector of at most {action_dim} values, got {list(state.shape)}")
    if not np.all(np.isfinite(state)):
        raise ObservationError(f"state has non-finite values at {np.nonzero(~np.isfinite(state))[0].tolist()}")
    if delta_mask is not None and len(state) < len(delta_mask):
        raise ObservationError(f"state has {len(state)} values but the delta mask has {len(delta_mask)} entries: "
                               "postprocess adds the state to the actions it marks")
    return state


def given_noise_on(noise, c: ModelConfig, device: torch.device) -> torch.Tensor:
    """A given denoise start as a float32 [1, H, action_dim] tensor on the model's device."""
    try:
        noise = torch.as_tensor(np.asarray(noise) if not isinstance(noise, torch.Tensor) else noise)
    except (TypeError, ValueError):
        raise ValueError(f"noise must be an array of numbers, got {type(noise).__name__}") from None
    if noise.is_complex() or noise.dtype == torch.bool:
        raise ValueError(f"noise must be real numbers, got {noise.dtype}")
    if noise.ndim == 2:
        noise = noise[None]
    if tuple(noise.shape) != (1, c.action_horizon, c.action_dim):
        raise ValueError(f"noise must be [1, {c.action_horizon}, {c.action_dim}] (batch, action_horizon, "
                         f"action_dim), got {list(noise.shape)}")
    # checked on the host only (reading a device tensor would wait for the device); else "the model produced
    # non-finite actions"
    if noise.device.type == "cpu" and not bool(torch.isfinite(noise).all()):
        raise ValueError("noise must be finite: it has NaN or inf values")
    return noise.to(device=device, dtype=torch.float32)


def guidance_on_device(target: GuidanceTarget, max_guidance: float, device: torch.device) -> Guidance:
    """Real-time chunking's guidance target as the model's denoise takes it."""
    return Guidance(target=torch.from_numpy(target.target).float()[None].to(device),
                    weights=torch.from_numpy(target.weights).float()[None].to(device), max_guidance=max_guidance)


def camera_slots(names: Sequence[str]) -> List[str]:
    """Validate node camera names against the model's slots."""
    bad = [n for n in names if n not in IMAGE_KEYS]
    if bad:
        raise ValueError(f"cameras.names {bad} are not model image slots {list(IMAGE_KEYS)}")
    return list(names)
