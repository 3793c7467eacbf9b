"""The victim interface: the one object through which every attack queries a victim.

An attack never touches the victim's weights. It sends images and receives answers
(representations, or projection-head outputs when it has head access), as a paying
user of an encoder API would. The :class:`Victim` does the bookkeeping such an API and
such an attacker do:

* **counting**: every image sent is one query; every augmented view of an image is one
  more. A call that would go past the budget is refused as a whole, before anything is
  answered, so the budget is never overshot (the reference checked after each batch and
  could overshoot by a batch);
* **caching**: answers are stored under a key the attacker chooses (e.g. ``(index, view)``),
  so a query answered once is never sent again: later epochs reuse the stored answers
  instead of paying the victim's forward pass again (the reference re-queried every epoch);
* **defenses**: the answers pass through ``defense(answers, state) -> answers`` (identity by
  default), the hook that output perturbations fill in;
* **logging**: ``queries.jsonl`` in the run directory gets one line per epoch (new
  queries, cache hits, total used, and the keys of the new queries).

What answers a query is a *backend*: any callable ``backend(images) -> answers`` on float
images ``B x 3 x S x S`` in [0, 1], with an ``out_dim`` attribute. :class:`LocalEncoder`
wraps a loaded encoder (and head); a remote HTTP API can implement the same two members
without any attack changing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Hashable, Optional, Protocol, Sequence

import torch
from torch import nn

from data_aug import to_float
from utils import UserError, append_jsonl


class QueryBudgetExceeded(UserError):
    """A query would take the victim past its budget."""


class Backend(Protocol):
    out_dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class LocalEncoder:
    """A victim encoder in this process: representations ``h(x)``, or ``g(h(x))`` with ``head``."""

    def __init__(self, encoder: nn.Module, head: Optional[nn.Module] = None, *,
                 device: torch.device | str = "cpu", batch_size: int = 512):
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        self.head = None if head is None else head.to(self.device).eval()
        for p in list(self.encoder.parameters()) + (list(self.head.parameters()) if self.head else []):
            p.requires_grad_(False)
        self.batch_size = batch_size
        self.out_dim = getattr(encoder, "out_dim", None)
        if self.head is not None:
            last = [m for m in self.head.modules() if isinstance(m, nn.Linear)][-1]
            self.out_dim = last.out_features

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        outs = []
        for start in range(0, images.shape[0], self.batch_size):
            x = images[start:start + self.batch_size].to(self.device)
            h = self.encoder(x)
            outs.append((h if self.head is None else self.head(h)).float())
        return torch.cat(outs)


Defense = Callable[[torch.Tensor, dict], torch.Tensor]


def no_defense(answers: torch.Tensor, state: dict) -> torch.Tensor:
    return answers


class Victim:
    """Counted, cached, defended access to a victim backend (see the module docstring)."""

    def __init__(self, backend: Backend, *, budget: Optional[int] = None, defense: Defense = no_defense,
                 log_path: Optional[Path | str] = None, cache_device: torch.device | str = "cpu"):
        if budget is not None and budget < 0:
            raise ValueError(f"the query budget must be non-negative, got {budget}")
        self.backend, self.budget, self.defense = backend, budget, defense
        self.defense_state: dict = {}
        self.log_path = None if log_path is None else Path(log_path)
        self.cache_device = torch.device(cache_device)
        self._cache: dict[Hashable, torch.Tensor] = {}
        self.queries_used = 0
        self.forward_calls = 0
        self._epoch_new: list = []
        self._epoch_hits = 0

    @property
    def out_dim(self) -> int:
        return self.backend.out_dim

    @property
    def remaining(self) -> Optional[int]:
        return None if self.budget is None else self.budget - self.queries_used

    def query(self, images: torch.Tensor, keys: Optional[Sequence[Hashable]] = None) -> torch.Tensor:
        """Answers for a batch of images (uint8 or float in [0, 1], ``B x 3 x S x S``).

        ``keys`` name each query; a key answered before is served from the cache and
        costs nothing. Without keys every image is a new, uncached query. Returns answers
        ``B x D`` on the images' device, without gradient.
        """
        n = images.shape[0]
        if keys is not None and len(keys) != n:
            raise ValueError(f"got {n} images but {len(keys)} keys")
        new = list(range(n)) if keys is None else [i for i, k in enumerate(keys) if k not in self._cache]
        # a key repeated inside one call is one query
        if keys is not None:
            first: dict = {}
            new = [i for i in new if first.setdefault(keys[i], i) == i]
        if self.budget is not None and self.queries_used + len(new) > self.budget:
            raise QueryBudgetExceeded(
                f"answering {len(new)} new queries would exceed the budget of {self.budget} "
                f"({self.queries_used} used); raise --num_queries or query fewer images")
        fresh = None
        if new:
            idx = torch.tensor(new, device=images.device)
            fresh = self.defense(self.backend(to_float(images.index_select(0, idx))), self.defense_state)
            self.forward_calls += 1
            self.queries_used += len(new)
            if keys is not None:
                for j, i in enumerate(new):
                    self._cache[keys[i]] = fresh[j].detach().to(self.cache_device)
                self._epoch_new.extend(keys[i] for i in new)
            else:
                self._epoch_new.extend([None] * len(new))
        if keys is None:
            return fresh.detach().to(images.device)
        self._epoch_hits += n - len(new)
        return torch.stack([self._cache[k] for k in keys]).to(images.device)

    def end_epoch(self, epoch: int) -> dict:
        """Write this epoch's line to the query log and reset the epoch counters."""
        record = {"epoch": epoch, "new_queries": len(self._epoch_new), "cache_hits": self._epoch_hits,
                  "queries_used": self.queries_used, "budget": self.budget,
                  "new_keys": [k if isinstance(k, (int, str)) or k is None else list(k) for k in self._epoch_new]}
        if self.log_path is not None:
            append_jsonl(self.log_path, record)
        self._epoch_new, self._epoch_hits = [], 0
        return record
