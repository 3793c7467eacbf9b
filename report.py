"""Write results/REPORT.md: our reproductions of the paper's tables beside its numbers.

Reads the probe records that scripts/tables.py appends to ``results/<table>_<scale>.jsonl``
and the paper's numbers from ``docs/paper_results.yaml``. Per table: our top-1 as mean ±
95% confidence interval over seeds (Student t), the paper's value beside it, the paper's
claims checked, and PNG plots with error bars (accuracy versus number of queries, loss
bars, and the query-efficiency figure).

Every claim follows one statistics rule, written once in ``reports/stats.py`` and stated at
the top of the report: rows that share their seeds are compared paired by seed (otherwise by
an unpaired Welch interval), and a claim of no difference needs an equivalence test with a
margin of 2 points (else it is "not shown").

  python report.py                      # all results/*.jsonl -> results/REPORT.md + PNGs
  python report.py --results-dir R --out R/REPORT.md
"""
from __future__ import annotations

import argparse
from pathlib import Path

from reports.document import write_report
from utils import HelpFormatter, check_writable, run_cli


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--results-dir", default="results", help="folder of results/*.jsonl files")
    p.add_argument("--out", default=None, help="report path (default: <results-dir>/REPORT.md)")
    args = p.parse_args(argv)
    results_dir = Path(args.results_dir)
    out = check_writable(Path(args.out) if args.out else results_dir / "REPORT.md", what="the report",
                         fix="pass a writable --out PATH")
    out = write_report(results_dir, out)
    print(f"report written to {out}")
    return out


if __name__ == "__main__":
    run_cli(main)
