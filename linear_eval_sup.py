"""Linear evaluation of a supervised victim (simclrsup.py: a ResNet trained with labels) or of
its stolen copy: the reference's linear_eval_sup.py, every flag of which parses.

The same probes and flags as linear_eval.py (see its --help); the only difference is the
default victim checkpoint: simclrsup.py's run directory,
runs/supervised_<dataset>_<arch>_w<width>_s<seed>/checkpoint.pt. The stolen copy's default is
steal.py's run directory for --losstype/--num_queries/--datasetsteal/--seed, which does not
record which victim it stole; name a copy of the supervised victim with --checkpoint when
both kinds were stolen with the same flags.

Examples:
  python linear_eval_sup.py --modeltype victim --dataset mnistm5k
  python linear_eval_sup.py --checkpoint runs/steal_mse_500_mnistm5k_s0/checkpoint.pt
"""
from __future__ import annotations

import argparse

from evaluation.cli import build_eval_parser, evaluate
from utils import run_cli


def build_parser() -> argparse.ArgumentParser:
    return build_eval_parser(supervised=True, description=__doc__)


def main(argv=None) -> list[dict]:
    return evaluate(build_parser().parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
