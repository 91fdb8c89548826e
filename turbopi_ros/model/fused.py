"""Fused layer kernels (Triton, CUDA only) with plain-torch twins, and the fused layer stacks that use them.

Each fused op is one ``torch.library`` custom op (one dispatched op, one kernel launch on CUDA):

    turbopi::rms_norm        Gemma RMSNorm ((1 + w), fp32 statistics) or pi0.5's adaRMS (scale, shift), no residual
    turbopi::add_rms_norm    x' = x + branch [* gate], then the norm of x'            -> (x', normed x')
    turbopi::gelu_gate       the fused gate/up output [..., 2F] (gate_proj's F columns, then up_proj's)
                             -> gelu_tanh(gate) * up                                 [..., F]
    turbopi::qkv_rope        the fused QKV output split into heads, rotary on q and k, k and v written into the
                             K/V cache at a token offset                              -> rotated q
    turbopi::add_layer_norm  SigLIP: x' = x + branch, then LayerNorm(x')              -> (x', normed x')
    turbopi::qkv_rope_heads  qkv_rope into new K/V tensors instead of the cache: what the guided (RTC) denoise
                             differentiates (fused_grad.py holds the backwards of it and of the norms and the gate)

On CUDA (with Triton installed) the op runs its Triton kernel; elsewhere it runs its twin, the plain-torch math of
gemma.py / siglip.py op for op. Both round where the plain path rounds (the residual sum, the gated branch, the
rotary products) so bfloat16 results stay close to the plain path; in float32 the only difference is the order of the
row reductions. ``use_triton_on_cpu(True)`` makes the ops run their kernels on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1`` set before Triton is imported): that is how the tests check every kernel without a GPU.

The stacks restructure a layer so that each residual add is fused with the norm that follows it (across layers: the
MLP's residual with the next layer's input norm, the last one with the final norm), rotary and the cache write are the
QKV epilogue, gate_proj and up_proj are one matmul (gemma.GemmaMLP.gate_up) whose output the MLP's gate reads as one
tensor: a Gemma layer is 9 dispatched ops (qkv, qkv_rope, attention, o_proj, add_rms_norm, gate_up, gelu_gate,
down_proj, add_rms_norm), a SigLIP layer 8 (counted: docs/fused_kernels.md). On a GPU an expert layer of the denoise is
10 kernels: its attention is split_attention.py's two (a Gemma prefix layer's is one, SDPA's).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .gemma import RMS_EPS, AttentionKernel, GemmaLayer, Modulation, RMSNorm, maskless_attention, sdpa

try:  # Triton is optional: without it (a robot's CPU, a Jetson without it) every op runs its twin
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

_TRITON_ON_CPU = False
_RECORDING = False
KERNELS = ("_rms_kernel", "_gelu_gate_kernel", "_qkv_rope_kernel", "_layer_norm_kernel")  # this module's Triton kernels
# Every launch of every kernel (this module's, fused_grad's, few_rows_matmul's, split_attention's) passes these
# compile options (in launch_options()). enable_fp_fusion: a multiply then an add may compile to one FMA. Triton up
# to 3.9 does that by default, and every GPU figure in docs/bench/ was measured with it; 3.10 turns the default off,
# which would change the code and the rounding of every elementwise kernel. Inductor pins the option for its own
# kernels the same way.
LAUNCH_OPTIONS: Dict[str, Any] = {"enable_fp_fusion": True}
# Programmatic dependent launch (use_pdl; off by default): every kernel takes a PDL constexpr, and with it on, its
# launch lets it start while the kernel before it in the stream still runs (Triton's launch_pdl).
_PDL = False
PDL_MIN_CAPABILITY = (9, 0)  # griddepcontrol: Hopper and newer (H100/H200, Blackwell, Jetson Thor)


def triton_available() -> bool:
    return triton is not None


def use_triton_on_cpu(enable: bool) -> None:
    """Run the Triton kernels on CPU tensors too. Only under Triton's interpreter (TRITON_INTERPRET=1): for tests."""
    global _TRITON_ON_CPU
    if enable and (triton is None or os.environ.get("TRITON_INTERPRET") != "1"):
        raise RuntimeError("Triton kernels on CPU tensors need Triton installed and TRITON_INTERPRET=1 set before "
                           f"Triton is imported (triton: {'installed' if triton else 'missing'}, TRITON_INTERPRET="
                           f"{os.environ.get('TRITON_INTERPRET')!r})")
    _TRITON_ON_CPU = bool(enable)


def pdl_unsupported(device) -> Optional[str]:
    """None where the kernels can be launched with programmatic dependent launch on ``device``, else why not."""
    device = torch.device(device)
    if triton is None:
        return "Triton is not installed (the fused ops run their torch twins)"
    if device.type != "cuda":
        return f"it needs a CUDA GPU, the model runs on {device}"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "Triton's interpreter (TRITON_INTERPRET=1) launches nothing on a GPU"
    from triton.backends.nvidia.compiler import CUDAOptions
    if not hasattr(tl.extra.cuda, "gdc_wait") or "launch_pdl" not in CUDAOptions.__dataclass_fields__:
        return f"Triton {triton.__version__} has no programmatic dependent launch (gdc_wait, launch_pdl)"
    capability = torch.cuda.get_device_capability(device)
    if capability < PDL_MIN_CAPABILITY:
        return (f"{torch.cuda.get_device_name(device)} has compute capability {capability[0]}.{capability[1]}; it "
                f"needs {PDL_MIN_CAPABILITY[0]}.{PDL_MIN_CAPABILITY[1]} or newer (Hopper, Blackwell, Jetson Thor)")
    return None


