"""Compile every Triton kernel of the fused path for real GPUs, on a machine that has none.

The CPU tests run the kernels under Triton's interpreter, which checks their arithmetic but not that they compile:
the interpreter accepts code that the GPU compiler rejects, and says nothing of registers or spills. This tool
records the launches the fused stacks make for the full-size layer shapes (model/fused.recording_launches: pi0 and
pi0.5 with the full widths, heads and head size, two layers each, one camera and two denoise steps, then two guided
(RTC) steps for the backward kernels of model/fused_grad.py, in each dtype),
keeps one launch per distinct specialization (the dtypes, which integers are 1 or multiples of 16, which pointers are
16-byte aligned, the constexprs), and compiles each with Triton's own compiler for each GPU target down to a cubin,
with the ptxas that ships with Triton, each target in a process of its own (as on a GPU: Triton's lowering keeps
state from a process's earlier compiles; compile_per_target). No driver and no device are needed. cuobjdump (shipped
beside ptxas) reads the registers, the stack and the local memory (spills) of each cubin.

    python -m turbopi_ros.tools.kernel_targets [--targets 90,89,87,110] [--dtypes bfloat16,float32,fp8_weights,pdl]
        [--json F]

fp8_weights (bfloat16 with the expert's weights in FP8: the few-rows matmul widens e4m3 as it loads) compiles for
the targets of compute capability 8.9 and newer only: model.dtype fp8_weights is refused on the others (Orin).
pdl (bfloat16's launches with programmatic dependent launch, model.pdl) compiles for 9.0 and newer only, and each
PTX is checked: the kernel waits for the kernel before it (griddepcontrol.wait) before its first global load or store
and then lets the next one start (griddepcontrol.launch_dependents), as model/fused._wait_for_inputs says.

Exit status 1 if any kernel fails to compile for any target, spills to local memory or, with PDL, fails pdl_order. The
calls into Triton follow what triton.runtime.jit.JITFunction.run does before it launches (Triton 3.7, the version
requirements.txt pins).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

TARGETS: Dict[int, str] = {  # compute capability (major * 10 + minor) -> the GPUs it stands for
    90: "Hopper: H100, H200, GH200",
    89: "Ada: L4, L40S, RTX 4090",
    87: "Jetson AGX Orin",
    110: "Jetson Thor",
    100: "Blackwell: B200, GB200",
    120: "Blackwell: RTX 5090",
}
DEFAULT_TARGETS = (90, 89, 87, 110)
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16,
          "fp8_weights": torch.bfloat16,  # model.dtype fp8_weights: bfloat16, the expert's weights in FP8 (e4m3)
          "pdl": torch.bfloat16}  # bfloat16 with model.pdl: every launch with programmatic dependent launch
PDL_MIN_TARGET = 90  # fused.PDL_MIN_CAPABILITY
# PTX instructions that touch global memory (loads, stores, atomics, reductions, asynchronous copies)
_GLOBAL_ACCESS = re.compile(r"^\s*(@!?%p\d+\s+)?(ld\.global|st\.global|atom\.|red\.|cp\.async)", re.M)


def kernel_shapes_config(variant: str):
    """The full preset's widths, heads, head size and MLP sizes with two layers per stack (the fused stacks treat
    the first, a middle and the last layer differently, so two cover every launch) and a 1024-token vocabulary."""
    from ..model.config import PRESETS

    full = PRESETS[variant]
    return dataclasses.replace(full, vision=dataclasses.replace(full.vision, depth=2),
                               vlm=dataclasses.replace(full.vlm, depth=2, vocab_size=1024),
                               expert=dataclasses.replace(full.expert, depth=2))


def record(variant: str, dtype: torch.dtype, prompt_len: int = 20, fp8_weights: bool = False) -> List:
    """The launches of one observation (vision, prefix cache, two denoise steps, two guided denoise steps: forward
    and backward) through the fused path, the denoise's matmuls through few_rows_matmul (opt-in in the model);
    ``fp8_weights``: with the expert's weights in FP8 (model.dtype fp8_weights)."""
    from ..model import fused
    from ..model.checkpoint import random_model
    from ..model.fp8 import quantize_model
    from ..model.rtc import Guidance, guided_denoise
    from .bench import make_inputs

    config = kernel_shapes_config(variant)
    model = random_model(config, dtype=dtype).use_fused(True, few_rows_matmul=True)
    if fp8_weights:
        quantize_model(model, check_device=False, weights_only=True)
    images, masks, tokens, token_mask, state, noise = make_inputs(config, 1, prompt_len, "cpu")
    with torch.no_grad(), fused.recording_launches() as launches:
        image_tokens = model.embed_images(images.to(dtype), masks)
        cache = model.build_cache(image_tokens, tokens, token_mask, state.to(dtype))
        model.denoise(cache, noise.to(dtype), 2)
        guided_denoise(model, cache, noise, Guidance(torch.zeros_like(noise), torch.ones_like(noise)), 2)
    return launches


