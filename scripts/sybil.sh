#!/usr/bin/env bash
# Reproduce the Sybil table: the table12 attacker over 1, 2, 4, 8 accounts against detection and proof of work (see scripts/tables.py --help): bash scripts/sybil.sh [--scale cpu|paper] [--dry-run] [--seeds 0 1 2] [-data DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PY" scripts/tables.py sybil "$@"
