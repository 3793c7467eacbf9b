"""Append a steal.py run's per-account defense statistics to a results file (several accounts, a Sybil attack).

    python sybil.py --run RUN_DIR --results R.jsonl [--tag KEY=VALUE ...]

The run directory is an in-process ``steal.py --accounts K`` run: its ``accounts.json`` holds
what each account's defenses saw (:func:`attacks.sybil.account_stats`). The library, and how
queries are spread over accounts (``--sybil-split``), is :mod:`attacks.sybil`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from attacks.sybil import summary
from utils import HelpFormatter, UserError, append_jsonl, check_writable, parse_tags, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--run", required=True, help="a steal.py run directory (its accounts.json and config.yaml)")
    p.add_argument("--results", required=True, help="append one JSON record with the run's account statistics")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="extra record fields")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    check_writable(args.results, what="the results file", fix="pass a writable --results PATH")
    run = Path(args.run)
    path = run / "accounts.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist: the run was not made by an in-process steal.py with these "
                        f"statistics; run it again (with --clear)")
    stats = json.loads(path.read_text())
    config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    record = {**parse_tags(args.tag), "run": str(run), "accounts_flag": config.get("accounts"),
              "sybil_split": config.get("sybil_split"), "defenses": config.get("defenses"),
              "num_queries": config.get("num_queries"), "n_views": config.get("n_views"),
              "stats": stats, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    append_jsonl(args.results, record)
    print(f"{run}: {summary(stats)}; appended to {args.results}")
    return record


if __name__ == "__main__":
    run_cli(main)
