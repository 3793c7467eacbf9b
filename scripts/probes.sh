#!/usr/bin/env bash
# Both linear probes on models of the cpu Table 2 (mnistm5k column; rows $ROWS, default victim, random,
# mse, infonce, softnn; seeds $SEEDS, default 0 1 2): the reference's
# probe (linear_eval.py --probe reference: Adam through the frozen encoder, 100 epochs, train-mode
# BatchNorm) beside ours (--probe lbfgs, whose numbers are the committed Table 2 records), so the
# report can show how far the two probes differ (docs/differences.md, difference 5).
#   bash scripts/probes.sh            # needs the Table 2 models in runs/ (bash scripts/table2.sh first)
# Resumable: an evaluation already in results/probes_cpu.jsonl is skipped. Results: results/probes_cpu.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-results/probes_cpu.jsonl}
SEEDS=${SEEDS:-0 1 2}
ROWS=${ROWS:-victim random mse infonce softnn}
"$PY" - "$OUT" "$ROWS" $SEEDS <<'PYEOF' | while read -r row seed modeltype ckpt; do
import json, sys
from pathlib import Path
out, rows, seeds = Path(sys.argv[1]), set(sys.argv[2].split()), set(sys.argv[3:])
done = set()
if out.exists():
    done = {(r["row"], str(r["seed"])) for r in map(json.loads, out.read_text().splitlines()) if r.strip()}
for line in Path("results/table2_cpu.jsonl").read_text().splitlines():
    r = json.loads(line)
    if r["column"] != "mnistm5k" or r["row"] not in rows or str(r["seed"]) not in seeds:
        continue
    if (r["row"], str(r["seed"])) in done:
        continue
    if not Path(r["checkpoint"]).is_file():
        sys.exit(f"missing {r['checkpoint']}: run bash scripts/table2.sh --seeds {' '.join(sorted(seeds))} first")
    print(r["row"], r["seed"], r["modeltype"], r["checkpoint"])
PYEOF
  echo "== probe reference: $row seed $seed ($ckpt)"
  "$PY" linear_eval.py --checkpoint "$ckpt" --modeltype "$modeltype" --dataset-test mnistm5k --probe reference \
      --seed "$seed" --results "$OUT" --tag table=probes --tag scale=cpu --tag row="$row" --tag column=mnistm5k \
      --tag probe=reference
done
