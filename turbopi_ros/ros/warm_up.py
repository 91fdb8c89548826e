"""What the node does before it reports ready: its first inference, on a blank observation, and with graphs (CUDA
graphs: model.cuda_graph on CUDA) the capture of every prompt length the configuration can produce first
(Policy.warm_up_graphs: pi0.5 writes the state into its prompt, so the length moves while the robot moves). A lazy
initialisation, a torch.compile (model.compile) or a capture then happens here, never on the robot's observations.
The blank inference uses its own zero noise: the seeded noise of the chunks is untouched.

The plain node warms up on its engine thread once it spins (/diagnostics says "warming up" meanwhile); the managed
node in its configure transition. The prompt is the one set then (the ``prompt`` parameter or a latched ~/prompt), or
``WARMUP_PROMPT`` when there is none yet, and the prompts of ``model.warm_up_prompts`` (those the robot will be given
later). A prompt set later that is neither has its missing lengths captured on the engine thread before its first
inference (``capture_prompt``): one stall, at the switch, instead of one each time the moving state reaches a length
without a graph. Those captures count in ``graph_captures_after_ready`` on /diagnostics, and the node warns when such a
prompt is set (``unforeseen``)."""
from __future__ import annotations

import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..model.kernel_choice import CHOICES, Choice
from ..policy.policy import Observation
from ..policy.tokenizer import clean_prompt
from .inputs import shorten
from .problems import failure

WARMUP_PROMPT = "warm up"
BLANK_SIZE = 224  # the blank images' side (the model's input size: no resize needed)


def is_prompt(text: str) -> bool:
    """Whether ``text`` is a prompt at all: "", whitespace and underscores clean to nothing (tokenizer.clean_prompt),
    which the inputs refuse as an empty prompt; the warm-up treats them as no prompt."""
    try:
        clean_prompt(text)
    except ValueError:
        return False
    return True


