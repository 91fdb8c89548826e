#!/usr/bin/env bash
# The GPU report on a lent GPU machine, in one call whose files under OUT_DIR come back:
#   here, before the call:  git rev-parse HEAD > .commit   (the copy that travels has no .git; an untracked .commit
#                           travels with it; do not run this on the device, where it would empty the file)
#                           mkdir -p .fixtures && cp -r ../shared/fixtures/openpi .fixtures/   (openpi's fixtures:
#                           git-ignored, so the call carries ".fixtures"; the report's FP8/bf16 parity on them)
#   the call (timeout 590): bash scripts/gpu_report_device.sh "$OUT"
# Writes OUT_DIR/gpu_env.txt (the commit file, nvidia-smi, Python, torch, CUDA and Triton versions), then runs
# scripts/gpu_report.sh --out-dir OUT_DIR (its budget: 450 s; it took 270 s on an H200) under
# `timeout -s INT` (TURBOPI_REPORT_TIMEOUT_S, default 470 s, then 20 s to end before SIGKILL), then in the time left
# tools/attention_bench.py, gemm_bench.py and kernel_profile.py (OUT_DIR/<tool>.txt; all inside the call's 590 s), then
# the suite's CUDA tests if time is left: a report that runs long is interrupted and still writes its
# gpu_<device>.txt and .json with what it measured (they are also rewritten after every part). Everything it prints,
# the tools' stderr and the tests' output are kept in OUT_DIR/gpu_report.log: OUT_DIR holds 7 files, and the device
# tool brings back at most 8 (the log says so if there are more). Further arguments go to gpu_report (--dry-run runs
# it on the CPU).
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
PYTHON=$py timeout -s INT -k 20 "${TURBOPI_REPORT_TIMEOUT_S:-470}" bash scripts/gpu_report.sh --out-dir "$out" "$@" 2>&1 \
  | tee "$out/gpu_report.log"
rc=${PIPESTATUS[0]}
echo "gpu_report exit status $rc (124: stopped by the timeout)" | tee -a "$out/gpu_report.log"
# then, in what is left of the call (TURBOPI_DEVICE_DEADLINE_S, default 575 s from this script's start), the
# attention table (tools/attention_bench.py, up to 60 s), the expert's matmuls against a candidate kernel
# (tools/gemm_bench.py, up to 60 s) and the kernel profile (tools/kernel_profile.py, up to 90 s)
# (with --dry-run: theirs, on the CPU; the two Triton benches under Triton's interpreter), each one's stderr appended
# to the log, then the suite's CUDA tests (up to 90 s; on a CPU they skip)
deadline=${TURBOPI_DEVICE_DEADLINE_S:-575}
log=$out/gpu_report.log
dry=()
case " $* " in *" --dry-run "*) dry=(--dry-run) ;; esac
err=$(mktemp)
for tool in attention_bench:60 gemm_bench:60 kernel_profile:90; do
  name=${tool%%:*}
  left=$((deadline - SECONDS))
  [ "$left" -lt 20 ] && { echo "skipped $name: ${left} s left" | tee -a "$log"; continue; }
  limit=$(( left < ${tool##*:} ? left : ${tool##*:} ))
  interpret=()
  [ "$name" != kernel_profile ] && [ ${#dry[@]} -gt 0 ] && interpret=(TRITON_INTERPRET=1)
  env "${interpret[@]}" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout -k 5 "$limit" "$py" \
    -m "turbopi_ros.tools.$name" --out "$out/$name.txt" "${dry[@]}" >/dev/null 2>"$err"
  status=$?
  [ -s "$err" ] && { echo "--- $name stderr:"; cat "$err"; } >>"$log"
  echo "$name exit status $status (124: stopped after $limit s)" | tee -a "$log"
done
rm -f "$err"
left=$((deadline - SECONDS))
if [ "$left" -lt 30 ]; then
  echo "skipped the CUDA tests: ${left} s left" | tee -a "$log"
else
  limit=$(( left < 90 ? left : 90 ))
  echo "--- the suite's CUDA tests (pytest -k cuda):" >>"$log"
  timeout -k 5 "$limit" "$py" -m pytest -q -p no:cacheprovider -rs test/test_cuda_graph.py test/test_fused_grad.py \
    test/test_rtc.py test/test_stage_clock.py -k cuda >>"$log" 2>&1
  echo "CUDA tests exit status $? (124: stopped after $limit s)" | tee -a "$log"
fi
files=$(find "$out" -mindepth 1 | wc -l)
[ "$files" -gt 8 ] && echo "warning: $files entries in $out; the device tool brings back at most 8 files: $(ls "$out" | tr '\n' ' ')" | tee -a "$log"
exit "$rc"
