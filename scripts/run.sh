#!/usr/bin/env bash
# Sets up .venv when needed, then runs the ripple command line: scripts/run.sh up --demo
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/ripple "$@"
