#!/usr/bin/env bash
# One command for a GPU: full pi0 and pi0.5 (random weights, bfloat16), cameras 1-3, CUDA graphs, the fused kernels
# and torch.compile on/off, stages, kernel counts per stage (plain vs fused), every prompt length captured up front
# (capture count, time, pool memory; none after ready), attention table, bf16- and fp8-vs-fp32 parity, peak memory,
# cold and warm start of torch.compile (a fresh TORCHINDUCTOR_CACHE_DIR), efficiency against the cost model, and the
# commit measured. Writes docs/bench/gpu_<device>.{txt,json} and prints the rows for docs/performance.md
# (turbopi_ros/tools/gpu_report/, a package: python -m turbopi_ros.tools.gpu_report).
#   bash scripts/gpu_report.sh               # on a CUDA machine: a 450 s budget, under 8 minutes on an H100
#   bash scripts/gpu_report.sh --dry-run     # the same flow on the CPU with the tiny presets (seconds)
# A copy of the work tree without .git names its commit with TURBOPI_COMMIT=... or a file .commit in the root
# (git rev-parse HEAD > .commit before copying).
# Python: $PYTHON if set, else this repository's .venv, else python3. Nothing is installed: on a GPU machine torch
# with CUDA is the user's (the venv's pinned torch is a CPU build); the report needs torch and numpy only.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
  py=$PYTHON
elif [ -x .venv/bin/python ]; then
  py=.venv/bin/python
else
  py=python3
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" -m turbopi_ros.tools.gpu_report "$@"
