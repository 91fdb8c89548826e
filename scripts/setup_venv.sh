#!/usr/bin/env bash
# Create the venv (if missing) and install the pinned dependencies and this package (editable) into it. The venv and
# its ROS 2 wheels follow TURBOPI_ROS_DISTRO (scripts/distro.sh): kilted (default) makes .venv, jazzy .venv-jazzy.
# Idempotent and quick: a stamp holding the hash of the dependency and packaging files skips pip when nothing changed
# and the package still imports. PYTHON=python3.10 picks another interpreter for a new venv.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/distro.sh
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "setup: $PYTHON is $("$PYTHON" --version 2>&1); Python 3.10 or newer is needed" >&2; exit 1; }
  echo "setup: creating $VENV ($TURBOPI_ROS_DISTRO) with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.turbopi-installed"
want=$(cat "$ROS_REQUIREMENTS" requirements.txt constraints.txt setup.py setup.cfg package.xml | sha256sum)
want=${want%% *}
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$VENV/bin/python" -c 'import turbopi_ros' 2>/dev/null; then
  echo "setup: installing pinned dependencies ($ROS_REQUIREMENTS) into $VENV (torch held at 2.13.0 by constraints.txt)"
  pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  "${pip[@]}" -r "$ROS_REQUIREMENTS" -c constraints.txt
  # editable: code changes need no reinstall; only entry points and packaging (hashed above) do
  "${pip[@]}" --no-deps -e . -c constraints.txt
  echo "$want" > "$stamp"
  echo "setup: done"
fi
