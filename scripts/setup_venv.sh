#!/usr/bin/env bash
# Create .venv at the repo root (if missing) and install the pinned dependencies and this package into it.
# Idempotent: a stamp holding the hash of the dependency files skips pip when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.turbopi-installed"
want=$(cat requirements.txt constraints.txt setup.py setup.cfg package.xml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing pinned dependencies into $VENV (torch held at 2.13.0 by constraints.txt)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt -c constraints.txt
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e . -c constraints.txt
  echo "$want" > "$stamp"
fi
