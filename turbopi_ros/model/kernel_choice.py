"""Measured kernel choice: per op and shape, the fastest candidate that matches the library kernel, timed on the GPU
the first time the shape runs.

The split kernels' configs (split_attention.py, few_rows_matmul.py) came from sweeps on one H200
(docs/bench/split_attention_h200.txt). The best config moves with the GPU (its SMs, bandwidth and L2) and with the
shape (cameras, prompt length), and for some shapes the library kernel wins (cuDNN's SDPA over few keys). So an op
names its candidates: the library kernel (the reference) and a few configs of its own. The first call of a shape
outside a CUDA graph capture:

- runs each candidate once, and rejects one that raises, or whose output is not finite or differs from the
  reference's by more than TOLERANCE of the reference's largest magnitude (4 bfloat16 steps);
- times the others inside a CUDA graph (graph_us: what a call costs in the model's graphs, without Python's launch
  overhead), cycling through copies of the inputs named ``rotate`` that together exceed twice the L2 cache, since
  the model's layers stream their weights from memory;
- keeps the fastest. Later calls, graph captures included, launch that one. Where the measuring itself fails, the
  reference is kept.

The node's warm-up makes the first calls (cuda_graph.capture runs each graph's function eagerly first), so every
choice is made before the node reports ready. With model.cache_dir the choices are kept in kernel_choices.json there
and loaded at the next start on the same GPU, torch, Triton and kernel code: a warm start launches the same kernels,
with the same numerics, without timing them again.

Off CUDA nothing is timed: ``choose`` returns None and the op launches its default config (what the interpreter
parity tests run), unless ``time_on_cpu`` (the tests of this module).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

TOLERANCE = 2.0 ** -6  # of the reference's largest magnitude: 4 bfloat16 steps of the largest output
L2_FACTOR = 2  # rotated inputs exceed this many L2 caches
MAX_COPIES = 16
FILE_NAME = "kernel_choices.json"
FORMAT = 1
_CODE = ("split_attention.py", "few_rows_matmul.py", "kernel_choice.py")  # the kernels a saved choice names

Candidate = Callable[..., object]  # a tensor, or a tuple of tensors


def graph_us(fn: Union[Callable[[], object], Sequence[Callable[[], object]]], device: torch.device, calls: int = 50,
             reps: int = 5) -> float:
    """Microseconds a call: the best of ``reps`` replays of one CUDA graph of ``calls`` calls, cycling through
    ``fn`` when it is a sequence (on CPU: the best of ``reps`` rounds of ``calls`` calls, timed on the host)."""
    fns = list(fn) if isinstance(fn, (list, tuple)) else [fn]
    sequence = [fns[i % len(fns)] for i in range(calls)]
    if device.type != "cuda":
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            for f in sequence:
                f()
            best = min(best, time.perf_counter() - t0)
        return best * 1e6 / calls
    with torch.cuda.device(device):  # the capture on a stream of the inputs' GPU (cuda_graph.capture says why)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for f in fns + fns[:2]:  # lazy initialisations, compiles
                f()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):
            for f in sequence:
                f()
        graph.replay()
        torch.cuda.synchronize(device)
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            graph.replay()
            torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - t0)
    del graph
    return best * 1e6 / calls


def mismatch(out, ref) -> Optional[str]:
    """Why ``out`` is not the reference's result (None when it is, to TOLERANCE of ref's largest magnitude); a tuple
    of tensors is compared tensor by tensor."""
    if isinstance(ref, (tuple, list)):
        if not isinstance(out, (tuple, list)) or len(out) != len(ref):
            return f"gave {type(out).__name__}, the reference {len(ref)} tensors"
        for i, (o, r) in enumerate(zip(out, ref)):
            why = mismatch(o, r)
            if why is not None:
                return f"output {i} {why}"
        return None
    if out.shape != ref.shape or out.dtype != ref.dtype:
        return f"gave {list(out.shape)} {out.dtype}, the reference {list(ref.shape)} {ref.dtype}"
    if not bool(torch.isfinite(out).all()) and bool(torch.isfinite(ref).all()):
        return "gave a non-finite value"
    scale = float(ref.float().abs().max())
    err = float((out.float() - ref.float()).abs().max())
    if not err <= TOLERANCE * scale:
        return f"differs from the reference by {err:.3g} (allowed {TOLERANCE * scale:.3g})"
    return None


@dataclasses.dataclass
class Choice:
    """One shape's choice: the candidate kept, each timed candidate's us a call, each rejected one's reason."""

    op: str
    key: str
    chosen: str
    times_us: Dict[str, float] = dataclasses.field(default_factory=dict)
    rejected: Dict[str, str] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0  # spent choosing (compiles included)
    loaded: bool = False  # from kernel_choices.json, not timed in this process

    def line(self) -> str:
        """One line for logs and reports."""
        if self.loaded:
            return f"{self.op} [{self.key}]: {self.chosen} (loaded)"
        ref = min(self.times_us.values()) if self.times_us else float("nan")
        others = ", ".join(f"{n} {t:.1f}" for n, t in sorted(self.times_us.items(), key=lambda kv: kv[1])
                           if n != self.chosen)
        text = f"{self.op} [{self.key}]: {self.chosen} {ref:.1f} us (others, us: {others or 'none'})"
        if self.rejected:
            text += "; rejected: " + "; ".join(f"{n}: {why}" for n, why in self.rejected.items())
        return text


