"""Kernel counts per engine stage: the aten ops a stage dispatches (any device, a TorchDispatchMode) and, on CUDA, the
GPU kernels the profiler sees.

Dispatched ops are counted at the top of the dispatcher: a fused custom op (model/fused.py) counts once, as it
launches one kernel on CUDA, whatever its CPU twin runs inside. ``launches`` leaves out the ops that launch nothing on
a GPU: views (view, split, transpose, slice, expand, ...) and allocations (empty*). Per-layer counts are differences:
a stage run with the stack's last layer removed, subtracted from the whole stage, is one full layer (the fused
stacks fold each layer's residual into the next layer's norm, so removing a layer removes exactly one layer's work).
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from typing import Callable, Dict, Iterator, List, Optional

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

_NO_LAUNCH = {"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided", "lift_fresh", "detach",
              "alias", "_local_scalar_dense"}  # _local_scalar_dense: a device-to-host read, not a kernel


@dataclasses.dataclass
class OpCount:
    ops: int  # every dispatched op
    launches: int  # ops that launch a kernel on a GPU (no views, no allocations)
    by_name: Dict[str, int]

    def to_dict(self) -> Dict[str, object]:
        return {"ops": self.ops, "launches": self.launches,
                "top": dict(Counter(self.by_name).most_common(12))}


class DispatchCounter(TorchDispatchMode):
    """Counts the ops dispatched while active."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.launches = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops[name] += 1
        if not (getattr(func, "is_view", False) or name in _NO_LAUNCH):
            self.launches += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], object]) -> OpCount:
    """The ops ``fn()`` dispatches (run once, under inference mode)."""
    counter = DispatchCounter()
    with torch.inference_mode(), counter:
        fn()
    return OpCount(ops=sum(counter.ops.values()), launches=counter.launches, by_name=dict(counter.ops))


def count_cuda_kernels(fn: Callable[[], object], device: Optional[torch.device] = None) -> int:
    """GPU kernels (and memcpy/memset) the profiler records while ``fn()`` runs once on CUDA (``device``: the GPU
    it runs on, synchronized before and after; default the current one)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    if not torch.cuda.is_available():
        raise RuntimeError("count_cuda_kernels needs a CUDA device")
    torch.cuda.synchronize(device)
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    return sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)


@contextlib.contextmanager
def without_last_layer(owner: nn.Module) -> Iterator[None]:
    """``owner.layers`` without its last layer while inside (for per-layer differences)."""
    layers = owner.layers
    if len(layers) < 2:
        raise ValueError(f"per-layer counts need at least 2 layers, {type(owner).__name__} has {len(layers)}")
    owner.layers = nn.ModuleList(list(layers)[:-1])
    try:
        yield
    finally:
        owner.layers = layers


def guided_step(model, cache, x: torch.Tensor, sc) -> Callable[[], object]:
    """rtc.guided_step (one step of real-time chunking's guided denoise: the expert forward, and backward to x_t) on
    a constant copy of ``cache``, as a call that works under inference mode."""
    from .rtc import ConstantPrefix, Guidance, guided_step as step_of

    with torch.inference_mode(False):
        prefix = ConstantPrefix.from_cache(cache)
        x = x.clone()
        guidance = Guidance(torch.zeros_like(x), torch.ones_like(x))

    def step():
        with torch.inference_mode(False):
            return step_of(model, prefix, x, sc, guidance)
    return step


def stage_counts(model, images, image_masks, tokens, token_mask, state, noise, num_steps: int,
                 cuda_kernels: bool = False) -> Dict[str, Dict[str, object]]:
    """Per stage of the fast engine: {"vision", "prefix_cache", "denoise_step", "denoise", "guided_step",
    "siglip_layer", "gemma_layer", "expert_layer", "guided_layer"} -> {"ops", "launches", "top"[,
    "cuda_kernels"]} for the model as it is set up (plain or fused). The layer rows are one layer of that stack
    (expert: inside one denoise step; guided: inside one guided step, forward and backward)."""
    with torch.inference_mode():
        tokens_ = model.embed_images(images, image_masks)
        cache = model.build_cache(tokens_, tokens, token_mask, state)
        sc = model.step_conditioning(num_steps)[0]
        x = noise.to(torch.float32)
    fns: Dict[str, Callable[[], object]] = {
        "vision": lambda: model.embed_images(images, image_masks),
        "prefix_cache": lambda: model.build_cache(tokens_, tokens, token_mask, state),
        "denoise_step": lambda: model.velocity(cache, x, sc),
        "denoise": lambda: model.denoise(cache, noise, num_steps),
        "guided_step": guided_step(model, cache, x, sc),
    }
    out: Dict[str, Dict[str, object]] = {}
    for name, fn in fns.items():
        out[name] = count_ops(fn).to_dict()
        if cuda_kernels:
            out[name]["cuda_kernels"] = count_cuda_kernels(fn, model.device)
    for name, owner, stage in (("siglip_layer", model.vision.encoder, "vision"),
                               ("gemma_layer", model.vlm, "prefix_cache"),
                               ("expert_layer", model.expert, "denoise_step"),
                               ("guided_layer", model.expert, "guided_step")):
        if len(owner.layers) < 2:
            continue
        with without_last_layer(owner):
            fewer = count_ops(fns[stage])
            fewer_kernels = count_cuda_kernels(fns[stage], model.device) if cuda_kernels else 0
        full = out[stage]
        out[name] = {"ops": full["ops"] - fewer.ops, "launches": full["launches"] - fewer.launches}
        if cuda_kernels:
            out[name]["cuda_kernels"] = full["cuda_kernels"] - fewer_kernels
    return out


def compare(model, *inputs, num_steps: int, cuda_kernels: bool = False) -> Dict[str, Dict[str, object]]:
    """stage_counts with the plain and with the fused path: {"plain": ..., "fused": ...}; the model's switch is
    restored afterwards."""
    was = model.fused
    result = {}
    try:
        for label, on in (("plain", False), ("fused", True)):
            model.use_fused(on)
            result[label] = stage_counts(model, *inputs, num_steps=num_steps, cuda_kernels=cuda_kernels)
    finally:
        model.use_fused(was)
    return result


def table(counts: Dict[str, Dict[str, Dict[str, object]]]) -> List[str]:
    """Text rows: stage, plain ops / launches, fused ops / launches (and CUDA kernels when counted)."""
    plain, fused_ = counts["plain"], counts["fused"]
    cuda = "cuda_kernels" in plain.get("vision", {})
    head = f"    {'stage':<14} {'plain ops':>10} {'launches':>9} {'fused ops':>10} {'launches':>9} {'ratio':>6}"
    rows = [head + (f" {'GPU kernels plain':>18} {'fused':>6}" if cuda else "")]
    for stage, p in plain.items():
        f = fused_[stage]
        row = (f"    {stage:<14} {p['ops']:10d} {p['launches']:9d} {f['ops']:10d} {f['launches']:9d} "
               f"{p['launches'] / max(f['launches'], 1):5.2f}x")
        if cuda:
            row += f" {p['cuda_kernels']:18d} {f['cuda_kernels']:6d}"
        rows.append(row)
    return rows
