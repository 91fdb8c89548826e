"""One cameras count of one bfloat16 preset: every stage timed interleaved (eager, graphed, fused), its
parity, peak memory, the attention table, and each stage's efficiency against the cost model."""
from __future__ import annotations

import functools
import time
from typing import Callable, Dict, List

import torch

from .. import bench, costmodel
from ...model import fused
from ...model.cuda_graph import CudaGraphDenoiser, CudaGraphEncoder, host_inputs
from ...model.reference import reference_denoise, reference_prefix
from .session import PART_S, Session, fused_call, host_waits, max_abs, memory_gb, reset_peak


FAST_STAGE = {"vision": "vision", "prefix_cache": "prefix_cache", "vision graph": "vision",
              "prefix_cache graph": "prefix_cache", "denoise eager": "denoise",
              "denoise graph": "denoise", "total eager": "total", "total graph": "total",
              "denoise eager fused": "denoise", "total eager fused": "total", "vision graph fused": "vision",
              "prefix_cache graph fused": "prefix_cache", "denoise graph fused": "denoise",
              "total graph fused": "total", "denoise graph fused few-rows": "denoise",
              "prefix_cache graph fused few-rows": "prefix_cache", "total graph fused few-rows": "total",
              "denoise graph fused few-rows pdl": "denoise", "total graph fused few-rows pdl": "total"}


class Graphs:
    """The CUDA graphs of one preset's bfloat16 model (none off CUDA unless Session.cpu_graphs): the denoiser, the
    encoder (vision and prefix cache), an encoder and denoiser sharing one pool for the fused kernels, another such
    pair for the fused kernels with the few-rows matmul (model/few_rows_matmul.py), and where the GPU has it one for
    those with programmatic dependent launch (fused.use_pdl; ``pdl_skipped`` says why not)."""

    def __init__(self, s: Session, model):
        self.denoiser = self.encoder = self.fused = self.few_rows = self.pdl = None
        self.pdl_skipped = fused.pdl_unsupported(s.device)
        if s.graphs:
            self.encoder = CudaGraphEncoder(model, pool=s.graph_pool())
            self.denoiser = CudaGraphDenoiser(model, pool=s.graph_pool())
            fused_pool = s.graph_pool()
            self.fused = (CudaGraphEncoder(model, pool=fused_pool), CudaGraphDenoiser(model, pool=fused_pool))
            few_rows_pool = s.graph_pool()
            self.few_rows = (CudaGraphEncoder(model, pool=few_rows_pool), CudaGraphDenoiser(model, pool=few_rows_pool))
            if self.pdl_skipped is None:
                pdl_pool = s.graph_pool()
                self.pdl = (CudaGraphEncoder(model, pool=pdl_pool), CudaGraphDenoiser(model, pool=pdl_pool))

    def clear(self) -> None:
        for graph in (self.denoiser, self.encoder) + (self.fused or ()) + (self.few_rows or ()) + (self.pdl or ()):
            if graph is not None:
                graph.clear()


