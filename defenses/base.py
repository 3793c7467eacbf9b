"""The interface every serving-side defense implements (see ``defenses.DEFENSES``)."""
from __future__ import annotations

from typing import Optional

import torch


class Defense:
    """A step of a :class:`victim.VictimService`'s defense chain.

    ``admit(account, images, state, proof)`` runs before the victim computes anything and may
    refuse the batch (e.g. ask for a proof of work); ``apply(account, images, answers, state,
    outputs=...)`` runs after and returns the answers to send (the identity by default).
    ``images`` are float in [0, 1]; ``outputs`` holds every output of the backend
    (``representation``, and ``head`` when the victim has one), so a defense can watch the
    head while the API answers representations; ``state`` is this defense's own dict for
    this account. ``prepare(service)`` runs once when the service is built.
    """

    name = ""

    def prepare(self, service) -> None:
        pass

    def admit(self, account: str, images: torch.Tensor, state: dict, proof: Optional[dict]) -> None:
        pass

    def apply(self, account: str, images: torch.Tensor, answers: torch.Tensor, state: dict, *,
              outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return answers

    def describe(self) -> dict:
        """The defense's settings, for config.yaml."""
        return {"name": self.name}
