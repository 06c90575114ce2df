#!/usr/bin/env bash
# Sets up everything the tests need and runs the whole suite: lint, types, unit and
# integration tests (the integration tests start the embedded broker and chDB).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
# pytest exits 5 when it collects no test: that is a failure here too
exec .venv/bin/python -m pytest "$@"
