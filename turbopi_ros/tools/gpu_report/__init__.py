"""One command for a GPU (`bash scripts/gpu_report.sh`): full pi0 and pi0.5, bfloat16, measured end to end.

For each preset (random weights, built once on the device and reused by every variant):
  1. float32 on the device: openpi's reference path and the fast path from the same noise, cameras 1-3: the yardstick
     (and the fast path's exactness in float32 on this GPU);
  2. the same weights rounded to bfloat16 (what random_model(dtype="bfloat16") builds), cameras 1-3: the stages
     (vision, prefix cache, denoise eager and as a CUDA graph, totals, the reference), interleaved; the parity of the
     bfloat16 fast path against the float32 reference; the peak GPU memory of the fast path; the attention table of
     turbopi-bench; the efficiency of every stage against the cost model (costmodel.py): TFLOP/s, fraction of this
     GPU's matmul rate, and the roofline lower bound from this GPU's measured matmul rate and copy bandwidth (and from
     its published peaks where costmodel.DEVICES knows it);
  3. the fused layer kernels (model/fused.py, PI0Model.use_fused): every stage eager and graphed with them, their
     parity against the plain path; the fused graphs with the few-rows matmul, and those again with programmatic
     dependent launch (model.pdl, where the GPU has it), each beside the one without and with its parity;
  4. with the most cameras: kernels per stage, plain vs fused (model/opcount.py: aten ops dispatched, and the CUDA
     profiler's kernels); every prompt length of the preset captured up front in one shared pool (capture count,
     time, pool memory) and a run over changing pi0.5 states that must capture nothing more; torch.compile of the
     denoise step with a fresh inductor cache and nothing compiled before (cold start) and, in a new process, from
     that cache (warm start: tools/compile_start.py), eager and as a CUDA graph (the first preset only, unless
     --compile-all), turbopi-bench's table (f) (each optimization undone), real-time chunking's guided denoise
     plain and fused (its graphs, their parity); the expert's weights alone in FP8 (model.dtype fp8_weights): the
     fused few-rows total and denoise graphs on them against the same on bfloat16, interleaved, with parity; last,
     FP8 weights (model/fp8.py, on GPUs of compute capability >= 8.9): their timings and parity against bfloat16
     and the float32 reference.
Writes docs/bench/gpu_<device>.{txt,json} (both after every part, so an interrupted run keeps what it measured; on
SIGINT with the markdown rows) with the commit measured (git rev-parse HEAD; without .git: $TURBOPI_COMMIT or a file
named .commit in the repository root) and prints the markdown rows for docs/performance.md. A time budget
(--budget-s, default 450 s: under 8 minutes on an H100 with the model builds) skips what would not fit, saying so,
the attention table and table (f) first (PART_S, EXPECT_S). A part that fails is reported and the rest stands.

--dry-run runs the same flow on the CPU with the tiny presets, 1-2 cameras, 2 steps and one iteration per timing (CUDA
graphs skipped; torch.compile with dynamo's "eager" backend, so the capture is exercised without inductor's compile
time; graphs replayed as cuda_graph's static replay on CPU; FP8 through its dequantized twin): a check of everything
but the CUDA parts, in seconds (bfloat16 matmuls on a CPU without avx512_bf16 are slow,
openpi's eager masked attention most of all). Its numbers are not measurements. The tests run it.

The package, a module per concept: session (arguments, device, budget, shared helpers), stages (one cameras count:
the stages timed), parts (kernel counts, capture, torch.compile, real-time chunking), fp8_parts, fixtures (openpi's
fixtures), preset (one preset, part by part), printing, run (the whole report and its command line). Run it as
``python -m turbopi_ros.tools.gpu_report`` (what scripts/gpu_report.sh does).
"""
from .fixtures import default_fixtures, fixtures_block
from .fp8_parts import FP8_MODES, fp8_block, fp8_weights_block
from .parts import capture_block, compile_block, counts_block, rtc_block
from .preset import PresetReport
from .printing import print_fixtures, print_views
from .run import DRY_PRESETS, MARKDOWN_HEADER, PRESETS, Run, main, markdown_rows, parse_args
from .session import (EXPECT_S, PART_S, REPO_ROOT, Budget, Report, Session, commit_id, fused_call, measure_peaks,
                      no_tf32, published_device, slug, sync)
from .stages import FAST_STAGE, Graphs, ViewsBlock

__all__ = ["Budget", "DRY_PRESETS", "EXPECT_S", "FAST_STAGE", "FP8_MODES", "Graphs", "MARKDOWN_HEADER", "PART_S",
           "PRESETS", "PresetReport", "REPO_ROOT", "Report", "Run", "Session", "ViewsBlock", "capture_block",
           "commit_id", "compile_block", "counts_block", "default_fixtures", "fixtures_block", "fp8_block",
           "fp8_weights_block", "fused_call", "main", "markdown_rows", "measure_peaks", "no_tf32", "parse_args",
           "print_fixtures", "print_views", "published_device", "rtc_block", "slug", "sync"]
