"""The FP8 parts, with the most cameras: the expert's weights alone in FP8 (model.dtype fp8_weights) and
every linear in FP8 (model.dtype fp8), each against bfloat16."""
from __future__ import annotations

import functools
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .. import bench
from ...model import fp8
from ...model.cuda_graph import CudaGraphDenoiser, CudaGraphEncoder, GraphPool, host_inputs
from .session import Session, fused_call, max_abs, try_variants


FP8_MODES = ("fp8", fp8.WEIGHTS_ONLY)  # model.dtype's FP8 values: everything in FP8, the expert's weights alone


def _fp8_refusal(s: Session, mode: str) -> Optional[Dict[str, object]]:
    """The part's result where this device cannot run FP8 ``mode`` (said once), else None (a dry run: the twins)."""
    ok, why = fp8.fp8_support(s.device, mode)
    if ok or s.dry:
        return None
    s.budget.skip_once(why)
    return {"skipped": why}


def _eager_total(model, inputs, steps) -> Callable[[], torch.Tensor]:
    """One observation's actions through the model as it is now (bench.make_inputs's ``inputs``)."""
    images, masks, tokens, token_mask, state, noise = inputs
    return lambda: model.denoise(model.encode(images, masks, tokens, token_mask, state), noise, steps)


def _total_graphed(model, pool: GraphPool, inputs, steps, fused_kernels: bool,
                   few_rows: bool = False) -> Callable[[], object]:
    """The total as CUDA graphs on the model's current weights (the FP8 parts'), plain or with the fused kernels
    (and ``few_rows``: the few-rows matmul; captured by its first call)."""
    images, masks, tokens, token_mask, state, noise = inputs
    masks, tokens, token_mask = host_inputs(masks, tokens, token_mask)  # as Policy.run gives them
    enc, den = CudaGraphEncoder(model, pool=pool), CudaGraphDenoiser(model, pool=pool)

    def graphed():
        return den(enc.build_cache(enc.embed_images(images, masks), tokens, token_mask, state), noise, steps)

    return fused_call(model, graphed, few_rows) if fused_kernels else graphed


def _expert_linears(model) -> List[Tuple[torch.nn.Module, str, torch.nn.Module]]:
    """(owner, name, module) of every linear fp8.quantize_model(weights_only=True) replaces, to put them back."""
    return [(owner, name, child) for layer in model.expert.layers for owner in layer.modules()
            for name, child in owner.named_children() if name in fp8.QUANTIZED]


def _few_rows_variants(s: Session, model, inputs, steps, tag: str):
    """(label, make) of the fused few-rows total and denoise on the model's current weights: CUDA graphs where the
    session has them, else eager."""
    images, masks, tokens, token_mask, state, noise = inputs
    if not s.graphs:
        total = _eager_total(model, inputs, steps)
        return [(f"total eager fused few-rows {tag}", lambda: fused_call(model, total, True))]

    def denoise_graph():
        cache, den = model.encode(images, masks, tokens, token_mask, state), CudaGraphDenoiser(model,
                                                                                              pool=s.graph_pool())
        return fused_call(model, lambda: den(cache, noise, steps), True)

    return [(f"total graph fused few-rows {tag}",
             functools.partial(_total_graphed, model, s.graph_pool(), inputs, steps, True, True)),
            (f"denoise graph fused few-rows {tag}", denoise_graph)]


def fp8_weights_block(s: Session, model, config, views: int, prompt_len: int,
                      ref32: torch.Tensor) -> Dict[str, object]:
    """FP8 weights only (model.dtype fp8_weights: the expert's linears as fp8.FP8WeightLinear, read by the few-rows
    matmul at half bfloat16's bytes): the fused few-rows total and denoise graphs on them and on the bfloat16
    weights, timed interleaved, with the parity against bfloat16 and the float32 reference. The bfloat16 linears
    are put back after (the fp8 block follows). Refused devices report why."""
    refused = _fp8_refusal(s, fp8.WEIGHTS_ONLY)
    if refused:
        return refused
    out: Dict[str, object] = {"kernels": "twin on CPU (dry run)" if s.dry else "few_rows_matmul on FP8 weights"}
    steps, inputs = s.args.steps, bench.make_inputs(config, views, prompt_len, s.device, s.args.seed)
    total, originals = _eager_total(model, inputs, steps), _expert_linears(model)
    try:
        with torch.inference_mode():
            bf16 = total()
            out["parity"] = {"bf16_vs_reference_fp32": max_abs(bf16, ref32)}
            fns = try_variants(s, out, _few_rows_variants(s, model, inputs, steps, "bf16"), bf16, "eager bf16")
            out["quantized_linears"] = fp8.quantize_model(model, check_device=not s.dry, weights_only=True)
            actions = total()
            out["parity"].update(fp8_weights_vs_bf16=max_abs(actions, bf16),
                                 fp8_weights_vs_reference_fp32=max_abs(actions, ref32))
            fns.update(try_variants(s, out, _few_rows_variants(s, model, inputs, steps, "fp8-weights"), actions,
                                    "eager fp8-weights"))
            times = s.timer()(fns)
        out["times"] = {k: bench.summary(v) for k, v in times.items()}
    except Exception as e:
        return s.budget.failed(out, "fp8 weights", e)
    finally:
        for owner, name, child in originals:
            setattr(owner, name, child)
        model.clear_step_conditioning()
    return out


def fp8_block(s: Session, model, config, views: int, prompt_len: int, ref32: torch.Tensor) -> Dict[str, object]:
    """FP8 weights (last: the model's weights are quantized in place): eager and graphed totals, plain and fused,
    and the parity against the bfloat16 fast path and the float32 reference. Refused devices report why; a variant
    that fails (a fused kernel, a capture) is reported and the others stand."""
    refused = _fp8_refusal(s, "fp8")
    if refused:
        return refused
    out: Dict[str, object] = {"kernels": "dequantized twin on CPU (dry run)" if s.dry else "torch._scaled_mm"}
    steps, inputs = s.args.steps, bench.make_inputs(config, views, prompt_len, s.device, s.args.seed)
    total = _eager_total(model, inputs, steps)
    try:
        with torch.inference_mode():
            bf16 = total()
            out["quantized_linears"] = fp8.quantize_model(model, check_device=not s.dry)
            actions = total()
            out["parity"] = {"fp8_vs_bf16": max_abs(actions, bf16),
                             "fp8_vs_reference_fp32": max_abs(actions, ref32),
                             "bf16_vs_reference_fp32": max_abs(bf16, ref32)}
            fns = {"total eager fp8": total}
            variants = [("total eager fused fp8", lambda: fused_call(model, total))]
            if s.graphs:
                variants += [(label, functools.partial(_total_graphed, model, s.graph_pool(), inputs, steps, on))
                             for label, on in (("total graph fp8", False), ("total graph fused fp8", True))]
            fns.update(try_variants(s, out, variants, actions, "eager fp8"))
            times = s.timer()(fns)
        out["times"] = {k: bench.summary(v) for k, v in times.items()}
    except Exception as e:
        return s.budget.failed(out, "fp8", e)
    return out

