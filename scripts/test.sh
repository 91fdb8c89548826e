#!/usr/bin/env bash
# The test command: set up the venv, then run pytest from the repo root (arguments pass through to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
# Each run gets its own DDS domain on this host only, so parallel runs and other ROS graphs cannot cross-talk.
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( (RANDOM % 101) + 1 ))}
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
export RMW_IMPLEMENTATION=${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
exec .venv/bin/python -m pytest "$@"
