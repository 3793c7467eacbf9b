#!/usr/bin/env bash
# Query efficiency: stolen accuracy against the number of queries from the victim's own distribution (see scripts/tables.py --help): bash scripts/efficiency.sh [--scale cpu|paper] [--dry-run] [--seeds 0 1 2] [-data DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PY" scripts/tables.py efficiency "$@"
