"""Linear evaluation of a frozen encoder (victim, stolen copy, random init or raw pixels) on a
downstream dataset: the reference's linear_eval.py, every flag of which parses.

Two probes (--probe; auto = reference at paper scale, lbfgs at cpu scale):

* reference: the reference's probe. A linear layer trained with Adam (weight decay 8e-4,
  lr 3e-4 for the victim, --lr = 1e-4 for a stolen copy) and cross-entropy through the
  frozen encoder for --probe-epochs (100) epochs over the unshuffled training set, each
  epoch stopping once batches x B >= -n; the test accuracy after the last epoch is reported
  (the per-epoch curve is in the record). --probe-bn train keeps the reference's BatchNorm
  quirk (batch statistics in training and testing; run on a copy of the encoder, so the
  checkpoint's encoder is unchanged), --probe-bn eval freezes BatchNorm.
* lbfgs: the encoder frozen three ways (no grad, eval mode, no_grad) and checked unchanged;
  features computed once, standardised (train mean and std per dimension) so that the scale
  of a representation does not decide the result, then a multinomial logistic regression
  by L-BFGS with its L2 penalty picked on a held-out fifth of the training split. Without
  standardising a random encoder can look far worse than it is (on digitsm, a random
  width-16 ResNet18 scored 12% with unscaled features and 53% with standardised ones).

Accuracy is exact over all test images. Each evaluation appends one JSON record (naming
the probe and its settings) to the results file.

Examples:
  python linear_eval.py --checkpoint runs/victim_mnistm5k_resnet18_w8_s0/checkpoint.pt --modeltype victim
  python linear_eval.py --checkpoint CKPT --modeltype victim random pixels   # a comparison table
  python linear_eval.py --dataset cifar10 --datasetsteal svhn --dataset-test stl10 --losstype mse \\
      --num_queries 9000                                                     # the reference README's line
  python linear_eval.py --checkpoint CKPT --probe reference --probe-bn eval --save True
"""
from __future__ import annotations

import argparse

from evaluation.cli import build_eval_parser, evaluate
from utils import run_cli


def build_parser() -> argparse.ArgumentParser:
    return build_eval_parser(supervised=False, description=__doc__)


def main(argv=None) -> list[dict]:
    return evaluate(build_parser().parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
