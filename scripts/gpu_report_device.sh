#!/usr/bin/env bash
# The GPU report on a lent GPU machine, in one call whose files under OUT_DIR come back:
#   here, before the call:  git rev-parse HEAD > .commit   (the copy that travels has no .git; an untracked .commit
#                           travels with it; do not run this on the device, where it would empty the file)
#                           mkdir -p .fixtures && cp -r ../shared/fixtures/openpi .fixtures/   (openpi's fixtures:
#                           git-ignored, so the call carries ".fixtures"; the report's FP8/bf16 parity on them)
#   the call (timeout 590): bash scripts/gpu_report_device.sh "$OUT"
# Writes OUT_DIR/gpu_env.txt (the commit file, nvidia-smi, Python, torch, CUDA and Triton versions), then runs
# scripts/gpu_report.sh --out-dir OUT_DIR (its budget: 450 s, under 8 minutes on an H100) under
# `timeout -s INT` (TURBOPI_REPORT_TIMEOUT_S, default 555 s, then 20 s to end before SIGKILL: with this script's own
# few seconds, inside the call's 590 s): a report that runs long is interrupted and still writes its
# gpu_<device>.txt and .json with what it measured (they are also rewritten after every part). Everything it prints
# is kept in OUT_DIR/gpu_report.log. Further arguments go to gpu_report (--dry-run runs it on the CPU).
# Python: $PYTHON, else python3 (the device's, with CUDA torch and Triton).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash scripts/gpu_report_device.sh OUT_DIR [gpu_report options]}
shift
mkdir -p "$out"
py=${PYTHON:-python3}
{
  date -u
  echo "commit file: $(head -n 1 .commit 2>/dev/null || echo 'none (git rev-parse HEAD > .commit before the copy)')"
  if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "no nvidia-smi"; fi
  "$py" - <<'EOF'
import platform
import torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (no CUDA device)")
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton: not installed (the fused kernels run their torch twins)")
EOF
} >"$out/gpu_env.txt" 2>&1
PYTHON=$py timeout -s INT -k 20 "${TURBOPI_REPORT_TIMEOUT_S:-555}" bash scripts/gpu_report.sh --out-dir "$out" "$@" 2>&1 \
  | tee "$out/gpu_report.log"
rc=${PIPESTATUS[0]}
echo "gpu_report exit status $rc (124: stopped by the timeout)" | tee -a "$out/gpu_report.log"
exit "$rc"
