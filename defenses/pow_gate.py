"""Calibrated proof of work: every batch costs the customer a HashCash puzzle whose difficulty
grows with how far the account's behaviour deviates from a legitimate user's.

Proposed for classifier APIs by Dziedzic et al. (ICLR 2022, "Increasing the cost of model
extraction with calibrated proof of work"); the encoder-stealing paper points to it and the
reference has nothing for encoders. The scheme (``defenses.pow`` holds the puzzle maths):

* before answering a batch of ``n`` images, the service issues a puzzle bound to the account
  and to the batch (a fresh random challenge, remembered with the batch's SHA-256): find a
  nonce such that ``sha256(challenge || nonce)`` has ``k + round(log2 n)`` leading zero
  bits, so the expected work is about ``n * 2^k`` hashes: the cost follows the number of
  queries, not the number of requests;
* the client solves it and sends the batch again with the nonce; the service verifies
  before answering (a wrong nonce, or a proof for another batch, is refused);
* ``k = difficulty(score, --pow-bits-min, --pow-bits-max)``, monotone in the **deviation
  score**: the fraction of the account's answered queries whose nearest earlier answer
  (head output or representation, ``--detect-on``, in that account's history) has cosine
  similarity above ``--pow-threshold``. A legitimate user sends distinct images (a low score); an attacker
  that queries augmented views of the same images to train with InfoNCE/SupCon (the
  paper's Table 12 attacker) repeats itself (a high score). We chose this statistic, the
  similar-query detector's, over representation-space coverage because it is cheap to
  keep per account, needs no reference distribution, and is the signal the paper's own
  detector uses. An attacker that sends each image once looks like a legitimate user and
  pays what one pays: the paper's point about how hard encoders are to defend.
"""
from __future__ import annotations

import hashlib
import math

import torch

from defenses.base import Defense
from defenses.detect import DETECT_ON, check_threshold, default_threshold
from defenses.pow import Puzzle, difficulty, new_puzzle, verify
from defenses.similarity import AnswerHistory, check_batch_against
from utils import ProofRequired, UserError


class ProofRejected(UserError):
    """A proof of work that does not solve the puzzle issued for this batch."""


def batch_digest(images: torch.Tensor) -> str:
    return hashlib.sha256(images.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


class ProofOfWork(Defense):
    name = "pow"
    persist = ("similar", "answered", "pending", "bits_paid", "expected_hashes")

    @classmethod
    def from_flags(cls, config: dict, *, scale: str, seed: int) -> "ProofOfWork":
        threshold = config.get("pow_threshold")
        if threshold is None:  # the cosine default of --detect-threshold
            threshold = default_threshold(scale, "cosine", config["detect_on"])
        return cls(config["pow_bits_min"], config["pow_bits_max"], config["detect_on"], threshold)

    def __init__(self, bits_min: int = 0, bits_max: int = 12, on: str = "head", threshold: float = 0.9):
        if not (isinstance(bits_min, int) and isinstance(bits_max, int) and 0 <= bits_min <= bits_max <= 32):
            raise UserError(f"--pow-bits-min and --pow-bits-max must be integers with 0 <= min <= max <= 32, "
                            f"got {bits_min} and {bits_max}")
        self.bits_min, self.bits_max = bits_min, bits_max
        if on not in DETECT_ON:
            raise UserError(f"--detect-on must be one of {', '.join(DETECT_ON)}, got {on!r}")
        self.on, self.threshold = on, check_threshold("cosine", threshold, "--pow-threshold")

    def prepare(self, service) -> None:
        if DETECT_ON[self.on] not in service.backend.out_dims:
            raise UserError(f"--detect-on {self.on} needs the victim's {DETECT_ON[self.on]} output, which this "
                            f"victim does not have; use --detect-on rep")

    @staticmethod
    def score(state: dict) -> float:
        """The account's deviation score: the fraction of its answered queries flagged similar."""
        return state.get("similar", 0) / state["answered"] if state.get("answered") else 0.0

    def bits_for(self, state: dict, n: int) -> int:
        return difficulty(self.score(state), self.bits_min, self.bits_max) + round(math.log2(max(n, 1)))

    def admit(self, account, images, state, proof):
        pending = state.get("pending")
        if proof is None or pending is None:
            bits = self.bits_for(state, images.shape[0])
            puzzle = new_puzzle(bits)
            state["pending"] = (puzzle.to_dict(), batch_digest(images))
            raise ProofRequired(puzzle)
        puzzle, digest = Puzzle.from_dict(pending[0]), pending[1]
        if proof.get("challenge") != puzzle.challenge or digest != batch_digest(images):
            raise ProofRejected("the proof of work answers another puzzle or another batch; ask for a new puzzle")
        if not verify(puzzle, proof.get("nonce")):
            raise ProofRejected(f"the nonce {proof.get('nonce')!r} does not solve the puzzle "
                                f"({puzzle.bits} leading zero bits needed)")
        del state["pending"]
        state["bits_paid"] = state.get("bits_paid", []) + [puzzle.bits]
        state["expected_hashes"] = state.get("expected_hashes", 0.0) + 2.0 ** puzzle.bits

    def apply(self, account, images, answers, state, *, outputs):
        rep = outputs[DETECT_ON[self.on]].detach().float().cpu()
        if "history" not in state:
            state["history"] = AnswerHistory(rep.shape[1])
        scores, _ = check_batch_against(state["history"], rep, "cosine")
        state["similar"] = state.get("similar", 0) + int((scores > self.threshold).sum())
        state["answered"] = state.get("answered", 0) + rep.shape[0]
        return answers

    def decision(self, state: dict) -> dict:
        return {"bits": state["bits_paid"][-1]} if state.get("bits_paid") else {}

    def describe(self) -> dict:
        return {"name": self.name, "bits_min": self.bits_min, "bits_max": self.bits_max, "on": self.on,
                "threshold": self.threshold}