def _arg_key(value) -> object:
    """What Triton specializes a kernel on, for one argument."""
    if isinstance(value, torch.Tensor):
        return (str(value.dtype), value.data_ptr() % 16 == 0)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return ("int", value == 1, value % 16 == 0)
    if isinstance(value, float):
        return "float"
    return repr(value)


def distinct(launches: Sequence) -> List:
    """One launch per distinct specialization, in first-seen order."""
    seen, out = set(), []
    for launch in launches:
        key = (launch.name, tuple(_arg_key(a) for a in launch.args),
               tuple(sorted((k, _arg_key(v)) for k, v in launch.kwargs.items())))
        if key not in seen:
            seen.add(key)
            out.append(launch)
    return out


def describe(launch) -> str:
    """The launch's tensor dtypes and constexprs, for the report."""
    dtypes = sorted({str(a.dtype).replace("torch.", "") for a in launch.args if isinstance(a, torch.Tensor)})
    from ..model.fused import LAUNCH_OPTIONS  # the same on every launch: not a specialization

    consts = ", ".join(f"{k}={v}" for k, v in launch.kwargs.items()
                       if k not in LAUNCH_OPTIONS and k != "launch_pdl" and (k != "PDL" or v))
    return f"{'/'.join(dtypes)}; {consts}"


def compile_launch(launch, capability: int):
    """Triton's compile of ``launch`` for CUDA compute capability ``capability``: the CompiledKernel (its asm holds
    the ptx and the cubin). What JITFunction.run does up to the launch, with the target given instead of asked of a
    driver."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile as triton_compile, make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel, kwargs = launch.kernel, dict(launch.kwargs)
    kwargs["debug"] = False
    if hasattr(knobs.compilation, "instrumentation_mode"):  # Triton 3.6+ passes it; 3.5's run has no such option
        kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return triton_compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)


_USAGE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def resource_usage(cubin: bytes) -> Dict[str, int]:
    """Registers, stack, shared and local bytes of a cubin's kernel, from cuobjdump -res-usage."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        out = subprocess.run([str(tool), "-res-usage", str(path)], capture_output=True, text=True, check=True).stdout
    match = _USAGE.search(out)
    if match is None:
        raise RuntimeError(f"cuobjdump -res-usage printed no usage line:\n{out}")
    return dict(zip(("registers", "stack_bytes", "shared_bytes", "local_bytes"), map(int, match.groups())))


def pdl_order(ptx: str) -> Optional[str]:
    """None where a kernel compiled with programmatic dependent launch waits for the kernel before it
    (griddepcontrol.wait) before its first global load or store, and lets the next start after that
    (griddepcontrol.launch_dependents); else what is wrong."""
    wait = ptx.find("griddepcontrol.wait")
    if wait < 0:
        return "no griddepcontrol.wait: the kernel would read what the kernel before it has not finished writing"
    first = _GLOBAL_ACCESS.search(ptx)
    if first is not None and first.start() < wait:
        return f"a global access before griddepcontrol.wait: {first.group(0).strip()}"
    launch = ptx.find("griddepcontrol.launch_dependents")
    if launch < 0:
        return "no griddepcontrol.launch_dependents: the next kernel starts only when this one ends"
    if launch < wait:
        return "griddepcontrol.launch_dependents before griddepcontrol.wait"
    return None


