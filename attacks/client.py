"""The attacker side: a customer's query client (budget, answer cache, query log).

A :class:`QueryClient` wraps a *backend*: anything with ``answer(images) -> answers`` and
``out_dim`` (and optionally ``info``), e.g. :meth:`service.victim.VictimService.connect` in this
process, or :class:`HTTPConnection` for a victim served by ``serve.py``, without any attack
changing. It does what a careful paying customer does:

* **counting**: every image sent is one query; every augmented view of an image is one
  more. A call that would go past the budget is refused as a whole, before anything is
  sent, so the budget is never overshot (the reference checked after each batch and could
  overshoot by a batch). A backend that knows what the service still sells (``remaining()``:
  ``/v1/usage`` over HTTP) caps the budget, and a run whose budget it cannot cover is refused
  when the client is made, before its first query;
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
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Hashable, Optional, Protocol, Sequence

import torch

from data_aug import to_float
from defenses.pow import ProofPayer, Puzzle
from service.wire import RequestError, decode_array, encode_array
from utils import QueryBudgetExceeded, UserError, append_jsonl


class AnswerBackend(Protocol):
    out_dim: int

    def answer(self, images: torch.Tensor) -> torch.Tensor: ...


class QueryClient:
    """Counted, cached, logged access to a victim (see the module docstring)."""

    def __init__(self, backend: AnswerBackend, *, budget: Optional[int] = None,
                 log_path: Optional[Path | str] = None, cache_device: torch.device | str = "cpu"):
        if budget is not None and budget < 0:
            raise ValueError(f"the query budget must be non-negative, got {budget}")
        # what the service still sells this customer (a backend with remaining(), e.g. HTTPConnection
        # reading /v1/usage): the budget is the smaller of the two, and a run whose own budget the
        # accounts cannot pay for stops here, before its first query, rather than mid-epoch
        left = service_remaining(backend)
        if left is not None:
            if budget is not None and left < budget:
                raise QueryBudgetExceeded(
                    f"the victim service has {left} queries left on this run's account(s), fewer than the "
                    f"{budget} this run will spend; lower --num_queries or use an account with a larger budget "
                    f"(serve.py accounts create NAME --budget N)")
            budget = left if budget is None else min(budget, left)
        self.backend, self.budget = backend, budget
        self.log_path = None if log_path is None else Path(log_path)
        self.cache_device = torch.device(cache_device)
        self._index: dict[Hashable, int] = {}  # key -> its row in the answer store
        self._rows: Optional[torch.Tensor] = None  # the answer store: one row per answered key, grown by doubling
        self._stored = 0
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
        new = list(range(n)) if keys is None else [i for i, k in enumerate(keys) if k not in self._index]
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
                start = self._store(fresh)
                for j, i in enumerate(new):
                    self._index[keys[i]] = start + j
                self._epoch_new.extend(keys[i] for i in new)
            else:
                self._epoch_new.extend([None] * len(new))
        if keys is None:
            return fresh.to(images.device)
        self._epoch_hits += n - len(new)
        rows = torch.tensor([self._index[k] for k in keys], device=self.cache_device)
        return self._rows.index_select(0, rows).to(images.device)  # one gather and one copy per batch

    def _store(self, answers: torch.Tensor) -> int:
        """Append answers to the store (on ``cache_device``); returns the row of the first."""
        answers = answers.to(self.cache_device)
        start, end = self._stored, self._stored + answers.shape[0]
        if self._rows is None or end > self._rows.shape[0]:
            capacity = max(end, 2 * (0 if self._rows is None else self._rows.shape[0]), 256)
            grown = torch.empty((capacity, *answers.shape[1:]), dtype=answers.dtype, device=self.cache_device)
            if start:
                grown[:start] = self._rows[:start]
            self._rows = grown
        self._rows[start:end] = answers
        self._stored = end
        return start

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


def wire_images(images: torch.Tensor) -> torch.Tensor:
    """A batch as it travels to a served victim: uint8, floats in [0, 1] rounded to the nearest level
    (as a PNG would carry them). Exact for dataset images; an augmented view (crops, jitter, blur)
    loses what lies between two levels, so the victim answers the view as sent."""
    return images if images.dtype == torch.uint8 else (to_float(images) * 255).round().clamp(0, 255).to(torch.uint8)


def service_remaining(backend) -> Optional[int]:
    """Queries the service still sells through ``backend`` (``None``: unlimited, or a backend that
    cannot tell, such as an in-process connection whose budget the experiment sets itself)."""
    remaining = getattr(backend, "remaining", None)
    return remaining() if callable(remaining) else None


def check_budget(backend, needed: int, needs: str, advice: str) -> None:
    """Stop before the first query when the account(s) behind ``backend`` cannot pay for the
    ``needed`` queries a run will spend (``needs`` says on what, ``advice`` what to change)."""
    left = service_remaining(backend)
    if left is not None and left < needed:
        raise QueryBudgetExceeded(f"the victim service has {left} queries left on this run's account(s), fewer "
                                  f"than the {needed} this run needs ({needs}); {advice}")


class HTTPConnection(ProofPayer):
    """A customer's handle on a victim served over HTTP (``serve.py``): the same ``answer(images)``,
    ``out_dim`` and ``info`` as an in-process :class:`service.victim.Connection`, so no attack changes.

    ``output`` picks one of the outputs the service offers this account (``/v1/info``'s
    ``outputs``: e.g. ``representation``, ``head`` or ``representation+head`` of an encoder, only
    for accounts with head access; ``logits``, ``probabilities``, ``top5`` or ``labels`` of a
    classifier); ``None`` takes the service's default (``answers``). ``out_dim`` and ``info`` then
    describe that output, and an output not offered to the account is refused here, before any
    query is spent.

    Images go as raw uint8 bytes (floats in [0, 1] are rounded to uint8 first, as a PNG would),
    at most ``max_batch`` per request (the server's ``max_batch`` when its card names one; a larger
    batch is split); answers come back as raw float32 bytes. Each batch carries its own
    ``Idempotency-Key``, the same on every retry of that batch, so a batch whose reply was lost
    (a reset connection, a server killed after recording it) is retried safely: the server
    answers it again from its ledger and charges it once. 429, 503 and a lost connection are
    retried with exponential backoff (``retries`` times, from ``backoff`` seconds); any other refusal is a
    :class:`utils.UserError` with the server's sentence (402, an exhausted budget:
    :class:`utils.QueryBudgetExceeded`). ``idempotency_keys=False`` sends none (a retry after a lost
    reply may then be charged twice; for benchmarks). ``requests`` counts the answered calls for the card and
    for answers; reading ``/v1/usage`` is not counted.
    """

    def __init__(self, url: str, api_key: str, *, output: Optional[str] = None, timeout: float = 120.0,
                 retries: int = 5, backoff: float = 0.5, max_batch: int = 256, idempotency_keys: bool = True):
        super().__init__()
        self.url, self.api_key, self.idempotency_keys = url.rstrip("/"), api_key, idempotency_keys
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.requests = 0
        card = self._call("GET", "/v1/info")
        self.max_batch = int(card.get("max_batch") or max_batch)
        offered = card.get("outputs") or {card["answers"]: card["out_dim"]}
        if output is not None and output not in offered:
            head = "head" in output.split("+")
            raise UserError(f"the victim service at {self.url} does not answer {output!r} to this account; it "
                            f"offers {', '.join(offered)}" + (" (head outputs need an account created with "
                                                            "`serve.py accounts create NAME --head-access`)"
                                                            if head else ""))
        self.output = output
        name = output or card["answers"]
        self.info = {**card, "answers": name, "out_dim": int(offered.get(name, card["out_dim"]))}
        if "+" in name:  # a combined output: the size of each part, in order
            self.info["parts"] = {part: int(offered.get(part) or card.get("parts", {})[part])
                                  for part in name.split("+")}
        self.out_dim = self.info["out_dim"]

    def _call(self, method: str, path: str, body: Optional[dict] = None, puzzle_out: Optional[dict] = None,
              count: bool = True, idempotency_key: Optional[str] = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}
        if idempotency_key is not None:  # the same on every retry below: the server charges the batch once
            headers["Idempotency-Key"] = idempotency_key
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    self.requests += count
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
        return self._call("GET", "/v1/usage", count=False)

    def remaining(self) -> Optional[int]:
        """Queries this account may still buy (``None``: unlimited), from ``/v1/usage``."""
        return self.usage()["remaining"]

    def answer(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[0] > self.max_batch:
            return torch.cat([self.answer(images[i:i + self.max_batch])
                              for i in range(0, images.shape[0], self.max_batch)])

        body = {"format": "uint8", **encode_array(wire_images(images))}
        if self.output is not None:
            body["output"] = self.output
        puzzle: dict = {}
        # this batch's Idempotency-Key (a 428 is not kept, so the proof reuses it); off only to measure its cost
        key = secrets.token_urlsafe(18) if self.idempotency_keys else None
        reply = self._call("POST", "/v1/embeddings", body, puzzle_out=puzzle, idempotency_key=key)
        if puzzle:  # the service's proof-of-work defense: solve here (the customer's cost), send again
            nonce = self.pay(Puzzle(puzzle["challenge"], int(puzzle["bits"])))
            reply = self._call("POST", "/v1/embeddings", {**body, "proof": {"challenge": puzzle["challenge"],
                                                                          "nonce": nonce}}, idempotency_key=key)
        try:
            answers = decode_array(reply, "float32")
        except RequestError as err:
            raise UserError(f"the victim service at {self.url} sent a malformed answer: {err.message}") from None
        if reply.get("dtype", "float32") != "float32" or answers.dim() != 2 or answers.shape[0] != images.shape[0]:
            raise UserError(f"the victim service at {self.url} answered {images.shape[0]} images with an array of "
                            f"shape {list(answers.shape)} ({reply.get('dtype')}); expected {images.shape[0]} rows "
                            f"of float32")
        return answers.to(images.device)


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

    def remaining(self) -> Optional[int]:
        """The accounts' total queries left (``None`` when any is unlimited). The batches are split
        evenly, so an account with much less than its share can still run out first."""
        left = [service_remaining(conn) for conn in self.connections]
        return None if any(n is None for n in left) else sum(left)

    def answer(self, images: torch.Tensor) -> torch.Tensor:
        parts = torch.tensor_split(torch.arange(images.shape[0]), min(len(self.connections), images.shape[0]))
        return torch.cat([conn.answer(images[idx]) for conn, idx in zip(self.connections, parts)])

    def costs(self) -> dict:
        totals: dict = {}
        for conn in self.connections:
            for key, value in getattr(conn, "costs", dict)().items():
                totals[key] = totals.get(key, 0) + value
        return totals
