"""Steal a downstream classifier from its labels (the paper's label-only baseline).

The victim is the victim encoder plus a linear probe on the downstream task; it answers
only the predicted label of each query. The attacker trains its own classifier from
scratch on those labels (``--mode standard``: cross-entropy, Adam), then the script
reports accuracy, fidelity and the FGSM transfer rate to the victim. Every flag, and the
knockoff mode (``--mode knockoff --modeloutput logits``), is shared with ``knockoff.py``.

Examples:
  python steallabels.py --dataset mnistm5k --num_queries 500
  python steallabels.py --victim-checkpoint CKPT --modeloutput logits --mode knockoff
"""
from extraction import build_parser, run
from utils import run_cli


def main(argv=None) -> dict:
    return run(vars(build_parser("standard", "labels", __doc__).parse_args(argv)))


if __name__ == "__main__":
    run_cli(main)
