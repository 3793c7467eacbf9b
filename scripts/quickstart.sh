#!/usr/bin/env bash
# The main job end to end on the offline benchmark, on CPU in about 6 minutes:
#   1. train a SimCLR victim on mnistm5k (3,000 MNIST digits blended over photographs, 28 px);
#   2. steal it through its representations with MSE and with InfoNCE, 300 queries each (10% of
#      its training set), from its own test split; the last 1,000 test images are never queried;
#   3. linear probes on those 1,000 held-out images: victim, random init, raw pixels, stolen copies.
# Usage: bash scripts/quickstart.sh [extra run.py flags]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
RUN=${RUN_DIR:-runs/quickstart}
RESULTS="$RUN/linear_eval.jsonl"
rm -f "$RESULTS"

echo "== 1/3 train the victim (SimCLR, mnistm5k) -> $RUN/victim"
"$PY" run.py --dataset mnistm5k --logdir "$RUN/victim" --resume "$@"

for loss in mse infonce; do
  echo "== 2/3 steal the victim with $loss (300 queries) -> $RUN/stolen_$loss"
  "$PY" steal.py --victim-checkpoint "$RUN/victim/checkpoint.pt" --losstype "$loss" --num_queries 300 \
      --logdir "$RUN/stolen_$loss" --clear
done

echo "== 3/3 linear probes on mnistm5k (1,000 held-out test images)"
"$PY" linear_eval.py --checkpoint "$RUN/victim/checkpoint.pt" --modeltype victim random pixels --results "$RESULTS"
for loss in mse infonce; do
  "$PY" linear_eval.py --checkpoint "$RUN/stolen_$loss/checkpoint.pt" --modeltype stolen \
      --dataset-test mnistm5k --label "stolen ($loss)" --results "$RESULTS"
done
"$PY" linear_eval.py --summarize "$RESULTS"
