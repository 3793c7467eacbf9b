"""Output perturbation: add Gaussian noise to every coordinate of the victim's answers."""
from __future__ import annotations

import torch


class NoisePerturbation:
    """Answers ``q`` become ``q + N(mu, sigma^2)`` i.i.d. per coordinate (the paper's noise defense).

    The reference adds ``N(--mu, --sigma^2)`` (defaults 5 and 0.5) to the representations it
    returns. The noise comes from a generator seeded once, so a run is reproducible; ``sigma``
    0 with ``mu`` 0 is the identity.
    """

    def __init__(self, mu: float = 5.0, sigma: float = 0.5, seed: int = 0):
        if sigma < 0:
            raise ValueError(f"the noise standard deviation must be >= 0, got sigma={sigma}")
        self.mu, self.sigma = float(mu), float(sigma)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, answers: torch.Tensor, state: dict) -> torch.Tensor:
        noise = torch.randn(answers.shape, generator=self.generator, dtype=torch.float32)
        noise = noise.mul_(self.sigma).add_(self.mu).to(device=answers.device, dtype=answers.dtype)
        state["perturbed"] = state.get("perturbed", 0) + answers.shape[0]
        return answers + noise
