#!/usr/bin/env bash
# The main job end to end on the offline default data, on CPU in a few minutes:
#   1. train a SimCLR victim on digitsm;
#   2. steal it through its representations with MSE and with InfoNCE (500 queries each,
#      from the victim's own test split; its last 200 images are kept out for evaluation);
#   3. linear probes on digitsm's held-out 200 images: victim, stolen copies, random init, raw pixels.
# Usage: bash scripts/quickstart.sh [extra run.py flags]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
RUN=${RUN_DIR:-runs/quickstart}
RESULTS="$RUN/linear_eval.jsonl"
rm -f "$RESULTS"

echo "== 1/3 train the victim (SimCLR, digitsm) -> $RUN/victim"
"$PY" run.py --dataset digitsm --logdir "$RUN/victim" --resume "$@"

for loss in mse infonce; do
  echo "== 2/3 steal the victim with $loss (500 queries) -> $RUN/stolen_$loss"
  "$PY" steal.py --victim-checkpoint "$RUN/victim/checkpoint.pt" --losstype "$loss" --num_queries 500 \
      --logdir "$RUN/stolen_$loss" --clear
done

echo "== 3/3 linear probes on digitsm (held-out test images)"
"$PY" linear_eval.py --checkpoint "$RUN/victim/checkpoint.pt" --modeltype victim random pixels --results "$RESULTS"
for loss in mse infonce; do
  "$PY" linear_eval.py --checkpoint "$RUN/stolen_$loss/checkpoint.pt" --modeltype stolen \
      --dataset-test digitsm --image-size 16 --label "stolen ($loss)" --results "$RESULTS"
done
"$PY" linear_eval.py --summarize "$RESULTS"
