#!/usr/bin/env bash
# The test command: set up the venv, then run pytest from the repo root (arguments pass through to pytest).
# TURBOPI_ROS_DISTRO=jazzy runs it in the Jazzy venv instead (scripts/distro.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
source scripts/distro.sh
source scripts/ros_env.sh
"$VENV/bin/python" -m turbopi_ros.ros.ros_compat
exec "$VENV/bin/python" -m pytest "$@"
