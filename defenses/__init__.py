"""Defenses, and the home of both kinds: serving-side defenses (this module's ``DEFENSES``
registry) and the owner's ownership tests of a suspect encoder (``watermark``, ``inference``,
``ownership``: Tables 4 and 16-20).

Serving-side defenses: ``DEFENSES[name]``, each built from its flags by its ``from_flags``
(:func:`build_defenses`). A defense is a step of a :class:`service.victim.VictimService`'s chain (interface:
:class:`defenses.base.Defense`): it sees the account, the images, the answers, every output
of the backend and its own per-account state, and returns the answers to send; it may also
refuse a batch until a proof of work is shown.

====== ===================================================== =========================
name   what it does                                          flags
====== ===================================================== =========================
noise  adds N(mu, sigma^2) to every answer (Tables 10-11)    --mu --sigma
detect flags queries close to the account's earlier ones     --detect-on --detect-metric
       and answers them with N(1000, sigma^2) (Tables 12-15) --detect-threshold --detect-mu
pow    a HashCash puzzle per batch, harder for accounts      --pow-bits-min --pow-bits-max
       that repeat themselves (calibrated proof of work)     --pow-threshold
poison moves the attacker's MSE gradient, keeps a downstream --poison-strength
       classifier's predictions (Appendix E.1)
====== ===================================================== =========================

``--defence True`` is the reference's switch: similar-query detection against an InfoNCE or
SoftNN attacker, noise against the others (the choice is written to config.yaml as
``defenses``). ``--defenses NAME ...`` names the chain explicitly, in order.
"""
from __future__ import annotations

import argparse

from defenses.base import Defense
from defenses.detect import DETECT_ON, SimilarQueryDetection
from defenses.noise import NoisePerturbation
from defenses.poison import PredictionPoisoning
from defenses.pow_gate import ProofOfWork
from utils import UserError, str2bool

DEFENSES: dict[str, type[Defense]] = {
    "noise": NoisePerturbation,
    "detect": SimilarQueryDetection,
    "pow": ProofOfWork,
    "poison": PredictionPoisoning,
}
DETECTION_LOSSES = ("infonce", "softnn")  # the reference's --defence picks detection against these


def add_defense_args(parser: argparse.ArgumentParser, *, mu_default: float = 5.0) -> None:
    g = parser.add_argument_group("defenses (serving side; see docs/defenses.md)")
    g.add_argument("--defence", type=str2bool, default=False,
                   help="the reference's switch: the victim defends itself with similar-query detection "
                        f"against an attacker using {' or '.join(DETECTION_LOSSES)} (--losstype) "
                        "and with noise otherwise")
    g.add_argument("--defenses", nargs="+", default=None, metavar="NAME",
                   help=f"the victim's defense chain, in order: any of {', '.join(DEFENSES)} (overrides --defence)")
    g.add_argument("--mu", type=float, default=mu_default, help="noise: mean of the Gaussian noise added")
    g.add_argument("--sigma", type=float, default=0.5,
                   help="noise: standard deviation (0 = nothing added); detect: standard deviation of the "
                        "replacement answers of flagged queries (0 = flag only)")
    g.add_argument("--detect-on", choices=sorted(DETECT_ON), default="head",
                   help="detect/pow: watch the victim's head outputs g(h) (as the reference) or its representations h")
    g.add_argument("--detect-metric", choices=["cosine", "l2"], default="cosine",
                   help="detect: similar = cosine similarity above, or l2 distance below, --detect-threshold")
    g.add_argument("--detect-threshold", type=float, default=None,
                   help="detect: the threshold (default by scale, metric and --detect-on: paper cosine 0.6 as the "
                        "reference, l2 13 on head / 18 on rep; cpu cosine 0.9 on head / 0.98 on rep, l2 0.75 on "
                        "head / 1.5 on rep)")
    g.add_argument("--detect-mu", type=float, default=1000.0, help="detect: mean of the replacement answers")
    g.add_argument("--pow-bits-min", type=int, default=0,
                   help="pow: puzzle bits per query for an account that never repeats itself")
    g.add_argument("--pow-bits-max", type=int, default=12,
                   help="pow: puzzle bits per query for an account whose every query repeats an earlier one")
    g.add_argument("--pow-threshold", type=float, default=None,
                   help="pow: cosine above which a query counts as a repeat in the deviation score (default: "
                        "the cosine default of --detect-threshold)")
    g.add_argument("--poison-strength", type=float, default=1.0,
                   help="poison: 0 = identity, 1 = cancel the attacker's MSE gradient outside the downstream "
                        "classifier's view, 2 = reverse it")


def defense_names(config: dict) -> list[str]:
    """The chain the flags ask for: ``--defenses``, else what ``--defence True`` means for the loss."""
    if config.get("defenses"):
        names = list(config["defenses"])
    elif config.get("defence"):
        names = ["detect"] if config.get("losstype") in DETECTION_LOSSES else ["noise"]
    else:
        names = []
    for name in names:
        if name not in DEFENSES:
            raise UserError(f"unknown defense {name!r}; choose from {', '.join(DEFENSES)}")
    return names


def build_defenses(config: dict, scale: str) -> list[Defense]:
    """The defense chain named by the flags in ``config``, each built from its own flags
    (``DEFENSES[name].from_flags``)."""
    seed = int(config.get("seed") or 0)
    return [DEFENSES[name].from_flags(config, scale=scale, seed=seed) for name in defense_names(config)]


__all__ = ["DEFENSES", "Defense", "add_defense_args", "build_defenses", "defense_names", "NoisePerturbation",
           "SimilarQueryDetection", "ProofOfWork", "PredictionPoisoning"]
