"""The attacker side: a customer's query client (budget, answer cache, query log).

A :class:`QueryClient` wraps a *backend*: anything with ``answer(images) -> answers`` and
``out_dim`` (and optionally ``info``), e.g. :meth:`victim.VictimService.connect` in this
process, or an HTTP client later, without any attack changing. It does what a careful
paying customer does:

* **counting**: every image sent is one query; every augmented view of an image is one
  more. A call that would go past the budget is refused as a whole, before anything is
  sent, so the budget is never overshot (the reference checked after each batch and could
  overshoot by a batch);
* **caching**: answers are stored under a key the attacker chooses (``(image index, view)``),
  so a query answered once is never sent again: later epochs reuse the stored answers
  (the reference re-queried every epoch). A defended answer is cached as received, so
  noise an attacker paid for stays frozen across epochs, as it would for a real customer;
* **logging**: ``queries.jsonl`` gets one line per epoch (new queries, cache hits, total
  used, and the keys of the new queries).
"""
from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Hashable, Optional, Protocol, Sequence

import torch

from data_aug import to_float
from defenses.pow import ProofPayer, Puzzle
from errors import QueryBudgetExceeded, UserError
from utils import append_jsonl


class AnswerBackend(Protocol):
    out_dim: int

    def answer(self, images: torch.Tensor) -> torch.Tensor: ...


class QueryClient:
    """Counted, cached, logged access to a victim (see the module docstring)."""

    def __init__(self, backend: AnswerBackend, *, budget: Optional[int] = None,
                 log_path: Optional[Path | str] = None, cache_device: torch.device | str = "cpu"):
        if budget is not None and budget < 0:
            raise ValueError(f"the query budget must be non-negative, got {budget}")
        self.backend, self.budget = backend, budget
        self.log_path = None if log_path is None else Path(log_path)
        self.cache_device = torch.device(cache_device)
        self._cache: dict[Hashable, torch.Tensor] = {}
        self.queries_used = 0
        self.requests = 0
        self._epoch_new: list = []
        self._epoch_hits = 0

    @property
    def out_dim(self) -> int:
        return self.backend.out_dim

    @property
    def info(self) -> dict:
        return dict(getattr(self.backend, "info", {}) or {"out_dim": self.out_dim})

    @property
    def remaining(self) -> Optional[int]:
        return None if self.budget is None else self.budget - self.queries_used

    def query(self, images: torch.Tensor, keys: Optional[Sequence[Hashable]] = None) -> torch.Tensor:
        """Answers for a batch of images (uint8 or float in [0, 1], ``B x 3 x S x S``).

        ``keys`` name each query; a key answered before is served from the cache and costs
        nothing, and a key repeated inside one call is one query. Without keys every image
        is a new, uncached query. Returns answers ``B x D`` on the images' device, without
        gradient.
        """
        n = images.shape[0]
        if keys is not None and len(keys) != n:
            raise ValueError(f"got {n} images but {len(keys)} keys")
        new = list(range(n)) if keys is None else [i for i, k in enumerate(keys) if k not in self._cache]
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
            fresh = self.backend.answer(to_float(images.index_select(0, idx))).detach()
            self.requests += 1
            self.queries_used += len(new)
            if keys is not None:
                for j, i in enumerate(new):
                    self._cache[keys[i]] = fresh[j].to(self.cache_device)
                self._epoch_new.extend(keys[i] for i in new)
            else:
                self._epoch_new.extend([None] * len(new))
        if keys is None:
            return fresh.to(images.device)
        self._epoch_hits += n - len(new)
        return torch.stack([self._cache[k] for k in keys]).to(images.device)

    def end_epoch(self, epoch: int) -> dict:
        """Write this epoch's line to the query log and reset the epoch counters."""
        record = {"epoch": epoch, "new_queries": len(self._epoch_new), "cache_hits": self._epoch_hits,
                  "queries_used": self.queries_used, "budget": self.budget,
                  "new_keys": [k if isinstance(k, (int, str)) or k is None else list(k) for k in self._epoch_new]}
        costs = getattr(self.backend, "costs", None)
        if costs is not None:
            record.update(costs())
        if self.log_path is not None:
            append_jsonl(self.log_path, record)
        self._epoch_new, self._epoch_hits = [], 0
        return record


