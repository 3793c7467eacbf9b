"""Steal a downstream classifier from its labels (the paper's label-only baseline).

The victim classifier answers only the predicted label of each query. It is, by
``--victimtype``, a SimCLR-type victim encoder plus a linear probe fitted on the downstream
task (``simclr``, run.py's victims), or a supervised victim's own classifier (``supervised``,
simclrsup.py's victims: the encoder and the linear layer it was trained with). The attacker
trains its own classifier from scratch on those labels (``--mode standard``: cross-entropy,
Adam; SGD with ``--momentum`` against a supervised victim, as the reference), then the script
reports accuracy, fidelity and the FGSM transfer rate to the victim. Every flag, and the
knockoff mode (``--mode knockoff --modeloutput logits``), is shared with ``knockoff.py``.

Examples:
  python steallabels.py --dataset mnistm5k --num_queries 500
  python steallabels.py --victimtype supervised --dataset mnistm5k   # runs/supervised_mnistm5k_... victim
  python steallabels.py --victim-checkpoint CKPT --modeloutput logits --mode knockoff
"""
import argparse

from attacks import extraction
from utils import run_cli


def build_parser() -> argparse.ArgumentParser:
    return extraction.build_parser("standard", "labels", __doc__, victimtype="simclr", momentum=0.9)


def main(argv=None) -> dict:
    return extraction.main(vars(build_parser().parse_args(argv)))


if __name__ == "__main__":
    run_cli(main)
