"""Reproduce one of the paper's tables: train the victim, steal it, probe every encoder.

  python scripts/tables.py table2 --scale cpu            # offline digitsm, minutes on 2 cores
  python scripts/tables.py table2 --scale paper -data D  # the paper's setup (GPU and real data)
  python scripts/tables.py table7 --scale paper --dry-run  # print the commands only

Tables: table1 (attack methods), table2 (losses), table5 (losses, another victim dataset),
table7 (number of queries, out-of-distribution queries; Tables 6-7), table9 (number of
queries from the victim's own training data, SoftNN). ``--scale cpu`` keeps each table's
structure on the offline data: the digitsm victim stands for CIFAR10 (digits for SVHN in
table5), ``patches`` for the out-of-distribution SVHN queries, and the downstream columns
are digitsm and digits instead of CIFAR10 / STL10 / SVHN.

Every step is skipped when its output exists (a finished checkpoint, or a record with the
same table/row/column/seed in the results file), so an interrupted run continues where it
stopped. Probe records go to ``results/<table>.jsonl`` (``--results``); ``report.py``
turns them into ``results/REPORT.md``.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils import SCALE_PRESETS, UserError, read_jsonl, run_cli  # noqa: E402

# per scale: victim datasets, downstream columns, queries, and the OOD query set
SETUP = {
    "cpu": {"victim": "digitsm", "victim5": "digits", "columns": ["digitsm", "digits"], "queries": 500,
            "ood": "patches", "table7_queries": [100, 250, 500, 1000, 2000], "table7_losses": ["mse", "infonce"],
            "table9_queries": [250, 500, 1000], "step_budget": 50_000},
    "paper": {"victim": "cifar10", "victim5": "svhn", "columns": ["cifar10", "stl10", "svhn"], "queries": 9000,
              "ood": "svhn", "table7_queries": [500, 1000, 5000, 10000, 20000, 30000, 50000],
              "table7_losses": ["softnn", "mse", "infonce"],
              "table9_queries": [500, 1000, 5000, 10000, 20000, 30000, 40000, 50000], "step_budget": None},
}
TABLES = ("table1", "table2", "table5", "table7", "table9")


@dataclass
class Step:
    script: str                     # run, steal, stealhead, linear_eval
    argv: list[str]
    done_when: str = ""             # a checkpoint path, or "" for probes (checked in the results file)
    tags: dict = field(default_factory=dict)

    def command(self) -> str:
        return " ".join(["python", f"{self.script}.py"] + [shlex.quote(a) for a in self.argv])


def victim_checkpoint(dataset: str, scale: str, seed: int) -> str:
    preset = SCALE_PRESETS[scale]
    return f"runs/victim_{dataset}_{preset['arch']}_w{preset['width']}_s{seed}/checkpoint.pt"


def plan(table: str, scale: str, seeds: list[int], data: str | None, results: str) -> list[Step]:
    s = SETUP[scale]
    data_flags = ["-data", data] if data else []
    victim_ds = s["victim5"] if table == "table5" else s["victim"]
    steps: list[Step] = []
    for seed in seeds:
        vckpt = victim_checkpoint(victim_ds, scale, seed)
        steps.append(Step("run", ["--dataset", victim_ds, "--seed", str(seed), "--resume", "--scale", scale]
                          + data_flags, done_when=vckpt))
        # (row, script, steal flags) for the encoder rows; victim and random are probed directly
        rows: list[tuple[str, str, list[str], dict]] = []
        q = str(s["queries"])
        if table == "table1":
            rows = [("direct", "steal", ["--losstype", "softnn", "--num_queries", q], {}),
                    ("recreate_head", "stealhead", ["--num_queries", q], {}),
                    ("access_head", "steal", ["--losstype", "infonce", "--victimhead", "True", "--num_queries", q], {})]
        elif table in ("table2", "table5"):
            losses = ["mse", "infonce", "softnn", "wasserstein", "supcon", "barlow"]
            if table == "table5":
                losses.insert(5, "symmetrized")
            rows = [(loss, "steal", ["--losstype", loss, "--num_queries", q], {}) for loss in losses]
        elif table in ("table7", "table9"):
            losses = s["table7_losses"] if table == "table7" else ["softnn"]
            counts = s["table7_queries"] if table == "table7" else s["table9_queries"]
            source = ["--datasetsteal", s["ood"]] if table == "table7" else ["--force", "True"]
            for loss in losses:
                for n in counts:
                    extra = []
                    if s["step_budget"]:  # CPU: same number of image-steps for every query count
                        extra = ["--epochs", str(max(10, min(100, s["step_budget"] // n)))]
                    rows.append((f"{loss}_{n}", "steal", ["--losstype", loss, "--num_queries", str(n)] + source + extra,
                                 {"loss": loss, "queries": n}))
        probes: list[tuple[str, str, str, dict]] = [("victim", "victim", vckpt, {}), ("random", "random", vckpt, {})]
        for row, script, flags, extra_tags in rows:
            logdir = f"runs/{table}_{scale}/{row}_s{seed}"
            steps.append(Step(script, ["--victim-checkpoint", vckpt, "--seed", str(seed), "--logdir", logdir,
                                       "--clear"] + flags + data_flags, done_when=f"{logdir}/checkpoint.pt"))
            probes.append((row, "stolen", f"{logdir}/checkpoint.pt", extra_tags))
        for row, modeltype, ckpt, extra_tags in probes:
            for column in s["columns"]:
                tags = {"table": table, "scale": scale, "row": row, "column": column, "seed": str(seed), **extra_tags}
                argv = ["--checkpoint", ckpt, "--modeltype", modeltype, "--dataset-test", column,
                        "--seed", str(seed), "--label", row, "--results", results] + data_flags
                argv += [a for k, v in tags.items() for a in ("--tag", f"{k}={v}")]
                steps.append(Step("linear_eval", argv, tags=tags))
    return steps


def is_done(step: Step, records: list[dict]) -> bool:
    if step.done_when:
        path = ROOT / step.done_when
        if not path.is_file():
            return False
        from models import load_checkpoint

        try:
            ckpt = load_checkpoint(path)
        except UserError:
            return False
        return ckpt.get("epoch") == (ckpt.get("config") or {}).get("epochs")
    keys = ("table", "scale", "row", "column", "seed")
    return any(all(str(r.get(k)) == str(step.tags[k]) for k in keys) for r in records)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", choices=TABLES, help="which table")
    p.add_argument("--scale", default="cpu", choices=["cpu", "paper"], help="offline CPU analogue, or the paper's setup")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (victim and attack); mean +- std in the report")
    p.add_argument("-data", "--data", dest="data", default=None, help="root of the real datasets (paper scale)")
    p.add_argument("--results", default=None, help="results file (default: results/<table>_<scale>.jsonl)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return p


def main(argv=None) -> list[Step]:
    args = build_parser().parse_args(argv)
    results = args.results or f"results/{args.table}_{args.scale}.jsonl"
    steps = plan(args.table, args.scale, args.seeds, args.data, results)
    if args.dry_run:
        for step in steps:
            print(step.command())
        return steps
    import os

    os.chdir(ROOT)
    for i, step in enumerate(steps, 1):
        if is_done(step, read_jsonl(results)):
            print(f"[{i}/{len(steps)}] done already: {step.command()}", flush=True)
            continue
        print(f"[{i}/{len(steps)}] {step.command()}", flush=True)
        module = __import__(step.script)
        module.main(step.argv)
    print(f"\n{args.table} ({args.scale}): results in {results}; `python report.py` writes results/REPORT.md")
    return steps


if __name__ == "__main__":
    run_cli(main)
