#!/usr/bin/env bash
# The companion study, classifier extraction with self-supervised pre-training (see scripts/tables.py --help
# and sslextract.py --help): bash scripts/sslextract.sh [--scale cpu|paper] [--dry-run] [--seeds 0 1 2] [-data DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PY" scripts/tables.py sslextract "$@"
