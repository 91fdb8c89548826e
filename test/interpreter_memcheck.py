"""A memory check for the Triton kernels under Triton's interpreter (TRITON_INTERPRET=1), as compute-sanitizer's
memcheck is on a GPU: every address a kernel loads or stores (the lanes its mask lets through, as on a GPU) must be
an element of one of the tensors it was launched with.

Why: on a GPU, a load past a tensor's end reads whatever lies there, and one past its allocation faults and loses the
CUDA context for the rest of the process (on a lent GPU, the rest of the report). A store there overwrites another
tensor. The interpreter reads and writes host memory and says nothing; a value read from beside a tensor shows in the
parity checks only where it changes the output. The check is exact: a load in the gap between the rows of a strided
view (a K/V slice of a deeper cache) is outside too.

``memcheck()`` watches every kernel that ``fused.register_kernels`` knows (``fused.kernels_replaced``) and the
interpreter's loads and stores; ``fused_interpreter_checks.py`` runs all its checks inside it."""
import collections
import contextlib
import dataclasses
import inspect
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from triton.runtime import interpreter

from turbopi_ros.model import fused

SHOWN_PER_KERNEL = 3  # outside accesses described per kernel and kind (load / store); the rest are counted


def element_addresses(t: torch.Tensor) -> np.ndarray:
    """The byte address of each element of ``t`` (its shape, strides and storage offset), as uint64."""
    offsets = np.zeros((), np.int64)
    for size, stride in zip(t.shape, t.stride()):
        offsets = np.add.outer(offsets, np.arange(size, dtype=np.int64) * stride)
    return (np.int64(t.data_ptr()) + offsets.ravel() * t.element_size()).astype(np.uint64)


@dataclasses.dataclass
class Outside:
    """Lanes of one load or store that fell on no element of the kernel's tensor arguments."""
    kernel: str
    access: str  # "load" or "store"
    lanes: int
    where: str  # the first such address, placed against the nearest argument

    def line(self) -> str:
        return f"{self.kernel}: {self.access} of {self.lanes} lane(s) outside its tensors, first {self.where}"


@dataclasses.dataclass
class Report:
    launches: Dict[str, int] = dataclasses.field(default_factory=collections.Counter)
    lanes: Dict[str, int] = dataclasses.field(default_factory=collections.Counter)  # loads and stores checked
    outside: List[Outside] = dataclasses.field(default_factory=list)
    outside_lanes: Dict[str, int] = dataclasses.field(default_factory=collections.Counter)
    unwatched: int = 0  # loads and stores of a kernel launched past the watch (none should be)

    def summary(self) -> str:
        return (f"memcheck: {sum(self.launches.values())} launches of {len(self.launches)} kernels, "
                f"{sum(self.lanes.values())} loaded or stored lanes, {sum(self.outside_lanes.values())} outside their "
                f"kernel's tensors, {self.unwatched} loads or stores of unwatched launches")


@dataclasses.dataclass
class _Launch:
    """A launch's tensors: the contiguous ones as (first address, end, element size), the others by the sorted
    addresses of their elements (a full-size weight has millions: a range is cheaper)."""
    kernel: str
    arguments: List[Tuple[str, torch.Tensor]]
    ranges: List[Tuple[int, int, int]]
    strided: np.ndarray

    @classmethod
    def of(cls, kernel: str, arguments: List[Tuple[str, torch.Tensor]]) -> "_Launch":
        ranges, spans = [], []
        for _, t in arguments:
            if not t.numel():
                continue
            if t.is_contiguous():
                ranges.append((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size(), t.element_size()))
            else:
                spans.append(element_addresses(t))
        return cls(kernel, arguments, ranges, np.unique(np.concatenate(spans)) if spans else np.empty(0, np.uint64))

    def outside(self, touched: np.ndarray) -> np.ndarray:
        """The addresses of ``touched`` (uint64) on no element of the launch's tensors."""
        inside = np.zeros(touched.shape, bool)
        for lo, hi, size in self.ranges:
            inside |= (touched >= lo) & (touched < hi) & ((touched - np.uint64(lo)) % np.uint64(size) == 0)
        rest = touched[~inside]
        if rest.size and self.strided.size:
            at = np.minimum(np.searchsorted(self.strided, rest), self.strided.size - 1)
            rest = rest[self.strided[at] != rest]
        return rest