def use_pdl(enable: bool, device=None) -> None:
    """Launch every Triton kernel of the fused ops (this process's) with programmatic dependent launch, or not.

    With it on, a kernel may start while the kernel before it in the stream is still running, and waits inside
    (``_wait_for_inputs``, its first statement) until that kernel has finished and its writes are visible; then it
    lets the kernel after it start the same way. What it saves is the gap between dependent kernels (the next
    kernel's launch and start-up overlap the end of the one before), which a CUDA graph keeps: the fused denoise is
    about 1,000 such small kernels. The values are the same bit for bit: nothing is loaded or stored before the
    wait. A CUDA graph keeps the launches of its capture: capture with the setting it should replay with. Raises a
    RuntimeError naming what is missing where ``device`` cannot (pdl_unsupported)."""
    global _PDL
    if enable:
        why = pdl_unsupported(device if device is not None else "cpu")
        if why is not None:
            raise RuntimeError(f"programmatic dependent launch (model.pdl) is not available: {why}")
    _PDL = bool(enable)


def pdl_enabled() -> bool:
    return _PDL


@contextlib.contextmanager
def pdl_launches(enable: bool, device=None) -> Iterator[None]:
    """use_pdl(enable, device) within the block, the setting before it restored after (the benches' variants)."""
    global _PDL
    was = _PDL
    use_pdl(enable, device)
    try:
        yield
    finally:
        _PDL = was


def launch_options(pdl: Optional[bool] = None) -> Dict[str, Any]:
    """What every kernel launch passes besides its own arguments: LAUNCH_OPTIONS, the kernels' PDL constexpr and, with
    programmatic dependent launch (``pdl``; None: as use_pdl set it), Triton's launch_pdl."""
    return _PDL_OPTIONS if (_PDL if pdl is None else pdl) else _PLAIN_OPTIONS


_PLAIN_OPTIONS: Dict[str, Any] = {**LAUNCH_OPTIONS, "PDL": False}
_PDL_OPTIONS: Dict[str, Any] = {**LAUNCH_OPTIONS, "PDL": True, "launch_pdl": True}


def kernels_for(x: torch.Tensor) -> bool:
    """Whether an op on ``x`` runs its Triton kernel (CUDA; CPU under the interpreter; while recording)."""
    return triton is not None and (x.is_cuda or _RECORDING or (_TRITON_ON_CPU and x.device.type == "cpu"))


@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel launch as an op prepared it: the Triton kernel (a JITFunction), its grid and its arguments."""
    name: str
    kernel: Any
    grid: Tuple[int, ...]
    args: Tuple[Any, ...]
    kwargs: Dict[str, Any]


class _Recorder:
    """Stands in for a kernel while recording: ``kernel[grid](*args, **kwargs)`` appends a Launch."""

    def __init__(self, name: str, kernel, log: List[Launch]):
        self.name, self.kernel, self.log = name, kernel, log

    def __getitem__(self, grid):
        def record(*args, **kwargs):
            self.log.append(Launch(self.name, self.kernel, tuple(grid), args, dict(kwargs)))
        return record


@contextlib.contextmanager
def recording_launches() -> Iterator[List[Launch]]:
    """The ops take their Triton path on any device and record each launch instead of making it (their outputs are
    left unwritten, so every value computed inside is meaningless: only the shapes, dtypes and strides are real).
    Yields the list of Launches. For compiling the kernels for GPU targets on a machine without a GPU
    (tools/kernel_targets.py); not under Triton's interpreter, whose kernels cannot be compiled."""
    global _RECORDING
    if triton is None or os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("recording the kernel launches needs Triton installed and TRITON_INTERPRET unset (triton: "
                           f"{'installed' if triton else 'missing'}, TRITON_INTERPRET="
                           f"{os.environ.get('TRITON_INTERPRET')!r})")
    if _RECORDING:
        raise RuntimeError("recording_launches is already active")
    log: List[Launch] = []
    with kernels_replaced(lambda name, kernel: _Recorder(name, kernel, log)):
        _RECORDING = True
        try:
            yield log
        finally:
            _RECORDING = False


@contextlib.contextmanager
def kernels_replaced(make: Callable[[str, Any], Any],
                     extra_homes: Sequence[Tuple[Dict[str, Any], Sequence[str]]] = ()) -> Iterator[None]:
    """Within the block, each registered Triton kernel's name, in the module that launches it, stands for
    ``make(name, kernel)``: an op's ``kernel[grid](*args, **kwargs)`` goes through what make returned; so do those of
    ``extra_homes`` ((a module's globals, kernel names), unregistered: a test's own kernels). How recording_launches
    records the launches, and how the tests watch every load and store of the kernels under Triton's interpreter
    (test/interpreter_memcheck.py)."""
    homes = [(namespace, {name: namespace[name] for name in names})
             for namespace, names in [*_KERNEL_HOMES, *extra_homes]]
    for namespace, kernels in homes:
        namespace.update({name: make(name, k) for name, k in kernels.items()})
    try:
        yield
    finally:
        for namespace, kernels in homes:
            namespace.update(kernels)


