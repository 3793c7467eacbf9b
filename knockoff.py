"""Classic extraction of a downstream classifier, and FGSM transferability (Appendix A.2).

The victim here is a *classifier*: the victim encoder with a linear probe trained on the
downstream task. Its API answers labels (``--modeloutput labels``) or logits
(``--modeloutput logits``). The attacker trains a classifier of its own (an encoder of
the same family, from scratch, plus a linear layer) on the answers, as in the paper's
comparison with stealing the encoder:

* ``--mode standard`` (``steallabels.py``'s default): cross-entropy on the answered labels
  (the argmax of the logits), Adam;
* ``--mode knockoff`` (Knockoff Nets, Orekondy et al. 2019; this script's default): soft
  cross-entropy on the victim's probabilities for logits, cross-entropy on the labels
  for labels, SGD lr 0.1 with ``--momentum`` (0.9).

Then it reports the stolen classifier's accuracy and fidelity (agreement with the victim)
on the evaluation set, and the **FGSM transfer rate**: adversarial examples made on the
stolen classifier, ``x + eps * sign(grad_x CE(stolen(x), y))``, and the fraction of the
evaluation images the victim classified correctly that it now gets wrong (and, for
comparison, the same for random-sign noise of the same size and for the stolen model
itself). Results: results.json and a table on stdout; config.yaml beside them.

Examples:
  python knockoff.py --dataset mnistm5k --num_queries 500 --modeloutput logits
  python steallabels.py --victim-checkpoint CKPT --num_queries 500      # standard mode, labels
  python extract.py --dataset mnistm5k            # knockoff against a supervised victim (simclrsup.py)

``--victimtype supervised`` steals a supervised victim's own classifier instead of an
encoder with a probe (see steallabels.py).

A classifier served over HTTP (``serve.py --outputs logits probabilities ...`` for a SimCLR
victim with its probe, ``serve.py --victimtype supervised`` for a supervised one):
``--victim-url URL --api-key KEY`` asks it for ``--modeloutput``; its task, input size and
architecture come from its card. The victim's accuracy, the fidelity and the FGSM transfer are
then measured through the service too, after the attack (up to ``holdout x (1 + 2 x FGSM
steps)`` more queries, reported as ``evaluation_queries``), and a run the account cannot pay for
stops before its first query:

  python knockoff.py --victim-url http://127.0.0.1:8000 --api-key KEY --num_queries 500 --modeloutput logits
"""
import argparse

from attacks import extraction
from utils import run_cli


def build_parser() -> argparse.ArgumentParser:
    return extraction.build_parser("knockoff", "logits", __doc__, victimtype="simclr", momentum=0.9)


def main(argv=None) -> dict:
    return extraction.main(vars(build_parser().parse_args(argv)))


if __name__ == "__main__":
    run_cli(main)
