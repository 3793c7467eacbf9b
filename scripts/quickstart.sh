#!/usr/bin/env bash
# The main job end to end on the offline default data, on CPU in a few minutes:
# train a SimCLR victim on digitsm, then compare linear probes on its frozen
# representation, on the same architecture at random initialisation, and on raw pixels.
# Usage: bash scripts/quickstart.sh [extra run.py flags]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
RUN=${RUN_DIR:-runs/quickstart}

echo "== 1/2 train the victim (SimCLR, digitsm) -> $RUN"
"$PY" run.py --dataset digitsm --logdir "$RUN" --resume "$@"

echo "== 2/2 linear probes on digitsm (victim vs random init vs raw pixels)"
"$PY" linear_eval.py --checkpoint "$RUN/checkpoint.pt" --modeltype victim random pixels \
    --results "$RUN/linear_eval.jsonl"
