"""Knockoff extraction of a SUPERVISED victim's classifier (the reference's extract.py).

The same experiment as ``knockoff.py`` with the reference extract.py's defaults: the victim
is a supervised victim's own classifier (``--victimtype supervised``: a simclrsup.py
checkpoint, its encoder and the linear layer it was trained with), it answers logits
(``--modeloutput logits``), and the attacker trains its own classifier with soft
cross-entropy on the answered probabilities (``--mode knockoff``) with SGD, lr 0.1 and
momentum 0.5 (``--momentum``). Then it reports the stolen classifier's accuracy, its
fidelity to the victim and the FGSM transfer rate (results.json, a table on stdout). The
reference's victim was a torchvision ResNet at a hard-coded path queried with CIFAR10 test
images 0-8999; here it is named by ``--victim-checkpoint`` (default: simclrsup.py's run
directory for ``--dataset``) and the queries follow knockoff.py's rules.

Examples:
  python simclrsup.py --dataset mnistm5k && python extract.py --dataset mnistm5k --num_queries 500
  python extract.py --victim-checkpoint runs/supervised_mnistm5k_resnet18_w8_s0/checkpoint.pt --modeloutput labels
"""
import argparse

from attacks import extraction
from utils import run_cli


def build_parser() -> argparse.ArgumentParser:
    return extraction.build_parser("knockoff", "logits", __doc__, victimtype="supervised", momentum=0.5,
                                   reference_flags=extraction.REFERENCE_FLAGS + ("dataset_unused",))


def main(argv=None) -> dict:
    return extraction.main(vars(build_parser().parse_args(argv)))


if __name__ == "__main__":
    run_cli(main)