def check(launch, capability: int) -> Dict[str, object]:
    """Compile one launch for one target: ok, seconds, resource usage, num_warps, or the error; a launch with
    programmatic dependent launch also its PTX's order (pdl_order)."""
    t0 = time.perf_counter()
    try:
        compiled = compile_launch(launch, capability)
        usage = resource_usage(compiled.asm["cubin"])
    except Exception as exc:  # noqa: BLE001 - every failure is the finding: reported, then exit 1
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:2000]}",
                "seconds": time.perf_counter() - t0}
    spills = usage["local_bytes"] > 0 or usage["stack_bytes"] > 0
    out = {"ok": not spills, "spills": spills, "seconds": time.perf_counter() - t0,
           "num_warps": compiled.metadata.num_warps, **usage}
    if launch.kwargs.get("PDL"):
        out["pdl_order"] = pdl_order(compiled.asm["ptx"]) or "ok"
        out["ok"] = out["ok"] and out["pdl_order"] == "ok"
    return out


def run(variants: Sequence[str], dtypes: Sequence[str], targets: Sequence[int]) -> Tuple[List[Dict], List[str]]:
    """Every distinct launch of every variant and dtype compiled for every target: (results, printed lines). The
    launches are recorded here; each target's are compiled in a process of its own (compile_per_target)."""
    from ..model import fused
    from ..model.fp8 import MIN_CAPABILITY

    fp8_min = MIN_CAPABILITY[0] * 10 + MIN_CAPABILITY[1]  # Triton widens e4m3 there and on newer GPUs
    groups = []  # (variant, dtype, the line that says what was recorded, launches, the targets they compile for)
    for variant in variants:
        for dtype in dtypes:
            t0 = time.perf_counter()
            launches = distinct(record(variant, DTYPES[dtype], fp8_weights=dtype == "fp8_weights"))
            if dtype == "fp8_weights":  # only the kernels that read the FP8 weights: the rest is bfloat16's
                launches = [x for x in launches if x.kwargs.get("W_SCALED")]
            if dtype == "pdl":  # the same launches, each made with programmatic dependent launch
                launches = [dataclasses.replace(x, kwargs={**x.kwargs, **fused.launch_options(pdl=True)})
                            for x in launches]
            caps = [c for c in targets if (dtype != "fp8_weights" or c >= fp8_min)
                    and (dtype != "pdl" or c >= PDL_MIN_TARGET)]
            groups.append((variant, dtype, f"{variant} {dtype}: {len(launches)} distinct launches of "
                           f"{len({x.name for x in launches})}/{len(fused.all_kernels())} kernels, recorded in "
                           f"{time.perf_counter() - t0:.1f} s"
                           + (f" (not for sm_{', sm_'.join(str(c) for c in targets if c not in caps)}: "
                              f"{'FP8 needs 8.9' if dtype == 'fp8_weights' else 'PDL needs 9.0'} or newer)"
                              if len(caps) < len(targets) else ""), launches, caps))
    per_target = compile_per_target({cap: [launch for *_, launches, caps in groups if cap in caps
                                           for launch in launches] for cap in targets})
    results, lines = [], []
    for variant, dtype, line, launches, caps in groups:  # in the order recorded: launch by launch, every target
        lines.append(line)
        for launch in launches:
            for cap in caps:
                r = {"variant": variant, "dtype": dtype, "kernel": launch.name, "specialization": describe(launch),
                     "target": f"sm_{cap}", **per_target[cap].pop(0)}
                results.append(r)
                lines.append(_line(r))
    return results, lines


