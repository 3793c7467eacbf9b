"""Output perturbation: Gaussian noise on every coordinate of the answers (the paper's Tables 10-11)."""
from __future__ import annotations

import torch

from defenses.base import Defense
from utils import UserError


class NoisePerturbation(Defense):
    """Answers ``q`` become ``q + N(mu, sigma^2)``, i.i.d. per coordinate.

    As in the reference, nothing is added at ``sigma`` 0, whatever ``mu`` (its Table 10 row
    sigma=0 is the undefended victim): the answers are returned as they are, the same
    tensor. The noise comes from one generator seeded once, so a run is reproducible. A
    client that caches answers keeps the noise it received: re-asking is not free, so an
    attacker cannot average the noise away without paying for more queries.
    """

    name = "noise"
    persist = ("perturbed",)

    @classmethod
    def from_flags(cls, config: dict, *, scale: str, seed: int) -> "NoisePerturbation":
        return cls(config["mu"], config["sigma"], seed=seed)

    def __init__(self, mu: float = 5.0, sigma: float = 0.5, seed: int = 0):
        if not 0 <= sigma < float("inf"):
            raise UserError(f"--sigma must be a non-negative number (the noise's standard deviation), got {sigma}")
        self.mu, self.sigma, self.seed = float(mu), float(sigma), seed
        self.generator = torch.Generator().manual_seed(seed)

    def apply(self, account, images, answers, state, *, outputs):
        if self.sigma == 0:
            return answers
        noise = torch.randn(answers.shape, generator=self.generator, dtype=torch.float32)
        noise = noise.mul_(self.sigma).add_(self.mu).to(device=answers.device, dtype=answers.dtype)
        state["perturbed"] = state.get("perturbed", 0) + answers.shape[0]
        return answers + noise

    def describe(self) -> dict:
        return {"name": self.name, "mu": self.mu, "sigma": self.sigma}