class HTTPConnection(ProofPayer):
    """A customer's handle on a victim served over HTTP (``serve.py``): the same ``answer(images)``,
    ``out_dim`` and ``info`` as an in-process :class:`victim.Connection`, so no attack changes.

    Images go as raw uint8 bytes (floats in [0, 1] are rounded to uint8 first, as a PNG would);
    answers come back as raw float32 bytes. 429 and 503 are retried with exponential backoff
    (``retries`` times, from ``backoff`` seconds); any other refusal is a :class:`errors.UserError`
    with the server's sentence (402, an exhausted budget: :class:`errors.QueryBudgetExceeded`).
    """

    def __init__(self, url: str, api_key: str, *, timeout: float = 120.0, retries: int = 5, backoff: float = 0.5):
        super().__init__()
        self.url, self.api_key = url.rstrip("/"), api_key
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.requests = 0
        self.info = self._call("GET", "/v1/info")
        self.out_dim = int(self.info["out_dim"])

    def _call(self, method: str, path: str, body: Optional[dict] = None, puzzle_out: Optional[dict] = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    self.requests += 1
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                try:
                    reply = json.loads(err.read())
                    message = reply.get("error", err.reason)
                except ValueError:
                    reply, message = {}, str(err.reason)
                if err.code in (429, 503) and attempt < self.retries:
                    time.sleep(max(float(reply.get("retry_after") or 0.0), self.backoff * 2 ** attempt))
                    continue
                if err.code == 402:
                    raise QueryBudgetExceeded(f"{self.url}: {message}") from None
                if err.code == 428 and puzzle_out is not None:  # a proof of work is asked for
                    puzzle_out.update(reply.get("puzzle") or {})
                    return {}
                raise UserError(f"{self.url}{path} refused the request ({err.code}): {message}") from None
            except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
                # refused, reset or cut off mid-reply (a server that died): retried, then one sentence
                if attempt < self.retries:
                    time.sleep(self.backoff * 2 ** attempt)
                    continue
                reason = getattr(err, "reason", err)
                raise UserError(f"cannot reach the victim service at {self.url}: {reason}; is serve.py "
                                f"running there?") from None
        raise AssertionError("unreachable")

    def usage(self) -> dict:
        """The account's queries used and remaining, as the server counts them."""
        return self._call("GET", "/v1/usage")

    def answer(self, images: torch.Tensor) -> torch.Tensor:
        from serving import decode_array, encode_array  # the wire format (serving imports FastAPI lazily)

        x = images if images.dtype == torch.uint8 else (to_float(images) * 255).round().clamp(0, 255).to(torch.uint8)
        body = {"format": "uint8", **encode_array(x)}
        puzzle: dict = {}
        reply = self._call("POST", "/v1/embeddings", body, puzzle_out=puzzle)
        if puzzle:  # the service's proof-of-work defense: solve here (the customer's cost), send again
            nonce = self.pay(Puzzle(puzzle["challenge"], int(puzzle["bits"])))
            reply = self._call("POST", "/v1/embeddings", {**body, "proof": {"challenge": puzzle["challenge"],
                                                                          "nonce": nonce}})
        return decode_array(reply, reply.get("dtype", "float32")).to(images.device)


class SybilConnection:
    """One attacker behind several accounts (a Sybil attack on per-account defenses): every batch is
    split into near-equal parts, one per account, sent through each account's own connection,
    and the answers are put back in order. Budgets, similar-query histories and proof-of-work
    difficulty are per account on the service, so each account sees only its share."""

    def __init__(self, connections: Sequence):
        if not connections:
            raise ValueError("a Sybil connection needs at least one account's connection")
        self.connections = list(connections)
        self.info, self.out_dim = self.connections[0].info, self.connections[0].out_dim
        if any(c.out_dim != self.out_dim for c in self.connections):
            raise ValueError("the accounts answer with different output sizes: they are not the same service")

    def answer(self, images: torch.Tensor) -> torch.Tensor:
        parts = torch.tensor_split(torch.arange(images.shape[0]), min(len(self.connections), images.shape[0]))
        return torch.cat([conn.answer(images[idx]) for conn, idx in zip(self.connections, parts)])

    def costs(self) -> dict:
        totals: dict = {}
        for conn in self.connections:
            for key, value in getattr(conn, "costs", dict)().items():
                totals[key] = totals.get(key, 0) + value
        return totals
