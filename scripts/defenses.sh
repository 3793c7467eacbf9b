#!/usr/bin/env bash
# The serving-side defense tables (Tables 10-15, proof of work, prediction poisoning, several accounts), then the report:
#   bash scripts/defenses.sh [--scale cpu|paper] [--dry-run] [--seeds 0 1 2] [-data DIR]
# Each table resumes from its records in results/ (see scripts/tables.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
for table in table13 pow table10 table11 table12 poison sybil; do
  "$PY" scripts/tables.py "$table" "$@"
done
case " $* " in *" --dry-run "*) ;; *) "$PY" report.py ;; esac