def _code_version() -> str:
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in _CODE:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def _identity(device: torch.device) -> Dict[str, str]:
    """What a saved file must match: the GPU, torch, Triton and the kernels' code."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:  # pragma: no cover - depends on the install
        triton_version = "none"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": name, "torch": torch.__version__, "triton": triton_version, "code": _code_version()}


class KernelChoices:
    """The process's choices (CHOICES below): ``choose`` per op and shape, ``persist`` to a file."""

    def __init__(self, time_on_cpu: bool = False, calls: int = 50, reps: int = 5):
        self.enabled = True
        self.time_on_cpu = time_on_cpu
        self.calls, self.reps = calls, reps  # graph_us's
        self._made: Dict[Tuple[str, str], Choice] = {}
        self._lock = threading.RLock()
        self._path: Optional[Path] = None
        self._identity: Optional[Dict[str, str]] = None
        self.load_note = ""  # why a file was not loaded

    def choices(self) -> List[Choice]:
        with self._lock:
            return list(self._made.values())

    def last(self, op: str) -> Optional[Choice]:
        """The latest choice made (or loaded) for ``op``."""
        made = [c for c in self.choices() if c.op == op]
        return made[-1] if made else None

    def clear(self) -> None:
        with self._lock:
            self._made.clear()

    def to_dict(self) -> Dict[str, object]:
        made = self.choices()
        return {"enabled": self.enabled, "count": len(made), "seconds": sum(c.seconds for c in made),
                "file": str(self._path or ""), "load_note": self.load_note,
                "choices": [dataclasses.asdict(c) for c in made]}

    def choose(self, op: str, key: str, candidates: Mapping[str, Candidate], args: Sequence[torch.Tensor],
               reference: str, rotate: Sequence[int] = ()) -> Optional[str]:
        """The candidate to launch for ``op`` on this shape (``key``): each candidate takes ``args``; ``reference``
        (the library kernel) is what the others must match; ``rotate``: indices of args that the timing cycles
        through copies of (weights). None where nothing is chosen: choice off, off CUDA, or inside a capture."""
        with self._lock:
            made = self._made.get((op, key))
            if made is not None and made.chosen in candidates:
                return made.chosen
            device = args[0].device
            if not self.enabled or (device.type != "cuda" and not self.time_on_cpu):
                return None
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                return None
            t0 = time.perf_counter()
            try:
                choice = self._measure(op, key, candidates, args, reference, rotate)
            except Exception as e:  # the measuring failed (not a candidate): the library kernel
                choice = Choice(op, key, reference, rejected={"(measuring)": f"{type(e).__name__}: {e}"[:300]})
            choice.seconds = time.perf_counter() - t0
            self._made[(op, key)] = choice
            self._save(device)
            return choice.chosen

    def _measure(self, op, key, candidates, args, reference, rotate) -> Choice:
        device = args[0].device
        ref = candidates[reference](*args)
        sets = _rotated(args, rotate, device)
        choice = Choice(op, key, reference)
        for name, fn in candidates.items():
            try:
                why = None if name == reference else mismatch(fn(*args), ref)
                if why is None:
                    choice.times_us[name] = graph_us([functools.partial(fn, *s) for s in sets], device, self.calls,
                                                     self.reps)
            except Exception as e:  # a config that does not compile or launch here: a rejection, not a crash
                why = f"{type(e).__name__}: {e}"[:300]
            if why is not None:
                choice.rejected[name] = why
        if choice.times_us:
            choice.chosen = min(choice.times_us, key=choice.times_us.get)
        return choice

    def persist(self, directory: str, device: torch.device) -> None:
        """Keep the choices in ``directory``/kernel_choices.json (model.cache_dir): load what it holds for this
        GPU, torch, Triton and kernel code, and rewrite it after each new choice."""
        path = Path(os.path.expanduser(directory)) / FILE_NAME
        with self._lock:
            self._path, self._identity = path, _identity(device)
            self.load_note = ""
            if not path.exists():
                return
            try:
                data = json.loads(path.read_text())
                saved = {k: data.get(k) for k in self._identity}
                if data.get("format") != FORMAT or saved != self._identity:
                    self.load_note = f"{path}: made for {saved}, not {self._identity}: choosing again"
                    return
                for c in data["choices"]:
                    self._made[(c["op"], c["key"])] = Choice(c["op"], c["key"], c["chosen"], loaded=True)
            except (OSError, ValueError, KeyError, TypeError) as e:
                self.load_note = f"{path}: unreadable ({type(e).__name__}: {e}): choosing again"

    def _save(self, device: torch.device) -> None:
        if self._path is None:
            return
        data = {"format": FORMAT, **(self._identity or _identity(device)),
                "choices": [{"op": c.op, "key": c.key, "chosen": c.chosen} for c in self._made.values()]}
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1) + "\n")
            tmp.replace(self._path)
        except OSError as e:  # a read-only cache costs the next start its timing, not this one its inference
            self.load_note = f"{self._path}: not written ({e})"


def _rotated(args: Sequence[torch.Tensor], rotate: Sequence[int], device: torch.device) -> List[Tuple]:
    """Input sets for the timing: ``args``, and copies of the ``rotate`` ones until they exceed L2_FACTOR L2 caches
    (at most MAX_COPIES sets)."""
    if not rotate or device.type != "cuda":
        return [tuple(args)]
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20)
    size = sum(args[i].numel() * args[i].element_size() for i in rotate)
    copies = max(1, min(MAX_COPIES, math.ceil(L2_FACTOR * l2 / max(size, 1))))
    sets = [tuple(args)]
    for _ in range(copies - 1):
        sets.append(tuple(a.clone() if i in rotate else a for i, a in enumerate(args)))
    return sets


CHOICES = KernelChoices()

__all__ = ["CHOICES", "Choice", "KernelChoices", "TOLERANCE", "graph_us", "mismatch"]