# (a module's globals, the names of its Triton kernels): this module's, and fused_grad.py's backwards
_KERNEL_HOMES: List[Tuple[Dict[str, Any], Tuple[str, ...]]] = []


def register_kernels(namespace: Dict[str, Any], names: Sequence[str]) -> None:
    """Another module's Triton kernels join recording_launches and all_kernels (pass its globals())."""
    _KERNEL_HOMES.append((namespace, tuple(names)))


def all_kernels() -> Tuple[str, ...]:
    """The names of every Triton kernel the fused ops launch: this module's, and the backwards once fused_grad.py is
    imported (rtc.py imports it)."""
    return tuple(name for _, names in _KERNEL_HOMES for name in names)


register_kernels(globals(), KERNELS)


def backend(device) -> str:
    """Which implementation the fused ops run on ``device``: "triton" or "torch twin"."""
    device = torch.device(device)
    use = triton is not None and (device.type == "cuda" or (_TRITON_ON_CPU and device.type == "cpu"))
    return "triton" if use else "torch twin"


def kernel_failure(error: BaseException) -> Optional[str]:
    """One line for an error that is Triton's, or was raised from one (a fused kernel that did not compile or launch
    on this GPU: a Triton too old for it, a kernel that needs more of it than it has): what failed, in which Triton,
    and what to do; None for any other error. Triton's own text names its temporary files (a PTX file, the
    ``Repro command``); they are left out, so a failure that repeats reads the same each time (problems.kind_of)."""
    if triton is None:
        return None
    seen = set()
    while error is not None and id(error) not in seen:
        if type(error).__module__.split(".")[0] == "triton":  # its errors' classes move between Triton versions
            text = " ".join(str(error).split("Repro command:")[0].split())
            text = re.sub(r"\S*/tmp\w*\S*", "<file>", text)[:400]
            try:  # the GPU's compute capability, e.g. 110 (a Jetson Thor)
                cc = "".join(map(str, torch.cuda.get_device_capability()))
            except Exception:  # noqa: BLE001 - no CUDA, or a broken context: a placeholder in the hint
                cc = "<compute capability>"
            return (f"{type(error).__name__} in Triton {triton.__version__}: {text} (a fused kernel of model.fused "
                    "did not build or run on this GPU: set model.fused: false, or install a Triton that builds for "
                    f"it; turbopi-kernel-targets --targets {cc} lists which kernels compile for it)")
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


# --- twins: the plain path's math, op for op ---------------------------------------------------------------------
def rms_norm_twin(x: torch.Tensor, weight: Optional[torch.Tensor], scale: Optional[torch.Tensor],
                  shift: Optional[torch.Tensor]) -> torch.Tensor:
    """gemma.RMSNorm.forward: ``weight`` for a plain norm, ``scale``/``shift`` [B, 1, W] for adaRMS."""
    dtype = x.dtype
    var = torch.mean(torch.square(x.float()), dim=-1, keepdim=True)
    normed = x * torch.rsqrt(var + RMS_EPS)
    if scale is None:
        return (normed * (1.0 + weight.float())).to(dtype)
    return (normed * (1 + scale.float()) + shift.float()).to(dtype)


def residual_twin(x: torch.Tensor, branch: torch.Tensor, gate: Optional[torch.Tensor]) -> torch.Tensor:
    """gemma.gated_residual (and SigLIP's x + branch)."""
    return x + branch if gate is None else x + branch * gate.to(x.dtype)


