#!/usr/bin/env bash
# Reproduce the paper's table8 (see scripts/tables.py --help): bash scripts/table8.sh [--scale cpu|paper] [--dry-run] [--seeds 0 1 2] [-data DIR] [--pretrained SIMSIAM_CKPT] [--nproc GPUS]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PY" scripts/tables.py table8 "$@"