class ViewsBlock:
    """One cameras count of one bfloat16 preset: every stage timed interleaved (eager, graphed, fused), the parity
    against the float32 reference, the peak memory, the attention table (most cameras only) and the efficiency
    against the cost model. A group of variants that fails (a capture, a fused kernel) is reported in the block's
    errors and left out; the eager stages and the other groups stand."""

    def __init__(self, s: Session, model, config, views: int, prompt_len: int, graphs: Graphs):
        self.s, self.model, self.config, self.views, self.prompt_len = s, model, config, views, prompt_len
        self.graphs, self.steps = graphs, s.args.steps
        (self.images, self.masks, self.tokens, self.token_mask, self.state,
         self.noise) = bench.make_inputs(config, views, prompt_len, s.device, s.args.seed)
        # what the graphed encoders decide on, on the host as Policy.run gives them: no host wait between stages
        self.host_masks, self.host_tokens, self.host_token_mask = host_inputs(self.masks, self.tokens, self.token_mask)
        self.out: Dict[str, object] = {}
        self.attention_s = 0.0  # what the attention table took (not a stage's time: PresetReport.stages_s)

    def __call__(self, ref32: torch.Tensor, peaks, published, keep_s: Callable[[], float] = lambda: 0.0):
        """-> (the block's results, (cache, noise) of its observation). ``keep_s()``: the time the attention table
        must leave for the parts that matter more (Budget.fits), asked when the table is to start."""
        model, out, g = self.model, self.out, self.graphs
        with torch.inference_mode():
            self.image_tokens = model.embed_images(self.images, self.masks)
            self.cache = model.build_cache(self.image_tokens, self.tokens, self.token_mask, self.state)
            self.prefix_pad, self.past = reference_prefix(model, self.images, self.masks, self.tokens,
                                                          self.token_mask)
            fns = self.eager_fns()
            graphed = g.denoiser is not None and self.add(fns, "CUDA graph of the denoise", self.graph_fns)
            self.add(fns, "fused kernels", self.fused_fns)
            if g.fused is not None:  # everything graphed, with the fused kernels
                self.add(fns, "fused kernels in CUDA graphs", self.fused_graph_fns)
            if g.few_rows is not None:
                self.add(fns, "few-rows matmul in the fused graphs", self.few_rows_fns)
            if g.pdl is not None:
                self.add(fns, "programmatic dependent launch in the few-rows graphs", self.pdl_fns)
            elif g.few_rows is not None:
                out["pdl_skipped"] = g.pdl_skipped
            if g.encoder is not None:  # vision and prefix cache as CUDA graphs too: everything graphed
                self.add(fns, "CUDA graphs of vision and the prefix cache",
                         functools.partial(self.encoder_fns, graphed))
            times = self.s.timer()(fns)
            parity = self.parity(fns, ref32)
        out["times"] = {name: bench.summary(t) for name, t in times.items()}
        out["parity"] = parity
        self.attention(keep_s)
        w = costmodel.Workload(self.config, self.views, self.prompt_len, self.steps, dtype="bfloat16")
        out["efficiency"] = efficiency(w, out["times"], peaks, published)
        out["cache_tokens"] = self.cache.num_cached
        return out, (self.cache, self.noise)

    def encode(self):
        return self.model.encode(self.images, self.masks, self.tokens, self.token_mask, self.state)

    def add(self, fns: Dict[str, Callable[[], object]], what: str, make: Callable[[], Dict]) -> bool:
        """Add the variants ``make()`` returns (it captures their graphs) after one call of each (a fused kernel's
        compile, outside the timed calls); if any of that raises, report it and add none of them."""
        try:
            new = make()
            for fn in new.values():
                fn()
        except Exception as e:
            self.s.budget.failed(self.out, what, e)
            return False
        fns.update(new)
        return True

    def eager_fns(self) -> Dict[str, Callable[[], object]]:
        model, cache, noise, steps = self.model, self.cache, self.noise, self.steps
        return {
            "vision": lambda: model.embed_images(self.images, self.masks),
            "prefix_cache": lambda: model.build_cache(self.image_tokens, self.tokens, self.token_mask, self.state),
            "denoise eager": lambda: model.denoise(cache, noise, steps),
            "total eager": lambda: model.denoise(self.encode(), noise, steps),
            "reference denoise": lambda: reference_denoise(model, self.prefix_pad, self.past, self.state, noise,
                                                           steps),
            "reference total": lambda: model.sample_actions(self.images, self.masks, self.tokens, self.token_mask,
                                                            self.state, noise=noise, num_steps=steps,
                                                            path="reference"),
        }

    def graph_fns(self) -> Dict[str, Callable[[], object]]:
        graph, cache, noise, steps = self.graphs.denoiser, self.cache, self.noise, self.steps
        t0 = time.perf_counter()
        graph(cache, noise, steps)  # captured here, not in a timed call
        self.out["graph_capture_s"] = time.perf_counter() - t0
        return {"denoise graph": lambda: graph(cache, noise, steps),
                "total graph": lambda: graph(self.encode(), noise, steps)}

    def fused_fns(self) -> Dict[str, Callable[[], object]]:
        model, cache, noise, steps = self.model, self.cache, self.noise, self.steps
        return {"denoise eager fused": fused_call(model, lambda: model.denoise(cache, noise, steps)),
                "total eager fused": fused_call(model, lambda: model.denoise(self.encode(), noise, steps))}

    def fused_graph_fns(self) -> Dict[str, Callable[[], object]]:
        f_enc, f_den = self.graphs.fused
        images, state = self.images, self.state
        masks, tokens, token_mask = self.host_masks, self.host_tokens, self.host_token_mask

        def f_total():
            return f_den(f_enc.build_cache(f_enc.embed_images(images, masks), tokens, token_mask, state),
                         self.noise, self.steps)

        t0 = time.perf_counter()
        fused_call(self.model, f_total)()  # captured here (with the fused path on), not in a timed call
        self.out["fused_graph_capture_s"] = time.perf_counter() - t0
        f_tokens = f_enc.embed_images(images, masks)
        return {"vision graph fused": lambda: f_enc.embed_images(images, masks),
                "prefix_cache graph fused": lambda: f_enc.build_cache(f_tokens, tokens, token_mask, state),
                "denoise graph fused": lambda: f_den(self.cache, self.noise, self.steps),
                "total graph fused": f_total}

    def graphed_total(self, enc, den) -> Callable[[], object]:
        """The all-graphed total through the encoder graphs ``enc`` and the denoiser ``den``, given masks and tokens
        on the host as Policy.run gives them."""
        def total():
            return den(enc.build_cache(enc.embed_images(self.images, self.host_masks), self.host_tokens,
                                       self.host_token_mask, self.state), self.noise, self.steps)
        return total

    def few_rows_fns(self) -> Dict[str, Callable[[], object]]:
        """The fused graphs with the expert's matmuls through few_rows_matmul (opt-in: PI0Model.use_fused's
        few_rows_matmul): the denoise's, and pi0's state token's in the prefix cache. The same graphs as "prefix_cache
        graph fused", "denoise graph fused" and "total graph fused" but for those kernels."""
        enc, den = self.graphs.few_rows
        images, state = self.images, self.state
        masks, tokens, token_mask = self.host_masks, self.host_tokens, self.host_token_mask
        total = self.graphed_total(enc, den)

        def few_rows(fn):
            return fused_call(self.model, fn, few_rows_matmul=True)

        t0 = time.perf_counter()
        few_rows(total)()  # captured here, not in a timed call
        self.out["few_rows_graph_capture_s"] = time.perf_counter() - t0
        image_tokens = enc.embed_images(images, masks)
        return {"prefix_cache graph fused few-rows": few_rows(lambda: enc.build_cache(image_tokens, tokens, token_mask,
                                                                                      state)),
                "denoise graph fused few-rows": few_rows(lambda: den(self.cache, self.noise, self.steps)),
                "total graph fused few-rows": few_rows(total)}

    def pdl_fns(self) -> Dict[str, Callable[[], object]]:
        """The few-rows graphs again, captured with programmatic dependent launch (model.pdl: every fused kernel may
        start while the one before it ends, and waits inside for its results): the denoise's and the total's."""
        enc, den = self.graphs.pdl
        total = self.graphed_total(enc, den)

        def pdl(fn):
            return fused_call(self.model, fn, few_rows_matmul=True, pdl=True)

        t0 = time.perf_counter()
        pdl(total)()  # captured here, not in a timed call
        self.out["pdl_graph_capture_s"] = time.perf_counter() - t0
        return {"denoise graph fused few-rows pdl": pdl(lambda: den(self.cache, self.noise, self.steps)),
                "total graph fused few-rows pdl": pdl(total)}

    def encoder_fns(self, total: bool) -> Dict[str, Callable[[], object]]:
        """Vision and the prefix cache graphed; with ``total`` (the denoise's graph works), the all-graphed total."""
        encoder, graph, cache = self.graphs.encoder, self.graphs.denoiser, self.cache
        images, state = self.images, self.state
        masks, tokens, token_mask = self.host_masks, self.host_tokens, self.host_token_mask
        graphed_tokens = encoder.embed_images(images, masks)  # captured here, not in a timed call
        n = cache.num_cached  # the cache's tail is scratch for the action tokens: not compared
        self.out["encoder_vs_eager"] = max_abs(
            encoder.build_cache(graphed_tokens, tokens, token_mask, state).keys[..., :n, :], cache.keys[..., :n, :])
        fns = {"vision graph": lambda: encoder.embed_images(images, masks),
               "prefix_cache graph": lambda: encoder.build_cache(graphed_tokens, tokens, token_mask, state)}
        if total:
            fns["total graph"] = lambda: graph(encoder.build_cache(encoder.embed_images(images, masks), tokens,
                                                                   token_mask, state), self.noise, self.steps)
            fns["total graph"]()  # captured here
            sites: List[str] = []
            self.out["host_waits_total_graph"] = host_waits(fns["total graph"], self.s.device, sites)
            self.out["host_wait_sites_total_graph"] = sites
        return fns

    def parity(self, fns: Dict[str, Callable[[], object]], ref32: torch.Tensor) -> Dict[str, float]:
        """The max abs differences (bfloat16 fast, graphed, fused, reference; float32 reference) and, on the way, the
        peak memory of one observation: what is allocated (weights, this block's tensors, captured graphs) plus the
        run's own peak."""
        model, device, out = self.model, self.s.device, self.out
        reset_peak(device)
        fast = model.denoise(self.encode(), self.noise, self.steps)
        out["peak_memory_gb"] = memory_gb(device)
        parity = {}
        if "denoise graph" in fns:
            reset_peak(device)
            if "vision graph" in fns:
                enc, masks, tokens, token_mask = (self.graphs.encoder, self.host_masks, self.host_tokens,
                                                  self.host_token_mask)
            else:
                enc, masks, tokens, token_mask = model, self.masks, self.tokens, self.token_mask
            graphed = self.graphs.denoiser(enc.build_cache(enc.embed_images(self.images, masks), tokens,
                                                           token_mask, self.state), self.noise, self.steps)
            out["peak_memory_gb_graph"] = memory_gb(device)
            parity["graph_vs_eager"] = max_abs(graphed, fast)
        if "total eager fused" in fns:
            fused_actions = fns["total eager fused"]()
            parity["fused_vs_plain_bf16"] = max_abs(fused_actions, fast)
            parity["fused_bf16_vs_reference_fp32"] = max_abs(fused_actions, ref32)
            if "total graph fused" in fns:
                parity["fused_graph_vs_fused_eager"] = max_abs(fns["total graph fused"](), fused_actions)
        if "denoise graph fused few-rows" in fns and "denoise graph fused" in fns:
            parity["few_rows_vs_fused_graph"] = max_abs(fns["denoise graph fused few-rows"]().clone(),
                                                        fns["denoise graph fused"]().clone())
            if "total graph fused" in fns:
                parity["few_rows_total_vs_fused_total_graph"] = max_abs(fns["total graph fused few-rows"]().clone(),
                                                                        fns["total graph fused"]().clone())
        if "denoise graph fused few-rows pdl" in fns and "denoise graph fused few-rows" in fns:  # 0: same kernels
            parity["pdl_vs_few_rows_graph"] = max_abs(fns["denoise graph fused few-rows pdl"]().clone(),
                                                      fns["denoise graph fused few-rows"]().clone())
            parity["pdl_total_vs_few_rows_total_graph"] = max_abs(fns["total graph fused few-rows pdl"]().clone(),
                                                                  fns["total graph fused few-rows"]().clone())
        if "vision graph" in fns:
            parity.update(self.caches_after(fast))
        # = sample_actions(path="reference")
        ref = reference_denoise(model, self.prefix_pad, self.past, self.state, self.noise, self.steps)
        parity.update({"fast_bf16_vs_reference_fp32": max_abs(fast, ref32),
                       "reference_bf16_vs_reference_fp32": max_abs(ref, ref32),
                       "fast_bf16_vs_reference_bf16": max_abs(fast, ref),
                       "reference_fp32_max_abs": float(ref32.abs().max())})
        return parity

    def caches_after(self, fast: torch.Tensor) -> Dict[str, float]:
        """After the timed calls: the graphed encoder's cache and this block's first eager cache (what the eager and
        compiled denoises read) against a fresh eager one. The last H100 run's encoder_vs_eager (the first replay
        after capture) was nan or 0.5 while the graphed actions equalled the eager ones: these say which cache was
        off, and whether it still is."""
        enc, fresh = self.graphs.encoder, self.encode()
        n = fresh.num_cached
        graphed = enc.build_cache(enc.embed_images(self.images, self.masks), self.tokens, self.token_mask, self.state)
        return {"encoder_graph_cache_vs_fresh_eager": max_abs(graphed.keys[..., :n, :], fresh.keys[..., :n, :]),
                "block_eager_cache_vs_fresh_eager": max_abs(self.cache.keys[..., :n, :], fresh.keys[..., :n, :]),
                "block_eager_cache_actions_vs_fast": max_abs(self.model.denoise(self.cache, self.noise, self.steps),
                                                             fast)}

    def attention(self, keep_s: Callable[[], float]) -> None:
        """turbopi-bench's attention table, with the most cameras only, when the budget leaves it keep_s()."""
        s = self.s
        if self.views == max(s.args.views) and s.budget.fits(
                f"{self.config.variant} {self.views} views attention table", 0 if s.dry else PART_S["attention"],
                keep_s()):
            t0 = time.perf_counter()
            try:
                self.out["attention"] = bench.attention_table(self.model, self.cache, self.prefix_pad, self.past,
                                                              self.state, self.noise, s.table_timer(), self.steps)
            except Exception as e:
                s.budget.failed(self.out, "attention table", e)
            self.attention_s = time.perf_counter() - t0


