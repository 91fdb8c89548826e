"""The report's printed lines, one function per part."""
from __future__ import annotations

from typing import Dict, Optional


from ...model import opcount
from .fp8_parts import FP8_MODES
from .session import Report


def _num(x: Optional[float], fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def print_views(say: Report, views: int, b: Dict) -> None:
    t, p = b["times"], b["parity"]
    print_errors(say, b)
    med = lambda k: f"{t[k]['median_ms']:.2f}" if k in t else "n/a"  # noqa: E731
    say(f"  {views} views ({b['cache_tokens']} cached tokens), median ms: vision {med('vision')} / graph "
        f"{med('vision graph')}, prefix {med('prefix_cache')} / graph {med('prefix_cache graph')}, denoise eager "
        f"{med('denoise eager')} / graph {med('denoise graph')}, total eager "
        f"{med('total eager')} / graph {med('total graph')}; reference denoise {med('reference denoise')}, total "
        f"{med('reference total')}")
    say(f"    fused kernels: denoise eager {med('denoise eager fused')} / graph {med('denoise graph fused')}, "
        f"vision graph {med('vision graph fused')}, prefix graph {med('prefix_cache graph fused')}, total eager "
        f"{med('total eager fused')} / graph {med('total graph fused')}; fused vs plain (bf16) max abs diff "
        f"{_num(p.get('fused_vs_plain_bf16'), '.2e')}, fused vs fp32 reference "
        f"{_num(p.get('fused_bf16_vs_reference_fp32'), '.2e')}")
    if "denoise graph fused few-rows" in t:
        say(f"    few-rows matmul (model/few_rows_matmul.py), fused graphs with it / without: prefix "
            f"{med('prefix_cache graph fused few-rows')} / {med('prefix_cache graph fused')}, denoise "
            f"{med('denoise graph fused few-rows')} / {med('denoise graph fused')}, total "
            f"{med('total graph fused few-rows')} / {med('total graph fused')}; max abs diff of their actions: "
            f"denoise {_num(p.get('few_rows_vs_fused_graph'), '.2e')}, total "
            f"{_num(p.get('few_rows_total_vs_fused_total_graph'), '.2e')}")
    if "denoise graph fused few-rows pdl" in t:
        say(f"    programmatic dependent launch (model.pdl), few-rows graphs with it / without: denoise "
            f"{med('denoise graph fused few-rows pdl')} / {med('denoise graph fused few-rows')}, total "
            f"{med('total graph fused few-rows pdl')} / {med('total graph fused few-rows')}; max abs diff of their "
            f"actions (the same kernels: 0 expected): denoise {_num(p.get('pdl_vs_few_rows_graph'), '.2e')}, total "
            f"{_num(p.get('pdl_total_vs_few_rows_total_graph'), '.2e')}")
    elif "pdl_skipped" in b:
        say(f"    programmatic dependent launch (model.pdl): skipped ({b['pdl_skipped']})")
    say(f"    bf16 fast vs fp32 reference max abs diff {p['fast_bf16_vs_reference_fp32']:.3e} (bf16 reference: "
        f"{p['reference_bf16_vs_reference_fp32']:.3e}; |actions| up to {p['reference_fp32_max_abs']:.2f}); graph "
        f"vs eager {_num(p.get('graph_vs_eager'), '.2e')} (encoder graph's cache vs eager "
        f"{_num(b.get('encoder_vs_eager'), '.2e')}, after the timed calls "
        f"{_num(p.get('encoder_graph_cache_vs_fresh_eager'), '.2e')}, the block's eager cache then "
        f"{_num(p.get('block_eager_cache_vs_fresh_eager'), '.2e')}); peak memory eager "
        f"{_num(b.get('peak_memory_gb'), '.2f')}"
        f" GB, graph {_num(b.get('peak_memory_gb_graph'), '.2f')} GB; host waits in one all-graphed total "
        f"{_num(b.get('host_waits_total_graph'), 'd')}"
        + "".join(f" [{site}]" for site in b.get("host_wait_sites_total_graph") or []))
    print_efficiency(say, b["efficiency"])
    att = b.get("attention")
    if att:
        r = att["replayed"]
        say("    attention, replayed, ms: " + ", ".join(f"{k} {v['median_ms']:.2f} ({v['speedup_vs_eager']:.2f}x)"
                                                       for k, v in r.items()))


def print_efficiency(say: Report, efficiency_rows: Dict) -> None:
    for name, e in efficiency_rows.items():
        pub = e["bound_published_ms"]
        say(f"    {name:<24} {e['gflop']:9.1f} GFLOP {e['median_ms']:9.2f} ms {e['tflops']:8.2f} TFLOP/s "
            f"({e['fraction_of_matmul_rate']:5.1%} of the matmul rate); roofline bound "
            f"{e['bound_measured_peaks_ms']:.2f}"
            f" ms measured peaks ({e['bound_over_measured']:5.1%} of it reached)"
            + (f", {pub:.2f} ms published" if pub is not None else ""))


def print_errors(say: Report, c: Dict) -> None:
    for error in c.get("errors", []):
        say(f"    FAILED {error}")


def print_counts(say: Report, c: Dict) -> None:
    print_errors(say, c)
    if "plain" in c:
        say("    kernels per stage (aten ops dispatched, GPU launches among them; a layer row is one layer):")
        for row in opcount.table(c):
            say(row)


def print_capture(say: Report, c: Dict) -> None:
    print_errors(say, c)
    if "captures" in c:
        pool = c.get("pool_reserved_bytes")
        say(f"    every prompt length captured before ready: {len(c['prompt_lengths'])} lengths, "
            f"{c['captures']} graphs in {c['capture_s']:.1f} s (warm-up {c['warm_up_s']:.1f} s), pool "
            + (f"{pool / 1e6:.0f} MB" if pool is not None else "n/a")
            + f", static buffers {c['static_bytes'] / 1e6:.1f} MB; changing states (lengths "
            f"{sorted(set(c['lengths_seen']))}): {c['captures_after_ready']} captures after ready, total "
            f"{c['replayed_total_ms_median']:.2f} ms median")


def print_fp8(say: Report, c: Dict) -> None:
    print_errors(say, c)
    if "skipped" in c:
        say(f"    fp8: skipped ({c['skipped']})")
    elif "times" in c:
        p = c["parity"]
        say(f"    fp8 ({c['kernels']}, {c['quantized_linears']} linears): "
            + ", ".join(f"{k} {v['median_ms']:.2f} ms" for k, v in c["times"].items())
            + f"; max abs diff vs bf16 {p['fp8_vs_bf16']:.3e}, vs fp32 reference "
            f"{p['fp8_vs_reference_fp32']:.3e} (bf16: {p['bf16_vs_reference_fp32']:.3e})")


def print_fp8_weights(say: Report, c: Dict) -> None:
    print_errors(say, c)
    if "skipped" in c:
        say(f"    fp8 weights: skipped ({c['skipped']})")
        return
    if "times" not in c:
        return
    t, p = c["times"], c["parity"]
    ratios = []
    for what in ("total graph fused few-rows", "denoise graph fused few-rows", "total eager fused few-rows"):
        if f"{what} bf16" in t and f"{what} fp8-weights" in t:
            ratios.append(f"{what} {t[f'{what} bf16']['median_ms']:.2f} -> {t[f'{what} fp8-weights']['median_ms']:.2f}"
                          f" ms ({t[f'{what} bf16']['median_ms'] / t[f'{what} fp8-weights']['median_ms']:.2f}x)")
    say(f"    fp8 weights only ({c['kernels']}, {c['quantized_linears']} expert linears): " + "; ".join(ratios)
        + f"; max abs diff vs bf16 {p['fp8_weights_vs_bf16']:.3e}, vs fp32 reference "
        f"{p['fp8_weights_vs_reference_fp32']:.3e} (bf16: {p['bf16_vs_reference_fp32']:.3e})")


def print_rtc(say: Report, c: Dict) -> None:
    print_errors(say, c)
    if "times" not in c:
        return
    t, p = c["times"], c["parity"]
    ratio = ""
    if "guided graph" in t and "guided graph fused" in t:
        ratio = f" (fused {t['guided graph']['median_ms'] / t['guided graph fused']['median_ms']:.2f}x)"
    say("    real-time chunking, guided denoise: " + ", ".join(f"{k} {v['median_ms']:.2f} ms" for k, v in t.items())
        + ratio + "; max abs diff vs eager guided: "
        + ", ".join(f"{k.replace(' vs guided eager', '')} {v:.2e}" for k, v in p.items() if k.endswith("eager"))
        + f" (guidance moved the actions by {p['guided_vs_unguided']:.2e})")


def print_compile(say: Report, c: Dict) -> None:
    print_errors(say, c)
    if "times" not in c:
        return
    t, w = c["times"], c.get("warm_start", {})
    say(f"    torch.compile ({c['backend']}, cold start {c['compile_s']:.1f} s with a fresh inductor cache "
        f"({_cache_found(c.get('cold_start_cache'))}), warm start {_num(c.get('warm_start_s'), '.1f')} s from it in "
        f"a new process ({_cache_found(w.get('cache'))}; {_num(w.get('process_s'), '.1f')} s with Python, torch and "
        "the model): denoise ms " + ", ".join(f"{k} {v['median_ms']:.2f}" for k, v in t.items())
        + f"; compiled vs eager max abs diff {c['compiled_vs_eager']:.2e}")


def _cache_found(counts: Optional[Dict[str, int]]) -> str:
    if not counts:
        return "FX graph cache n/a"
    def of(kind: str) -> str:
        return ", ".join(f"{counts.get(f'{kind}_{what}', 0)} {word}"
                         for what, word in (("hit", "hits"), ("miss", "misses"), ("bypass", "bypassed")))
    return f"FX graph cache {of('fxgraph_cache')}; AOTAutograd cache {of('autograd_cache')}"


def print_fixtures(say: Report, c: Dict) -> None:
    if "skipped" in c:
        return say(f"openpi fixtures: skipped ({c['skipped']})")
    print_errors(say, c)
    for variant in ("pi0", "pi05"):
        row = c.get(variant)
        if row:
            say(f"openpi fixtures, {variant} case a, fast path vs openpi's actions, max abs diff: "
                + ", ".join(f"{k.split('_vs_')[0]} {v:.2e}" for k, v in row.items() if k.endswith("_vs_openpi"))
                + "".join(f"; {mode} vs bfloat16 {row[f'{mode}_vs_bfloat16']:.2e}" if f"{mode}_vs_bfloat16" in row
                          else f"; {mode}: {row.get(mode)}" for mode in FP8_MODES)
                + f" (|actions| up to {row['openpi_max_abs']:.2f})")


def print_ablation(say: Report, rows: Dict) -> None:
    if "errors" in rows:
        return print_errors(say, rows)
    say("    (f) each optimization undone, denoise eager, ms: " + ", ".join(
        f"{k.split(' ->')[0]} {r['median_ms']:.2f} ({r['slowdown']:.2f}x, {r['ops']} ops)" for k, r in rows.items()))

