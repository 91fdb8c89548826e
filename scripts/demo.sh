#!/usr/bin/env bash
# The main job: set up the venv, check the engine against openpi's fixtures (turbopi-verify, both paths), then run the
# live demo (python -m turbopi_ros.tools.demo; arguments pass through to it). TURBOPI_ROS_DISTRO=jazzy runs it in the Jazzy
# venv instead (scripts/distro.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
source scripts/distro.sh
source scripts/ros_env.sh
"$VENV/bin/python" -m turbopi_ros.ros.ros_compat

fixtures=${TURBOPI_SHARED_DIR:-../shared}/fixtures/openpi
if [ -d "$fixtures" ]; then
  echo "== parity with openpi's PyTorch reference (float32, CPU, tolerance 1e-4) =="
  for model in pi0 pi05; do
    for path in fast reference; do
      "$VENV/bin/turbopi-verify" --config "$fixtures/${model}_tiny.json" \
        --weights "$fixtures/${model}_tiny.safetensors" --case "$fixtures/${model}_case_a.npz" --path "$path" --tol 1e-4
    done
  done
else
  echo "== $fixtures not found: skipping the openpi parity check (it needs the shared fixtures beside this repo) =="
fi

if [ ! -f turbopi_ros/demo.py ]; then
  echo "== live demo skipped: turbopi_ros/demo.py is missing (python -m turbopi_ros.tools.demo) =="
  exit 0
fi
echo "== live demo: python -m turbopi_ros.tools.demo $* =="
exec "$VENV/bin/python" -m turbopi_ros.tools.demo "$@"