class WarmUp:
    def __init__(self, policy, cameras: Sequence[str], state_joints: Sequence[str], prompt: Callable[[], str],
                 run: Optional[Callable] = None, other_prompts: Sequence[str] = (), guided: bool = False,
                 kernel_choices: Callable[[], List[Choice]] = CHOICES.choices):
        """``policy``: policy.Policy; ``cameras``: the model slots the node fills; ``prompt()``: the current prompt;
        ``run``: the policy's run, or what the engine runs instead (test-only faults wrap it); ``other_prompts``:
        prompts given later whose graphs are captured now too (model.warm_up_prompts); ``guided``: real-time
        chunking is on (rtc.enabled): the guided denoise's graphs are captured too (one per length serves every beta);
        ``kernel_choices()``: the split kernels' measured choices (model/kernel_choice.py)."""
        self.policy, self.cameras, self.state_joints, self._prompt = policy, list(cameras), list(state_joints), prompt
        self.other_prompts = [p for p in other_prompts if is_prompt(p)]
        self.guided = guided
        self._run = run or policy.run
        self._kernel_choices = kernel_choices
        self.ready = threading.Event()
        self.seconds: Optional[float] = None  # how long the warm-up took, once it is done
        self.camera_count: Optional[int] = None  # the present cameras and state values it captured for
        self.state_dims: Optional[int] = None

    def run(self) -> str:
        """Warm up (raises what the policy raised); marks the node ready. Returns the log line saying what it did."""
        t0 = time.monotonic()
        prompt = self._prompt()
        prompt = prompt if is_prompt(prompt) else WARMUP_PROMPT
        images = {name: np.zeros((BLANK_SIZE, BLANK_SIZE, 3), np.uint8) for name in self.cameras}
        state = np.zeros(len(self.state_joints))
        prepared = self.policy.prepare(Observation(images=images, state=state, prompt=prompt))
        present = int(prepared.inputs[1].sum())  # the image slots filled (an adapter may fill more than named)
        state_dims = len(self.policy.actions.state_to_model(state))  # what pi0.5 writes into its prompt
        prompts = [prompt] + self.other_prompts
        stats = self.policy.warm_up_graphs(prompts, state_dims, camera_counts=(present,),  # None without graphs
                                           guided=self.guided)
        self.camera_count, self.state_dims = present, state_dims
        c = self.policy.config
        chunk = self._run(prepared, noise=np.zeros((c.action_horizon, c.action_dim), np.float32))
        self.seconds = time.monotonic() - t0
        self.ready.set()
        text = f"warm-up inference: {chunk.timings['total'] * 1e3:.0f} ms"
        if stats is not None:
            text += (f", {stats.captures} graphs captured in {stats.capture_s:.1f} s (every prompt length of "
                     f"{len(prompts)} prompt{'s' if len(prompts) > 1 else ''})")
        made = self._kernel_choices()
        if made:  # on a GPU: the split kernels measured their configs (model/kernel_choice.py)
            text += (f", {len(made)} kernel choices ({sum(c.loaded for c in made)} loaded, the others measured in "
                     f"{sum(c.seconds for c in made):.1f} s)")
        return text + f"; warm-up took {self.seconds:.1f} s"

    def missing_lengths(self, prompt: str, guided: bool = False) -> List[int]:
        """The prompt lengths ``prompt`` can produce (over every state) that have no graph yet for the cameras the
        warm-up captured for (with ``guided``, real-time chunking on: no guided graph for it either; a guided graph
        serves every beta).
        Empty without graphs, before ready (the warm-up reads the prompt when it starts), and for a prompt the
        tokenizer rejects (the inference that uses it reports what is wrong with it)."""
        captured = getattr(self.policy.encoder, "captured_prompt_lengths", None)
        if captured is None or not self.ready.is_set() or self.camera_count is None:
            return []
        have = captured(self.camera_count)
        try:
            lengths = self.policy.prompt_lengths([prompt], self.state_dims)
        except ValueError:
            return []
        captured_guided = getattr(self.policy.guided_denoiser, "captured_lengths", None)
        if not guided or captured_guided is None:
            return [n for n in lengths if n not in have]
        from ..model.cuda_graph import cached_lengths

        have_guided = captured_guided()
        return [n for n in lengths if n not in have or
                cached_lengths(self.policy.config, (self.camera_count,), (n,))[0] not in have_guided]

    def unforeseen(self, prompt: str, guided: bool = False) -> Optional[str]:
        """A warning for a prompt set after ready some of whose lengths have no graph yet (``missing_lengths``), or
        None."""
        missing = self.missing_lengths(prompt, guided)
        if not missing:
            return None
        return (f"prompt {shorten(prompt, 80)} was not foreseen: {len(missing)} of its prompt lengths have no CUDA "
                f"graph yet; they are captured before its first inference, which waits for them while the robot "
                f"finishes its current chunk; list the prompt in model.warm_up_prompts to capture them before ready")

    def capture_prompt(self, prompt: str, guided: bool = False) -> Optional[str]:
        """On the engine thread, before the first inference with ``prompt`` (or with RTC switched on): capture the
        graphs of every length it can produce that lacks one (``missing_lengths``; with ``guided``, real-time chunking
        on, the guided denoise's too), so that no inference with it captures, whatever the state.
        Returns the log line saying what it captured, or None when nothing was missing."""
        missing = self.missing_lengths(prompt, guided)
        if not missing:
            return None
        t0, before = time.monotonic(), self.policy.graph_stats.captures
        stats = self.policy.warm_up_graphs([prompt], self.state_dims, camera_counts=(self.camera_count,),
                                           guided=guided)
        return (f"prompt {shorten(prompt, 80)}: captured {stats.captures - before} graphs for {len(missing)} of its "
                f"prompt lengths in {time.monotonic() - t0:.1f} s, before inferring with it")

    def capture_before_inferring(self, prompt: str, guided: bool,
                                 waiting: Callable[[str], None], log: Callable[[str], None],
                                 fail: Callable[[str], None]) -> bool:
        """The engine's hook before the first inference with ``prompt``: ``capture_prompt``, reported as a wait
        (``waiting``) meanwhile and its line logged. True when it captured; False when nothing was missing, or the
        capture failed (``fail``: reported; the inference then goes on and captures what it needs)."""
        if not self.missing_lengths(prompt, guided):
            return False
        waiting(f"capturing the CUDA graphs of prompt {shorten(prompt, 80)} before inferring with it")
        try:
            log(self.capture_prompt(prompt, guided))
        except Exception as e:  # noqa: BLE001 - reported; not retried for every observation
            fail(failure(f"capturing the graphs of prompt {shorten(prompt, 80)}", e))
            return False
        return True

    def values(self) -> Dict[str, float]:
        """/diagnostics values: the warm-up's time once ready; with graphs, the capture count and time, the captures
        after ready (a length the warm-up did not foresee: each one stalled an inference) and the memory (the static
        buffers; on CUDA also the pool the captures reserved); on a GPU, the kernel choices made (count, seconds:
        model/kernel_choice.py)."""
        values: Dict[str, float] = {}
        if self.seconds is not None:
            values["warm_up_s"] = self.seconds
        made = self._kernel_choices()
        if made:
            values.update(kernel_choices=float(len(made)), kernel_choice_s=sum(c.seconds for c in made))
        s = self.policy.graph_stats
        if s is not None:
            values.update(graph_captures=float(s.captures), graph_capture_s=s.capture_s,
                          graph_captures_after_ready=float(s.captures_after_ready),
                          graph_static_bytes=float(s.static_bytes))
            if s.pool_reserved_bytes is not None:
                values["graph_pool_bytes"] = float(s.pool_reserved_bytes)
        return values