def gelu_gate_twin(gate_up: torch.Tensor) -> torch.Tensor:
    """gemma.GemmaMLP's gate: gate_up [..., 2F] (gate, then up) -> gelu_tanh(gate) * up [..., F]."""
    gate, up = torch.split(gate_up, gate_up.shape[-1] // 2, dim=-1)
    return F.gelu(gate, approximate="tanh") * up


def rope_twin(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def qkv_rope_twin(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                  start: int, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """qkv [B, L, (H + 2 KV) D] -> rotated q [B, L, H, D]; rotated k and v go to keys/values [B, KV, Lc, D] at
    tokens start .. start + L (what GemmaAttention.project, apply_rope and the cache writes of pi0.py do)."""
    B, L, _ = qkv.shape
    D = qkv.shape[-1] // (num_heads + 2 * num_kv_heads)
    q, k, v = torch.split(qkv, [num_heads * D, num_kv_heads * D, num_kv_heads * D], dim=-1)
    q = rope_twin(q.view(B, L, num_heads, D), cos, sin)
    keys[:, :, start:start + L] = rope_twin(k.view(B, L, num_kv_heads, D), cos, sin).transpose(1, 2)
    values[:, :, start:start + L] = v.view(B, L, num_kv_heads, D).transpose(1, 2)
    return q


def layer_norm_twin(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


# --- Triton kernels ----------------------------------------------------------------------------------------------
if triton is not None:
    @triton.jit
    def _wait_for_inputs(PDL: tl.constexpr):
        """Every kernel's first statement. With programmatic dependent launch (PDL: use_pdl) a kernel may start
        before the kernel ahead of it in the stream has finished: wait here until it has and its writes are visible
        (before any load of what another kernel wrote, and any store), then let the kernel after this one start,
        which waits the same way. Without PDL: nothing."""
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()

    @triton.jit
    def _round(v, like_ptr):
        """v (float32) rounded to the element type of ``like_ptr`` and back: where the plain path stores a tensor."""
        return v.to(like_ptr.dtype.element_ty).to(tl.float32)

    @triton.jit
    def _rms_kernel(x_ptr, br_ptr, gate_ptr, w_ptr, scale_ptr, shift_ptr, xo_ptr, y_ptr,
                    W, L, stride_mod, stride_gate, eps, ROWS, PARTS,
                    HAS_BRANCH: tl.constexpr, HAS_GATE: tl.constexpr, ADAPTIVE: tl.constexpr, BLOCK: tl.constexpr,
                    SUM_PARTS: tl.constexpr, PDL: tl.constexpr):
        """SUM_PARTS: the branch is a matmul's PARTS float32 partial sums [PARTS, ROWS, W] (few_rows_matmul's K
        shares), added in order and rounded once to x's dtype, as its sum kernel would store them."""
        _wait_for_inputs(PDL)
        row = tl.program_id(0)
        b = row // L
        cols = tl.arange(0, BLOCK)
        m = cols < W
        x = tl.load(x_ptr + row * W + cols, mask=m, other=0.0).to(tl.float32)
        if HAS_BRANCH:
            if SUM_PARTS:
                br = tl.zeros([BLOCK], tl.float32)
                for s in range(0, PARTS):
                    br += tl.load(br_ptr + (s * ROWS + row) * W + cols, mask=m, other=0.0)
                br = _round(br, x_ptr)
            else:
                br = tl.load(br_ptr + row * W + cols, mask=m, other=0.0).to(tl.float32)
            if HAS_GATE:
                g = tl.load(gate_ptr + b * stride_gate + cols, mask=m, other=0.0).to(tl.float32)
                br = _round(br * g, x_ptr)
            x = _round(x + br, x_ptr)
            tl.store(xo_ptr + row * W + cols, x, mask=m)
        var = tl.sum(x * x, axis=0) / W
        normed = x * (1.0 / tl.sqrt(var + eps))
        if ADAPTIVE:
            sc = tl.load(scale_ptr + b * stride_mod + cols, mask=m, other=0.0).to(tl.float32)
            sh = tl.load(shift_ptr + b * stride_mod + cols, mask=m, other=0.0).to(tl.float32)
            y = normed * (1.0 + sc) + sh
        else:
            w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
            y = normed * (1.0 + w)
        tl.store(y_ptr + row * W + cols, y, mask=m)

    @triton.jit
    def _gelu_gate_kernel(gu_ptr, o_ptr, N, BLOCK: tl.constexpr, PDL: tl.constexpr):
        """Row ``program_id(0)`` of gate_up [rows, 2N] (gate at row*2N, up at row*2N + N) -> out [rows, N]; columns
        ``program_id(1) * BLOCK ..``."""
        _wait_for_inputs(PDL)
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = cols < N
        src = gu_ptr + row * (2 * N)
        g = tl.load(src + cols, mask=m, other=0.0).to(tl.float32)
        u = tl.load(src + N + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(o_ptr + row * N + cols, _gelu_tanh(g, o_ptr) * u, mask=m)

    @triton.jit
    def _gelu_tanh(g, like_ptr):
        """gelu_tanh(g) of float32 g, rounded to ``like_ptr``'s element type (where the plain path stores it); the
        gate is this times up, rounded once more (_gelu_gate_kernel's store, few_rows_matmul's GATED prologue)."""
        z = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        z = tl.minimum(tl.maximum(z, -20.0), 20.0)  # tanh is +-1 in float32 beyond |z| = 9; keeps exp finite
        tanh = 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)
        return _round(0.5 * g * (1.0 + tanh), like_ptr)

    @triton.jit
    def _qkv_rope_kernel(qkv_ptr, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr,
                         L, start, stride_cb, stride_cl, stride_kb, stride_kh, stride_kl,
                         stride_vb, stride_vh, stride_vl, ROWS, PARTS,
                         H: tl.constexpr, KV: tl.constexpr, D: tl.constexpr, HALF_BLOCK: tl.constexpr,
                         SUM_PARTS: tl.constexpr, PDL: tl.constexpr):
        """SUM_PARTS: qkv is the QKV matmul's PARTS float32 partial sums [PARTS, ROWS, (H + 2 KV) D]
        (few_rows_matmul's K shares), added in order and rounded once to q's dtype, as its sum kernel would store
        them."""
        _wait_for_inputs(PDL)
        token = tl.program_id(0)  # b * L + l
        head = tl.program_id(1)  # 0 .. H + 2 KV
        b = token // L
        l_ = token % L
        half = D // 2
        cols = tl.arange(0, HALF_BLOCK)
        m = cols < half
        src = qkv_ptr + token * (H + 2 * KV) * D + head * D
        if SUM_PARTS:
            x1 = tl.zeros([HALF_BLOCK], tl.float32)
            x2 = tl.zeros([HALF_BLOCK], tl.float32)
            for s in range(0, PARTS):
                x1 += tl.load(src + s * ROWS * (H + 2 * KV) * D + cols, mask=m, other=0.0)
                x2 += tl.load(src + s * ROWS * (H + 2 * KV) * D + half + cols, mask=m, other=0.0)
            x1 = _round(x1, q_ptr)
            x2 = _round(x2, q_ptr)
        else:
            x1 = tl.load(src + cols, mask=m, other=0.0).to(tl.float32)
            x2 = tl.load(src + half + cols, mask=m, other=0.0).to(tl.float32)
        if head < H + KV:
            cbase = b * stride_cb + l_ * stride_cl
            c1 = tl.load(cos_ptr + cbase + cols, mask=m, other=0.0).to(tl.float32)
            c2 = tl.load(cos_ptr + cbase + half + cols, mask=m, other=0.0).to(tl.float32)
            s1 = tl.load(sin_ptr + cbase + cols, mask=m, other=0.0).to(tl.float32)
            s2 = tl.load(sin_ptr + cbase + half + cols, mask=m, other=0.0).to(tl.float32)
            # x * cos + rotate_half(x) * sin with rotate_half(x) = [-x2, x1], rounded as the plain path rounds
            o1 = _round(x1 * c1, q_ptr) + _round(-x2 * s1, q_ptr)
            o2 = _round(x2 * c2, q_ptr) + _round(x1 * s2, q_ptr)
            if head < H:
                dst = q_ptr + (token * H + head) * D
            else:
                dst = k_ptr + b * stride_kb + (head - H) * stride_kh + (start + l_) * stride_kl
            tl.store(dst + cols, o1, mask=m)
            tl.store(dst + half + cols, o2, mask=m)
        else:
            dst = v_ptr + b * stride_vb + (head - H - KV) * stride_vh + (start + l_) * stride_vl
            tl.store(dst + cols, x1, mask=m)
            tl.store(dst + half + cols, x2, mask=m)

    @triton.jit
    def _layer_norm_kernel(x_ptr, br_ptr, w_ptr, b_ptr, xo_ptr, y_ptr, W, eps,
                           HAS_BRANCH: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
        _wait_for_inputs(PDL)
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        m = cols < W
        x = tl.load(x_ptr + row * W + cols, mask=m, other=0.0).to(tl.float32)
        if HAS_BRANCH:
            br = tl.load(br_ptr + row * W + cols, mask=m, other=0.0).to(tl.float32)
            x = _round(x + br, x_ptr)
            tl.store(xo_ptr + row * W + cols, x, mask=m)
        mean = tl.sum(x, axis=0) / W
        d = tl.where(m, x - mean, 0.0)
        var = tl.sum(d * d, axis=0) / W
        w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
        bb = tl.load(b_ptr + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * W + cols, d * (1.0 / tl.sqrt(var + eps)) * w + bb, mask=m)


@functools.lru_cache(maxsize=8)
def sm_count(device_index: int) -> int:
    """The SMs of CUDA device ``device_index``: the split kernels (split_attention, few_rows_matmul) size their grids
    by it."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def split_in_steps(n: int, parts: int, step: int) -> Tuple[int, int]:
    """n items in about ``parts`` shares of whole ``step``s, for split kernels: (items a share, shares), none left
    empty by the rounding."""
    per_part = -(-(-(-n // parts)) // step) * step
    return per_part, -(-n // per_part)


def _mod_stride(t: Optional[torch.Tensor], W: int) -> int:
    """Batch stride of a [B, 1, W] modulation tensor (a chunk of [B, 1, 3W]: its last dim must be unit-stride)."""
    if t is None:
        return 0
    if t.stride(-1) != 1 or t.shape[-1] != W:
        raise ValueError(f"modulation tensors must be [B, 1, {W}] with unit stride in the last dim, got "
                         f"{list(t.shape)} strides {t.stride()}")
    return t.stride(0)


def _rms_triton(x, branch, gate, weight, scale, shift, parts: bool = False):
    """The norm kernel; ``parts``: ``branch`` is a matmul's float32 partial sums [S, rows, W] (add_rms_norm_parts)."""
    W = x.shape[-1]
    x = x.contiguous()
    L = x.shape[1] if x.ndim == 3 else 1
    rows = x.numel() // W
    if parts and (branch.dtype != torch.float32 or branch.dim() != 3 or tuple(branch.shape[1:]) != (rows, W)):
        raise ValueError(f"add_rms_norm_parts: parts must be float32 [S, {rows}, {W}], got {branch.dtype} "
                         f"{list(branch.shape)}")
    y = torch.empty_like(x)
    xo = torch.empty_like(x) if branch is not None else y
    br = branch.contiguous() if branch is not None else x
    _rms_kernel[(rows,)](x, br, gate if gate is not None else x, weight if weight is not None else x,
                         scale if scale is not None else x, shift if shift is not None else x, xo, y,
                         W, L, _mod_stride(scale, W), _mod_stride(gate, W), RMS_EPS, rows,
                         branch.shape[0] if parts else 1,
                         HAS_BRANCH=branch is not None, HAS_GATE=gate is not None, ADAPTIVE=scale is not None,
                         BLOCK=_pow2(W), SUM_PARTS=parts, **launch_options())
    return xo, y


def add_rms_norm_parts(x: torch.Tensor, parts: torch.Tensor, gate: Optional[torch.Tensor],
                       weight: Optional[torch.Tensor], scale: Optional[torch.Tensor],
                       shift: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """add_rms_norm with the branch given as a matmul's float32 partial sums parts [S, rows, W]: summed in order and
    rounded to x's dtype in the norm's kernel, which is what the matmul's sum kernel would have stored (one launch
    less). The Triton kernel only (few_rows_matmul's fused configs call it where the kernels run)."""
    return _rms_triton(x, parts, gate, weight, scale, shift, parts=True)


# --- the ops -------------------------------------------------------------------------------------------------------
@torch.library.custom_op("turbopi::rms_norm", mutates_args=())
def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor], scale: Optional[torch.Tensor],
             shift: Optional[torch.Tensor]) -> torch.Tensor:
    """RMSNorm (``weight``) or adaRMS (``scale``, ``shift``) of x [B, L, W]."""
    if kernels_for(x):
        return _rms_triton(x, None, None, weight, scale, shift)[1]
    return rms_norm_twin(x, weight, scale, shift)


@rms_norm.register_fake
def _(x, weight, scale, shift):
    return torch.empty_like(x)


@torch.library.custom_op("turbopi::add_rms_norm", mutates_args=())
def add_rms_norm(x: torch.Tensor, branch: torch.Tensor, gate: Optional[torch.Tensor], weight: Optional[torch.Tensor],
                 scale: Optional[torch.Tensor], shift: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + branch [* gate], its RMSNorm / adaRMS)."""
    if kernels_for(x):
        return _rms_triton(x, branch, gate, weight, scale, shift)
    x = residual_twin(x, branch, gate)
    return x, rms_norm_twin(x, weight, scale, shift)


@add_rms_norm.register_fake
def _(x, branch, gate, weight, scale, shift):
    return torch.empty_like(x), torch.empty_like(x)


def _gate_half(gate_up: torch.Tensor) -> int:
    if gate_up.ndim == 0 or gate_up.shape[-1] % 2:
        raise ValueError(f"gelu_gate: gate_up must be [..., 2F] (gate, then up), got {list(gate_up.shape)}")
    return gate_up.shape[-1] // 2


@torch.library.custom_op("turbopi::gelu_gate", mutates_args=())
def gelu_gate(gate_up: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(gate) * up of the fused gate/up projection's output [..., 2F] (gate first) -> [..., F]."""
    n = _gate_half(gate_up)
    if kernels_for(gate_up):
        gu = gate_up.contiguous()
        out = gu.new_empty((*gu.shape[:-1], n))
        rows = gu.numel() // (2 * n) if n else 0
        block = min(1024, _pow2(n))
        if rows:
            _gelu_gate_kernel[(rows, triton.cdiv(n, block))](gu, out, n, BLOCK=block, **launch_options())
        return out
    return gelu_gate_twin(gate_up)


@gelu_gate.register_fake
def _(gate_up):
    return gate_up.new_empty((*gate_up.shape[:-1], _gate_half(gate_up)))


@torch.library.custom_op("turbopi::qkv_rope", mutates_args=("keys", "values"))
def qkv_rope(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
             start: int, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """See qkv_rope_twin. cos/sin [B, L, 1, D]; keys/values [B, KV, Lc, D] (any strides, unit in the last dim)."""
    return _qkv_rope(qkv, cos, sin, keys, values, start, num_heads, num_kv_heads)


def _qkv_rope(qkv, cos, sin, keys, values, start, num_heads, num_kv_heads):
    if kernels_for(qkv):
        return _qkv_rope_triton(qkv, cos, sin, keys, values, start, num_heads, num_kv_heads)
    return qkv_rope_twin(qkv, cos, sin, keys, values, start, num_heads, num_kv_heads)


def _qkv_rope_triton(qkv, cos, sin, keys, values, start, num_heads, num_kv_heads, parts: Optional[Tuple] = None):
    """The kernel; ``parts`` (B, L, dtype): qkv is a matmul's float32 partial sums [S, B * L, W] (qkv_rope_parts)."""
    B, L, dtype = parts if parts is not None else (*qkv.shape[:2], qkv.dtype)
    D = qkv.shape[-1] // (num_heads + 2 * num_kv_heads)
    qkv = qkv.contiguous()
    cos, sin = cos.contiguous(), sin.contiguous()
    if keys.stride(-1) != 1 or values.stride(-1) != 1:
        raise ValueError("qkv_rope: the K/V cache must be unit-stride in head_dim")
    q = torch.empty((B, L, num_heads, D), dtype=dtype, device=qkv.device)
    _qkv_rope_kernel[(B * L, num_heads + 2 * num_kv_heads)](
        qkv, cos, sin, q, keys, values, L, start, cos.stride(0), cos.stride(1),
        keys.stride(0), keys.stride(1), keys.stride(2), values.stride(0), values.stride(1), values.stride(2),
        B * L, qkv.shape[0] if parts is not None else 1,
        H=num_heads, KV=num_kv_heads, D=D, HALF_BLOCK=_pow2(D // 2), SUM_PARTS=parts is not None,
        **launch_options())
    return q


def qkv_rope_parts(parts: torch.Tensor, batch: int, dtype: torch.dtype, cos: torch.Tensor, sin: torch.Tensor,
                   keys: torch.Tensor, values: torch.Tensor, start: int, num_heads: int,
                   num_kv_heads: int) -> torch.Tensor:
    """qkv_rope with the QKV given as a matmul's float32 partial sums parts [S, batch * L, W]: summed in order and
    rounded to ``dtype`` in the rotary kernel, which is what the matmul's sum kernel would have stored (one launch
    less). The Triton kernel only (few_rows_matmul's fused configs call it where the kernels run)."""
    if parts.dtype != torch.float32 or parts.dim() != 3 or parts.shape[1] % batch:
        raise ValueError(f"qkv_rope_parts: parts must be float32 [S, {batch} * L, W], got {parts.dtype} "
                         f"{list(parts.shape)}")
    return _qkv_rope_triton(parts, cos, sin, keys, values, start, num_heads, num_kv_heads,
                            parts=(batch, parts.shape[1] // batch, dtype))


@qkv_rope.register_fake
def _(qkv, cos, sin, keys, values, start, num_heads, num_kv_heads):
    B, L, _ = qkv.shape
    return qkv.new_empty((B, L, num_heads, qkv.shape[-1] // (num_heads + 2 * num_kv_heads)))


@torch.library.custom_op("turbopi::qkv_rope_heads", mutates_args=())
def qkv_rope_heads(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int,
                   num_kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """qkv_rope into new tensors instead of a cache (what autograd can differentiate: fused_grad.py): qkv
    [B, L, (H + 2 KV) D] -> rotated q [B, L, H, D], rotated k and v [B, KV, L, D] (head-major, the cache layout)."""
    B, L, _ = qkv.shape
    D = qkv.shape[-1] // (num_heads + 2 * num_kv_heads)
    keys = qkv.new_empty((B, num_kv_heads, L, D))
    values = torch.empty_like(keys)
    return _qkv_rope(qkv, cos, sin, keys, values, 0, num_heads, num_kv_heads), keys, values


@qkv_rope_heads.register_fake
def _(qkv, cos, sin, num_heads, num_kv_heads):
    B, L, _ = qkv.shape
    D = qkv.shape[-1] // (num_heads + 2 * num_kv_heads)
    return qkv.new_empty((B, L, num_heads, D)), qkv.new_empty((B, num_kv_heads, L, D)), \
        qkv.new_empty((B, num_kv_heads, L, D))


def _ln_triton(x, branch, weight, bias, eps):
    W = x.shape[-1]
    x = x.contiguous()
    y = torch.empty_like(x)
    xo = torch.empty_like(x) if branch is not None else y
    _layer_norm_kernel[(x.numel() // W,)](x, branch.contiguous() if branch is not None else x, weight, bias, xo, y,
                                          W, eps, HAS_BRANCH=branch is not None, BLOCK=_pow2(W), **launch_options())
    return xo, y


@torch.library.custom_op("turbopi::add_layer_norm", mutates_args=())
def add_layer_norm(x: torch.Tensor, branch: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + branch, LayerNorm of it) for SigLIP's pre-norm layers."""
    if kernels_for(x):
        return _ln_triton(x, branch, weight, bias, eps)
    x = x + branch
    return x, layer_norm_twin(x, weight, bias, eps)


@add_layer_norm.register_fake
def _(x, branch, weight, bias, eps):
    return torch.empty_like(x), torch.empty_like(x)


def layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    """A LayerNorm with no residual before it (SigLIP's first): F.layer_norm is one kernel already."""
    return layer_norm_twin(x, norm.weight, norm.bias, norm.eps)


# --- fused stacks --------------------------------------------------------------------------------------------------
def _norm_args(norm: RMSNorm, mod: Optional[Modulation]):
    """(weight, scale, shift, gate) of a norm: plain (weight) or adaptive (scale, shift from mod, gate)."""
    if norm.dense is None:
        return norm.weight, None, None, None
    if mod is None:
        raise ValueError("adaRMS norm needs a time condition")
    scale, shift, gate = mod
    return None, scale, shift, gate


# kv(li) -> (keys [B, KV, Lc, D], values, start, stop): write this pass's K/V at [start, start + L), attend to [0, stop)
CacheSlot = Callable[[int], Tuple[torch.Tensor, torch.Tensor, int, int]]
# attention(li, attn, y, cos, sin, matmuls) -> layer li's attention output [B, L, H*D] from its normed input y (its
# QKV through matmuls: StackMatmuls)
StackAttention = Callable[[int, Any, torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]


def cache_attention(kv: CacheSlot, kernel: AttentionKernel = sdpa) -> StackAttention:
    """The QKV matmul, rotary and the cache write as its epilogue (matmuls.qkv_rope), then maskless attention over
    the cache's [0, stop) through ``kernel`` (SDPA; pi0.py passes split_attention.split_attention)."""
    def attend(li, attn, y, cos, sin, matmuls):
        keys, values, start, stop = kv(li)
        q = matmuls.qkv_rope(attn.qkv, y, cos, sin, keys, values, start, attn.num_heads, attn.num_kv_heads)
        return maskless_attention(q, keys[:, :, :stop], values[:, :, :stop], kernel)
    return attend


def prefix_attention(keys: torch.Tensor, values: torch.Tensor) -> StackAttention:
    """Differentiable attention for the guided (RTC) denoise: no cache write; layer li's new K/V are concatenated to
    the constant cached prefix keys[li], values[li] [B, KV, n, D], then maskless SDPA over all of them (the same
    SDPA inputs as cache_attention; rtc.differentiable_velocity does this with the plain modules)."""
    def attend(li, attn, y, cos, sin, matmuls):
        q, k, v = qkv_rope_heads(matmuls.linear(attn.qkv, y), cos, sin, attn.num_heads, attn.num_kv_heads)
        return maskless_attention(q, torch.cat([keys[li], k], dim=2), torch.cat([values[li], v], dim=2))
    return attend


class StackMatmuls:
    """How gemma_stack runs a layer's Linears: ``linear`` (gate_up), ``qkv_rope`` (qkv, with rotary and the cache
    write after it: cache_attention), ``linear_norm`` (o_proj, with the residual add and the norm after it) and
    ``gated_linear_norm`` (down_proj of gelu_gate(gate_up), with the add and the norm after it); and the fused
    denoise its action heads (``embed_actions``, ``linear``). These: the modules, then the fused ops.
    few_rows_matmul.FewRowsMatmuls fuses further."""

    def linear(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return module(x)

    def embed_actions(self, model, x_t: torch.Tensor, sc) -> torch.Tensor:
        """The action expert's input (PI0Model.embed_actions; its float32 heads), for the fused denoise."""
        return model.embed_actions(x_t, sc)

    def qkv_rope(self, module: torch.nn.Module, y: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 keys: torch.Tensor, values: torch.Tensor, start: int, num_heads: int,
                 num_kv_heads: int) -> torch.Tensor:
        """The QKV matmul, then qkv_rope (rotary, the K/V cache write) -> rotated q."""
        return qkv_rope(self.linear(module, y), cos, sin, keys, values, start, num_heads, num_kv_heads)

    def linear_norm(self, module: torch.nn.Module, a: torch.Tensor, x: torch.Tensor, gate: Optional[torch.Tensor],
                    weight: Optional[torch.Tensor], scale: Optional[torch.Tensor],
                    shift: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(x + module(a) [* gate], its RMSNorm / adaRMS)."""
        return add_rms_norm(x, self.linear(module, a), gate, weight, scale, shift)

    def gated_linear_norm(self, module: torch.nn.Module, gate_up: torch.Tensor, x: torch.Tensor,
                          gate: Optional[torch.Tensor], weight: Optional[torch.Tensor], scale: Optional[torch.Tensor],
                          shift: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """linear_norm of gelu_gate(gate_up)."""
        return self.linear_norm(module, gelu_gate(gate_up), x, gate, weight, scale, shift)


def gemma_stack(layers: Sequence[GemmaLayer], x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attention: StackAttention, mods: Optional[List[Tuple[Modulation, Modulation]]] = None,
                final_norm: Optional[RMSNorm] = None, final_mod: Optional[Modulation] = None,
                last_attention_only: bool = False, matmuls: Optional[StackMatmuls] = None) -> Optional[torch.Tensor]:
    """The fused twin of running ``layers`` one after another (GemmaLayer.forward) and then ``final_norm``; each
    layer attends through ``attention`` (cache_attention: pi0.py's cache-writing attention; prefix_attention: the
    guided denoise's). Returns the final norm's output, or None with ``last_attention_only`` (the
    prefix passes: the last layer's K/V are all that is used, so the rest of it is skipped). ``matmuls`` runs the
    layers' four Linears (default: StackMatmuls(); few_rows_matmul.FewRowsMatmuls() for the denoise, opt-in)."""
    n = len(layers)
    mm = matmuls or StackMatmuls()
    if n == 0:
        raise ValueError("gemma_stack needs at least one layer")

    def mod(li, which):
        return mods[li][which] if mods is not None else None

    w, sc, sh, gate = _norm_args(layers[0].input_layernorm, mod(0, 0))
    y = rms_norm(x, w, sc, sh)
    for li, layer in enumerate(layers):
        attn = layer.self_attn
        a = attention(li, attn, y, cos, sin, mm)
        if last_attention_only and li == n - 1:
            return None  # its K/V are written (the rest of the layer would be unused)
        w, sc, sh, gate2 = _norm_args(layer.post_attention_layernorm, mod(li, 1))
        x, y = mm.linear_norm(attn.o_proj, a, x, gate, w, sc, sh)
        mlp = layer.mlp
        gate_up = mm.linear(mlp.gate_up, y)
        if li + 1 < n:
            w, sc, sh, gate = _norm_args(layers[li + 1].input_layernorm, mod(li + 1, 0))
        elif final_norm is not None:
            w, sc, sh, _ = _norm_args(final_norm, final_mod)
        else:
            return residual_twin(x, mm.linear(mlp.down_proj, gelu_gate(gate_up)), gate2)
        x, y = mm.gated_linear_norm(mlp.down_proj, gate_up, x, gate2, w, sc, sh)
    return y


def siglip_stack(vision, x: torch.Tensor) -> torch.Tensor:
    """The fused twin of SiglipVision's encoder layers and post LayerNorm over embeddings x [N, T, width]."""
    layers = vision.encoder.layers
    if len(layers) == 0:
        return layer_norm(x, vision.post_layernorm)
    y = layer_norm(x, layers[0].layer_norm1)
    for i, layer in enumerate(layers):
        a = layer.self_attn(y)
        ln2 = layer.layer_norm2
        x, y = add_layer_norm(x, a, ln2.weight, ln2.bias, ln2.eps)
        m = layer.mlp(y)
        nxt = layers[i + 1].layer_norm1 if i + 1 < len(layers) else vision.post_layernorm
        x, y = add_layer_norm(x, m, nxt.weight, nxt.bias, nxt.eps)
    return y


__all__ = ["KERNELS", "Launch", "add_layer_norm", "add_rms_norm", "all_kernels", "backend", "cache_attention",
           "gelu_gate", "gemma_stack", "kernels_for", "kernels_replaced", "layer_norm", "prefix_attention", "qkv_rope",
           "qkv_rope_heads", "recording_launches", "register_kernels", "rms_norm", "siglip_stack", "sm_count",
           "triton_available", "use_triton_on_cpu"]
