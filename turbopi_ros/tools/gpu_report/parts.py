"""The parts run with the most cameras: kernel counts, the capture of every prompt length, torch.compile's
cold and warm start, and real-time chunking's guided denoise."""
from __future__ import annotations

import functools
import tempfile
import time
from typing import Callable, Dict

import torch

from .. import bench, compile_start
from ..ablation import replaced
from ...model import opcount
from ...model.cuda_graph import (CudaGraphDenoiser, CudaGraphEncoder, CudaGraphGuidedDenoiser, GraphPool,
                                 cached_lengths, host_inputs)
from ...model.rtc import Guidance, guided_denoise
from ...policy.prompt_lengths import prompt_lengths
from ...policy.tokenizer import ByteTokenizer
from .session import Session, fused_call, max_abs, sync, try_variants


# the prompt and state size of the capture check: pi0.5's lengths over every state of STATE_DIMS values
CAPTURE_PROMPT = "pick up the cube and put it in the bowl"
STATE_DIMS = 7


def _warm_start(s: Session, target, compiled: torch.Tensor, out: Dict[str, object]) -> None:
    """The warm start, in a new process from the cold start's cache (compile_start.warm_start): its first compiled
    denoise, what the process took in all, what the FX graph cache found, its actions against the cold start's."""
    preset, views, prompt_len = target
    s.free_memory()  # the new process builds the model too
    r = compile_start.warm_start(preset, views, prompt_len, s.args.steps, s.args.seed, str(s.device),
                                 out["inductor_cache_dir"], "eager" if s.dry else "inductor", s.args.threads,
                                 timeout_s=min(300.0, max(60.0, s.budget.left_s())))
    out["warm_start_s"] = r["warm_start_s"]
    out["warm_start"] = {"process_s": r["process_s"], "build_s": r["build_s"], "cache": r["cache"],
                         "actions_vs_cold": max_abs(torch.tensor(r["actions"]), compiled.float().cpu())}


def compile_block(s: Session, model, state_tuple, graph_cls, target) -> Dict[str, object]:
    """torch.compile of the denoise step (PI0Model.compile_denoise): its cold start in this process (a fresh inductor
    cache, nothing compiled before: compile_start.cold_start), then the compiled denoise eager and captured in a CUDA
    graph, timed interleaved with the eager denoise, and the compiled actions against the eager ones; last, the warm
    start in a new process (``target``: (preset, views, prompt length) of ``state_tuple``'s observation). A failure
    (no working inductor/triton, a capture error, the warm start) is reported, not raised: the rest stands."""
    steps = s.args.steps
    cache, noise = state_tuple
    out: Dict[str, object] = {"backend": "eager (dry run)" if s.dry else "inductor"}
    compile_fn = functools.partial(torch.compile, backend="eager") if s.dry else torch.compile
    with bench.plain_eager(model), replaced(torch, "compile", compile_fn), torch.inference_mode():
        try:
            eager = model.denoise(cache, noise, steps)
            out["inductor_cache_dir"] = tempfile.mkdtemp(prefix="turbopi_inductor_")
            out["compile_s"], compiled, out["cold_start_cache"] = compile_start.cold_start(
                model, cache, noise, steps, out["inductor_cache_dir"])
            out["cold_start_s"] = out["compile_s"]
            out["compiled_vs_eager"] = max_abs(compiled, eager)
        except Exception as e:
            return s.budget.failed(out, "torch.compile", e)

        def eager_denoise():
            with bench.plain_eager(model):
                return model.denoise(cache, noise, steps)

        fns = {"denoise compiled": lambda: model.denoise(cache, noise, steps), "denoise eager": eager_denoise}
        if graph_cls is not None:
            try:
                cgraph = graph_cls(model)
                t0 = time.perf_counter()
                out["compiled_graph_vs_eager"] = max_abs(cgraph(cache, noise, steps), eager)
                out["graph_capture_s"] = time.perf_counter() - t0
                fns["denoise compiled + graph"] = lambda: cgraph(cache, noise, steps)
            except Exception as e:
                s.budget.failed(out, "torch.compile + CUDA graph", e)
        times = s.timer()(fns)
    out["times"] = {name: bench.summary(t) for name, t in times.items()}
    try:
        _warm_start(s, target, compiled, out)
    except Exception as e:
        s.budget.failed(out, "torch.compile warm start (new process)", e)
    return out


def counts_block(s: Session, model, config, views: int, prompt_len: int) -> Dict[str, object]:
    """Kernels per stage and per layer, plain vs fused: aten ops dispatched (and, on CUDA, the profiler's
    kernels) for vision, the prefix cache, one denoise step and the whole denoise."""
    inputs = bench.make_inputs(config, views, prompt_len, s.device, s.args.seed)
    out: Dict[str, object] = {}
    if s.device.type == "cuda":
        try:
            return opcount.compare(model, *inputs, num_steps=s.args.steps, cuda_kernels=True)
        except Exception as e:  # the profiler's count failed: keep the dispatched ops at least
            s.budget.failed(out, "CUDA kernel counts (profiler)", e)
    try:
        out.update(opcount.compare(model, *inputs, num_steps=s.args.steps))
    except Exception as e:
        return s.budget.failed(out, "kernel counts", e)
    return out