def _compile_in_child(launches: Sequence, capability: int, conn) -> None:
    try:
        conn.send([check(launch, capability) for launch in launches])
    finally:
        conn.close()


def compile_per_target(launches: Dict[int, List]) -> Dict[int, List[Dict]]:
    """check() of each target's launches, in order, each target in a forked process of its own (the recorded
    launches are inherited, not sent), as many at once as there are CPUs: target -> results.

    A GPU compiles for one target a process, and Triton's lowering keeps state from a process's first compiles:
    after an sm_90 compile of the few-rows matmul on FP8 weights, Triton 3.5 lowered the e4m3 widening for sm_89
    with sm_90's instruction (``cvt.bf16.f16``), which ptxas rejected, while the same kernel compiled for sm_89
    alone builds. A process a target compiles what that target's GPU would. A process that dies fails its
    target's compiles with its exit status."""
    ctx = multiprocessing.get_context("fork")  # Linux, as Triton's compilers; fork: no launch is pickled
    pending, running, out = list(launches.items()), {}, {}
    workers = max(1, min(len(pending), os.cpu_count() or 1))
    while pending or running:
        while pending and len(running) < workers:
            cap, mine = pending.pop(0)
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_compile_in_child, args=(mine, cap, send), daemon=True)
            proc.start()
            send.close()
            running[receive] = (cap, proc, len(mine))
        for conn in multiprocessing.connection.wait(list(running)):
            cap, proc, n = running.pop(conn)
            try:
                results = conn.recv()  # before the join: a child blocks on a pipe nobody reads
            except EOFError:  # it died before it sent
                results = None
            conn.close()
            proc.join()
            if results is None:
                why = f"RuntimeError: the process compiling for sm_{cap} died (exit status {proc.exitcode})"
                results = [{"ok": False, "error": why, "seconds": 0.0} for _ in range(n)]
            out[cap] = results
    return out


def _line(r: Dict) -> str:
    head = f"  {r['kernel']:<18} sm_{r['target'][3:]:<4} {r['specialization']:<60}"
    if "error" in r:
        return f"{head} FAILED: {r['error'].splitlines()[0] if r['error'] else ''}"
    status = "ok" if r["ok"] else ("SPILLS" if r.get("spills") else "PDL ORDER")
    return (f"{head} {status:<6} regs {r['registers']:3d}  local {r['local_bytes']} B  shared {r['shared_bytes']} B  "
            f"warps {r['num_warps']}  {r['seconds']:.2f} s"
            + (f"  PDL {r['pdl_order']}" if "pdl_order" in r else ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default="pi0,pi05")
    ap.add_argument("--dtypes", default="bfloat16,float32,fp8_weights,pdl", help=f"of {', '.join(DTYPES)}")
    ap.add_argument("--targets", default=",".join(map(str, DEFAULT_TARGETS)),
                    help="compute capabilities, e.g. 90 (" + "; ".join(f"{k}: {v}" for k, v in TARGETS.items()) + ")")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("kernel_targets: unset TRITON_INTERPRET (the interpreter's kernels cannot be compiled)", file=sys.stderr)
        return 2
    try:
        import triton
    except ImportError:
        print("kernel_targets: needs triton (pip install triton, as requirements.txt pins it)", file=sys.stderr)
        return 2
    torch.set_flush_denormal(True)  # the recorded run computes on unwritten outputs: keep denormals from slowing it
    targets = [int(t) for t in args.targets.split(",")]
    print(f"Triton {triton.__version__}, torch {torch.__version__}; targets: "
          + "; ".join(f"sm_{t} ({TARGETS.get(t, '?')})" for t in targets))
    results, lines = run(args.variants.split(","), args.dtypes.split(","), targets)
    print("\n".join(lines))
    bad = [r for r in results if not r["ok"]]
    print(f"kernel_targets: {len(results)} compiles, {len(bad)} failed or spilled")
    if args.json:
        args.json.write_text(json.dumps({"triton": triton.__version__, "targets": targets, "results": results},
                                        indent=1) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
