"""Similar-query detection: flag a query whose answer is close to one the account already got
(the paper's Tables 12-15), and answer flagged queries with large noise.

The service keeps, per account, the history of the vectors it watches (head outputs
``g(h(x))`` or representations ``h(x)``, ``--detect-on``). For each new query it finds the
nearest earlier one, in the account's history and among the earlier rows of the same
batch (``defenses.similarity.nearest_earlier``: chunked matrix products), and flags it when

* ``--detect-metric cosine``: the cosine similarity is above ``--detect-threshold``, or
* ``--detect-metric l2``: the Euclidean distance is below ``--detect-threshold``.

A flagged query's answer is replaced by a draw of ``N(--detect-mu, sigma^2)`` per
coordinate (the reference: mean 1000); with sigma 0 nothing is replaced (passive
detection: the flags are only counted). The history is per account: one account's
queries never flag another's. What it costs: one stored query is ``D * 4`` bytes (128-d
head outputs: 512 B; 1M queries: 512 MB), and the search grows linearly with the history
(``bench/detect_bench.py`` measures it).

Differences from the reference: it watched head outputs only, reset its history every
batch (no memory across batches), never checked a batch's first image, used
``(cos + 1) / 2 > 0.8`` (which is ``cos > 0.6``, our default threshold) and had no l2 variant.
"""
from __future__ import annotations

import math

import torch

from defenses.base import Defense
from defenses.similarity import AnswerHistory, check_batch_against
from utils import UserError

DETECT_ON = {"head": "head", "rep": "representation"}
# default --detect-threshold by (scale, metric, watched output). paper: the reference's cos > 0.6
# on head outputs, and the middle l2 rows of the paper's Tables 13-14; cpu: measured on the
# mnistm5k victim (scripts/defenses.py detection): about 5% of distinct images flagged
# against a history of 500, while most 80%-area crops of an earlier query are caught.
DEFAULT_THRESHOLDS = {
    ("paper", "cosine", "head"): 0.6, ("paper", "cosine", "rep"): 0.6,
    ("paper", "l2", "head"): 13.0, ("paper", "l2", "rep"): 18.0,
    ("cpu", "cosine", "head"): 0.9, ("cpu", "cosine", "rep"): 0.98,
    ("cpu", "l2", "head"): 0.75, ("cpu", "l2", "rep"): 1.5,
}


def default_threshold(scale: str, metric: str, on: str) -> float:
    return DEFAULT_THRESHOLDS[(scale, metric, on)]


def check_threshold(metric: str, threshold: float, flag: str = "--detect-threshold") -> float:
    if metric == "cosine" and not -1 <= threshold <= 1:
        raise UserError(f"{flag} {threshold} is outside [-1, 1], the range of a cosine similarity; pick e.g. 0.6")
    if metric == "l2" and not 0 < threshold < math.inf:
        raise UserError(f"{flag} {threshold} must be a positive, finite distance for --detect-metric l2")
    return float(threshold)


def is_similar(scores: torch.Tensor, metric: str, threshold: float) -> torch.Tensor:
    """Flags from nearest-earlier scores: cosine above, or l2 distance below, the threshold."""
    return scores > threshold if metric == "cosine" else scores < threshold


class SimilarQueryDetection(Defense):
    name = "detect"
    persist = ("checked", "flagged")

    @classmethod
    def from_flags(cls, config: dict, *, scale: str, seed: int) -> "SimilarQueryDetection":
        threshold = config.get("detect_threshold")
        if threshold is None:
            threshold = default_threshold(scale, config["detect_metric"], config["detect_on"])
        return cls(config["detect_on"], config["detect_metric"], threshold, mu=config["detect_mu"],
                   sigma=config["sigma"], seed=seed + 1)

    def __init__(self, on: str = "head", metric: str = "cosine", threshold: float = 0.6,
                 mu: float = 1000.0, sigma: float = 0.5, seed: int = 0, chunk: int = 8192):
        if on not in DETECT_ON:
            raise UserError(f"--detect-on must be one of {', '.join(DETECT_ON)}, got {on!r}")
        if metric not in ("cosine", "l2"):
            raise UserError(f"--detect-metric must be cosine or l2, got {metric!r}")
        if not 0 <= sigma < math.inf:
            raise UserError(f"--sigma must be a non-negative number, got {sigma}")
        self.on, self.metric, self.threshold = on, metric, check_threshold(metric, threshold)
        self.mu, self.sigma, self.chunk = float(mu), float(sigma), chunk
        self.generator = torch.Generator().manual_seed(seed)

    def prepare(self, service) -> None:
        if DETECT_ON[self.on] not in service.backend.out_dims:
            raise UserError(f"--detect-on {self.on} needs the victim's {DETECT_ON[self.on]} output, which this "
                            f"victim does not have; use --detect-on rep")

    def scores(self, state: dict, outputs: dict) -> torch.Tensor:
        """Nearest-earlier scores of a batch against the account's history (which it then joins)."""
        watched = outputs[DETECT_ON[self.on]].detach().float().cpu()
        if "history" not in state:
            state["history"] = AnswerHistory(watched.shape[1])
            state.update(checked=0, flagged=0)
        scores, _ = check_batch_against(state["history"], watched, self.metric, chunk=self.chunk)
        return scores

    def apply(self, account, images, answers, state, *, outputs):
        scores = self.scores(state, outputs)
        flags = is_similar(scores, self.metric, self.threshold)
        state["checked"] += len(flags)
        state["flagged"] += int(flags.sum())
        state["last_scores"], state["last_flags"] = scores, flags
        if self.sigma == 0 or not bool(flags.any()):
            return answers
        noise = torch.randn((int(flags.sum()), answers.shape[1]), generator=self.generator)
        answers = answers.clone()
        answers[flags.to(answers.device)] = noise.mul_(self.sigma).add_(self.mu).to(answers)
        return answers

    def decision(self, state: dict) -> dict:
        flags = state.get("last_flags")
        return {} if flags is None else {"flagged": int(flags.sum())}

    def describe(self) -> dict:
        return {"name": self.name, "on": self.on, "metric": self.metric, "threshold": self.threshold,
                "mu": self.mu, "sigma": self.sigma}