def _changing_states(s: Session, config, tok, enc, den, views: int, prompt_len: int) -> Dict[str, object]:
    """Observations whose pi0.5 state changes every time, through the captured encoder and denoiser: the prompt
    lengths seen and the median replayed total (ms)."""
    import numpy as np

    a, device = s.args, s.device
    images, masks, _, _, _, noise = bench.make_inputs(config, views, prompt_len, device, a.seed)
    masks = masks.cpu()  # the encoder decides on the host (host_inputs), as in Policy.run
    rng = np.random.default_rng(a.seed)
    state = np.zeros(STATE_DIMS)
    seen, times = [], []
    for _ in range(3 if s.dry else 12):
        state = np.clip(state + rng.normal(0, 0.4, STATE_DIMS), -1, 1)
        tokens, mask = tok.encode(CAPTURE_PROMPT, state if config.is_pi05 else None)
        state_t = torch.zeros((1, config.action_dim), device=device)
        state_t[0, :STATE_DIMS] = torch.from_numpy(state).float()
        _, tokens_t, mask_t = host_inputs(masks, torch.from_numpy(tokens.astype(np.int64))[None],
                                          torch.from_numpy(mask)[None])
        sync(device)
        t1 = time.perf_counter()
        with torch.inference_mode():
            den(enc.build_cache(enc.embed_images(images, masks), tokens_t, mask_t, state_t), noise, a.steps)
        sync(device)
        times.append((time.perf_counter() - t1) * 1e3)
        seen.append(int(mask.sum()))
    return {"lengths_seen": seen, "replayed_total_ms_median": sorted(times)[len(times) // 2]}


def capture_block(s: Session, model, config, views: int, prompt_len: int) -> Dict[str, object]:
    """Every prompt length the capture prompt can produce (pi0.5: over every state of STATE_DIMS values; byte
    tokenizer) captured before ready in one shared pool, then a run whose pi0.5 state changes every observation:
    it must capture nothing more. Capture count, time, pool memory, replayed totals."""
    out: Dict[str, object] = {}
    try:
        pool = GraphPool(s.device, static_replay_on_cpu=s.dry)
        enc, den = CudaGraphEncoder(model, pool=pool), CudaGraphDenoiser(model, pool=pool)
        tok = ByteTokenizer(config.vlm.vocab_size, config.max_token_len, config.variant)
        lengths = prompt_lengths(tok, CAPTURE_PROMPT, STATE_DIMS if config.is_pi05 else None)
        t0 = time.perf_counter()
        with torch.inference_mode():
            enc.warm_up((views,), lengths)
            den.warm_up(cached_lengths(config, (views,), lengths), num_steps=s.args.steps)
        sync(s.device)
        pool.mark_ready()
        out["warm_up_s"] = time.perf_counter() - t0
        out["prompt_lengths"] = lengths
        seen = _changing_states(s, config, tok, enc, den, views, prompt_len)
        out.update(pool.stats.to_dict())
        out.update(seen)
        if out["captures_after_ready"]:
            s.budget.errors.append(f"{config.variant}: {out['captures_after_ready']} captures after ready")
    except Exception as e:
        return s.budget.failed(out, "capture every length", e)
    return out


def _guided_graph(model, pool: GraphPool, cache, noise, guidance, steps, fused_kernels: bool) -> Callable[[], object]:
    """The guided denoise as a graph in ``pool``, plain or with the fused kernels (captured by its first call)."""
    den = CudaGraphGuidedDenoiser(model, pool=pool)
    call = functools.partial(den, cache, noise, guidance, steps)
    return fused_call(model, call) if fused_kernels else call


def rtc_block(s: Session, model, config, views: int, prompt_len: int) -> Dict[str, object]:
    """Real-time chunking's guided denoise (model/rtc.py: each step's forward and backward pass), plain and with the
    fused kernels and their backwards (model/fused_grad.py): graphed (CudaGraphGuidedDenoiser, one pool each) and
    timed interleaved where graphs run, else eager; each variant's actions against the plain eager guided denoise.
    A variant that fails is reported and the others stand."""
    steps = s.args.steps
    images, masks, tokens, token_mask, state, noise = bench.make_inputs(config, views, prompt_len, s.device,
                                                                        s.args.seed)
    g = torch.Generator().manual_seed(s.args.seed)
    guidance = Guidance(target=torch.randn(tuple(noise.shape), generator=g).to(s.device),
                        weights=torch.rand(tuple(noise.shape), generator=g).to(s.device))
    out: Dict[str, object] = {"max_guidance": guidance.max_guidance, "parity": {}}
    try:
        with torch.inference_mode():
            cache = model.encode(images, masks, tokens, token_mask, state)
            eager = functools.partial(guided_denoise, model, cache, noise, guidance, steps)
            plain = eager()
            out["parity"]["guided_vs_unguided"] = max_abs(plain, model.denoise(cache, noise, steps))
            variants = [("guided eager fused", lambda: fused_call(model, eager))]
            if s.graphs:
                variants += [(label, functools.partial(_guided_graph, model, s.graph_pool(), cache, noise, guidance,
                                                       steps, on))
                             for label, on in (("guided graph", False), ("guided graph fused", True))]
            fns = try_variants(s, out, variants, plain, "guided eager")
            if s.graphs:  # eager, each call is thousands of launches: only the graphs are timed
                fns = {label: fn for label, fn in fns.items() if "graph" in label}
            else:
                fns = {"guided eager": eager, **fns}
            times = s.timer()(fns)
        out["times"] = {k: bench.summary(v) for k, v in times.items()}
    except Exception as e:
        return s.budget.failed(out, "rtc", e)
    return out

