#!/usr/bin/env bash
# The test command: set up the venv, then run pytest from the repo root (arguments pass through to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
source scripts/ros_env.sh
exec .venv/bin/python -m pytest "$@"