def _bound_ms(costs, stage: str, matmul_tflops: float, bandwidth_gbs: float) -> float:
    """The roofline lower bound of one stage (of every stage, for "total") at these roofs."""
    stages = costmodel.STAGES if stage == "total" else (stage,)
    return sum(costmodel.stage_bound(costs[s], matmul_tflops, bandwidth_gbs)["bound_ms"] for s in stages)


def efficiency(w, times, peaks, published) -> Dict[str, object]:
    """Every fast timing against the cost model: achieved TFLOP/s and its fraction of this GPU's measured matmul
    rate; the roofline lower bound from the measured rate and copy bandwidth (and from the published peaks) and
    how far the measured time is from it."""
    costs = costmodel.workload_cost(w)
    mm, bw = peaks["matmul"]["tflops"], peaks["copy"]["gbs"]
    spec = costmodel.DEVICES.get(published) if published else None
    rows = {}
    for name, stage in FAST_STAGE.items():
        if name not in times:
            continue
        ms, cost = times[name]["median_ms"], costs[stage]
        bound = _bound_ms(costs, stage, mm, bw)
        bound_pub = _bound_ms(costs, stage, spec.peak_tflops["bfloat16"], spec.bandwidth_gbs) if spec else None
        tflops = cost.tensor_flops / ms / 1e9
        rows[name] = {"gflop": cost.tensor_flops / 1e9, "gbytes": cost.compulsory_bytes / 1e9, "median_ms": ms,
                      "tflops": tflops, "fraction_of_matmul_rate": tflops / mm,
                      "bound_measured_peaks_ms": bound, "bound_over_measured": bound / ms,
                      "bound_published_ms": bound_pub}
    return rows