class _Watch:
    def __init__(self, report: Report):
        self.report, self.current = report, None
        self.shown: Dict[Tuple[str, str], int] = collections.Counter()

    def check(self, access: str, ptrs, mask) -> None:
        addresses = np.asarray(ptrs.data).ravel()
        lanes = np.broadcast_to(np.asarray(mask.data, dtype=bool), np.shape(ptrs.data)).ravel()
        touched = addresses[lanes].astype(np.uint64)
        launch = self.current
        if launch is None:
            self.report.unwatched += 1
            return
        self.report.lanes[launch.kernel] += touched.size
        bad = launch.outside(touched)
        if not bad.size:
            return
        self.report.outside_lanes[launch.kernel] += bad.size
        key = (launch.kernel, access)
        if self.shown[key] < SHOWN_PER_KERNEL:
            self.shown[key] += 1
            self.report.outside.append(Outside(launch.kernel, access, int(bad.size), _place(int(bad[0]), launch)))


def _place(address: int, launch: _Launch) -> str:
    """Where ``address`` lies against the nearest tensor argument, in that argument's elements."""
    best: Optional[Tuple[int, str]] = None
    for name, t in launch.arguments:
        if t.numel() == 0:
            continue
        size = t.element_size()
        if t.is_contiguous():
            lo, hi = t.data_ptr(), t.data_ptr() + t.numel() * size
        else:
            span = element_addresses(t)
            lo, hi = int(span.min()), int(span.max()) + size
        desc = f"'{name}' {tuple(t.shape)} {str(t.dtype).replace('torch.', '')} strides {tuple(t.stride())}"
        if address < lo:
            distance, text = lo - address, f"{(lo - address) / size:g} element(s) before {desc}"
        elif address >= hi:
            distance, text = address - hi + size, f"{(address - hi) / size + 1:g} element(s) past the end of {desc}"
        else:
            distance, text = 0, f"inside the span of {desc} but on none of its elements (offset {address - lo} B)"
        if best is None or distance < best[0]:
            best = (distance, text)
    return f"address {address:#x}: " + (best[1] if best else "the launch has no tensor arguments")


class _Watched:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` names the tensors the launch may touch, then runs
    it."""

    def __init__(self, name: str, kernel, watch: _Watch, report: Report):
        self.name, self.kernel, self.watch, self.report = name, kernel, watch, report
        self.parameters = list(inspect.signature(kernel.fn).parameters)

    def __getitem__(self, grid):
        run = self.kernel[grid]

        def launch(*args, **kwargs):
            named = list(zip(self.parameters, args)) + list(kwargs.items())
            tensors = [(name, a) for name, a in named if isinstance(a, torch.Tensor)]
            if self.watch.current is not None:
                raise RuntimeError(f"{self.name} launched while {self.watch.current.kernel} runs")
            self.watch.current = _Launch.of(self.name, tensors)
            self.report.launches[self.name] += 1
            try:
                return run(*args, **kwargs)
            finally:
                self.watch.current = None
        return launch

    def __getattr__(self, attribute):
        return getattr(self.kernel, attribute)


@contextlib.contextmanager
def memcheck(extra: Sequence[Tuple[dict, Sequence[str]]] = ()) -> Iterator[Report]:
    """Within the block, every launch of a registered kernel (and of ``extra``'s: (a module's globals, kernel names))
    is watched: its loads and stores are checked against its tensor arguments. Yields the Report, filled as it goes."""
    from turbopi_ros.model import few_rows_matmul, fused_grad, split_attention  # noqa: F401  (their kernels register)

    report = Report()
    watch = _Watch(report)
    builder = interpreter.InterpreterBuilder
    load, store = builder.create_masked_load, builder.create_masked_store

    def checked_load(self, ptrs, mask, other, *rest):
        watch.check("load", ptrs, mask)
        return load(self, ptrs, mask, other, *rest)

    def checked_store(self, ptrs, value, mask, *rest):
        watch.check("store", ptrs, mask)
        return store(self, ptrs, value, mask, *rest)

    builder.create_masked_load, builder.create_masked_store = checked_load, checked_store
    try:
        with fused.kernels_replaced(lambda name, kernel: _Watched(name, kernel, watch, report), extra_homes=extra):
            yield report
    finally:
        builder.create_masked_load, builder.create_masked_store = load, store
