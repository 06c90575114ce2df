#!/usr/bin/env bash
# Creates .venv with Ripple installed (editable). Usage: scripts/setup.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' || {
  echo "Ripple needs Python 3.11 (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
}
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv 2>/dev/null; then
    # Debian splits venv out of the interpreter package
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3.11-venv >/dev/null
      "$PY" -m venv .venv
    else
      echo "cannot create a virtual environment: install python3.11-venv" >&2
      exit 2
    fi
  fi
fi
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"
stamp=".venv/.installed${extra}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".${extra}"
  touch "$stamp"
fi
# The tests run the real tools: promtool (Prometheus rules), amtool (Alertmanager routing),
# headless Chromium (the built-in dashboard, the storefront snippet) and wrk (the collector's
# load test). Debian packages them.
if [ "${1:-}" = "--dev" ]; then
  missing=""
  command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
  command -v amtool >/dev/null 2>&1 || missing="$missing prometheus-alertmanager"
  command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
  command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
  if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing Debian packages:$missing" >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
      echo "the tests need Debian packages:$missing (apt-get install$missing)" >&2
      exit 2
    fi
  fi
fi
