"""The interface every serving-side defense implements (see ``defenses.DEFENSES``)."""
from __future__ import annotations

from typing import Optional

import torch

from defenses.similarity import AnswerHistory


class Defense:
    """A step of a :class:`service.victim.VictimService`'s defense chain.

    ``admit(account, images, state, proof)`` runs before the victim computes anything and may
    refuse the batch (e.g. ask for a proof of work); ``apply(account, images, answers, state,
    outputs=...)`` runs after and returns the answers to send (the identity by default).
    ``images`` are float in [0, 1]; ``outputs`` holds every output of the backend
    (``representation``, and ``head`` when the victim has one), so a defense can watch the
    head while the API answers representations; ``state`` is this defense's own dict for
    this account. ``prepare(service)`` runs once when the service is built.
    """

    name = ""
    persist: tuple[str, ...] = ()
    """The JSON-serialisable entries of the per-account state a server keeps across restarts
    (its ledger's ``defense_state``); an entry that is a :class:`defenses.similarity.AnswerHistory`
    is kept as well, row by row (``defense_rows``), so nothing here needs a growing history."""

    @classmethod
    def from_flags(cls, config: dict, *, scale: str, seed: int) -> "Defense":
        """The defense its flags in ``config`` describe (``defenses.add_defense_args``); ``scale``
        picks the by-scale defaults, ``seed`` the run's seed (each defense draws from its own
        stream derived from it)."""
        raise NotImplementedError

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

    def decision(self, state: dict) -> dict:
        """What this defense decided about the batch just answered, for the ledger's batch row."""
        return {}

    def snapshot(self, state: dict) -> tuple[dict, dict[str, torch.Tensor]]:
        """``(the persisted scalars, {state key: its AnswerHistory's rows})`` of one account's state."""
        scalars = {key: state[key] for key in self.persist if key in state}
        histories = {key: value.view() for key, value in state.items() if isinstance(value, AnswerHistory)}
        return scalars, histories

    def restore(self, state: dict, scalars: dict, histories: dict[str, torch.Tensor]) -> None:
        """Rebuild one account's state from what :meth:`snapshot` gave (after a restart)."""
        state.update({key: scalars[key] for key in self.persist if key in scalars})
        for key, rows in histories.items():
            history = AnswerHistory(rows.shape[1])
            history.append(rows)
            state[key] = history
