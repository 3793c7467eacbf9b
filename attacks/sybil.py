"""Several accounts (a Sybil attack on per-account defenses): route an attack's queries over K
accounts, and read back what each account's defenses saw.

The service keeps its defenses' state per account (similar-query histories, proof-of-work
deviation scores), so an attacker that spreads its queries over K accounts shows each defense
only a share of them. How the queries are spread matters (``--sybil-split``):

* ``views`` (the default): the views of one image go to different accounts (when there are at
  least as many accounts as views), and images go round-robin. A repeat detector never sees an
  image's second view next to its first: what a Sybil attacker who knows the defense does.
* ``images``: all views of one image go to the same account, images round-robin (an attacker
  who splits its image set between its accounts); each account still repeats itself.
* ``even``: each batch cut into K contiguous parts as it is sent (``client.SybilConnection``,
  what ``steal.py --api-key K1 --api-key K2`` did before this option existed). With the attack's
  view-major batches (``attack.QueryViews.rows``) and K a multiple of the views, the views of an
  image land on different accounts too, but only by that coincidence of layout.

Routing by image needs to know which rows of a batch are views of one image. The attack sends
every batch view-major: ``n_views`` blocks of the same ``m`` images in the same order (the
query client drops cached rows, but the views of an image are always queried together, so
both are new or both are cached), so row ``r`` is view ``r // m`` of the batch's image
``r % m``. The router checks that the rows divide into ``n_views`` blocks.

Statistics (:func:`account_stats`): per account its queries, requests and, for each defense
of the service, counts read from its per-account state and ratios made from them (one table,
``STATS``: detect = fraction of queries flagged; pow = deviation score, expected hashes and
effective bits per query; any other defense: the numbers in its state, summed). ``steal.py``
writes them to ``accounts.json`` in the run directory; ``python sybil.py --run DIR --results
R`` appends them to a results file (``scripts/tables.py sybil`` does).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from attacks.client import SybilConnection
from utils import UserError

SPLITS = ("views", "images", "even")


def account_names(k: int) -> list[str]:
    """The in-process accounts of an attack through ``k`` accounts: ``attacker`` alone for one
    (what steal.py always used), ``attacker0`` ... ``attacker{k-1}`` for more."""
    if k < 1:
        raise UserError(f"--accounts must be at least 1, got {k}")
    return ["attacker"] if k == 1 else [f"attacker{i}" for i in range(k)]


class SybilRouter(SybilConnection):
    """A Sybil connection that routes by image: ``split="views"`` sends the views of one image to
    consecutive accounts (so to different ones when there are at least ``n_views`` accounts),
    ``"images"`` all views of an image to one account. Assignments continue round-robin across
    calls, so over a whole attack each account gets its share to within one query (``views``)
    or one image (``images``)."""

    def __init__(self, connections: Sequence, split: str = "views", n_views: int = 1):
        super().__init__(connections)
        if split not in ("views", "images"):
            raise ValueError(f"SybilRouter routes by views or images, not {split!r} (even: client.SybilConnection)")
        if n_views < 1:
            raise ValueError(f"n_views must be at least 1, got {n_views}")
        self.split, self.n_views = split, n_views
        self._next = 0  # the next slot of the round-robin, carried across calls

    def assign(self, rows: int) -> torch.Tensor:
        """The account of each of ``rows`` view-major rows (``n_views`` blocks of one batch's images)."""
        if rows % self.n_views:
            raise ValueError(f"a batch of {rows} rows is not {self.n_views} view-major blocks of the same images; "
                             f"route it with --sybil-split even")
        m = rows // self.n_views
        r = torch.arange(rows)
        image, view = r % m, r // m
        k = len(self.connections)
        if self.split == "views":  # slot = image-major position: the views of an image are consecutive
            slots = self._next + image * self.n_views + view
            self._next += rows
        else:
            slots = self._next + image
            self._next += m
        return slots % k

    def answer(self, images: torch.Tensor) -> torch.Tensor:
        owner = self.assign(images.shape[0]).to(images.device)
        out = None
        for a, conn in enumerate(self.connections):
            idx = (owner == a).nonzero().flatten()
            if len(idx) == 0:
                continue
            part = conn.answer(images[idx])
            if out is None:
                out = part.new_empty((images.shape[0], part.shape[1]))
            out[idx.to(part.device)] = part
        return out


def sybil_connection(connections: Sequence, split: str = "views", n_views: int = 1):
    """One connection for an attack through these accounts' connections: the connection itself for
    one account, else a :class:`SybilRouter` (``views``, ``images``) or ``client.SybilConnection``
    (``even``)."""
    if split not in SPLITS:
        raise UserError(f"--sybil-split must be one of {', '.join(SPLITS)}, got {split!r}")
    if len(connections) == 1:
        return connections[0]
    if split == "even":
        return SybilConnection(connections)
    return SybilRouter(connections, split, n_views)


# ----------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class StatsSpec:
    """How one defense's per-account state reads as numbers: ``counts(state)`` (summed over
    accounts for the totals) and ``ratios(counts)`` (recomputed from the summed counts, and
    averaged over accounts as ``mean_<ratio>``)."""
    counts: Callable[[dict], dict]
    ratios: Callable[[dict], dict] = field(default=lambda counts: {})


def _frac(a: float, b: float) -> float:
    return a / b if b else 0.0


def _pow_ratios(c: dict) -> dict:
    per_query = _frac(c["expected_hashes"], c["answered"])
    return {"deviation_score": _frac(c["similar"], c["answered"]), "hashes_per_query": per_query,
            "bits_per_query": math.log2(per_query) if per_query > 0 else 0.0,
            "bits_per_puzzle": _frac(c["bits_paid"], c["puzzles"])}


def _numbers(state: dict) -> dict:
    """Any defense without an entry in STATS: the plain numbers of its state."""
    return {k: v for k, v in state.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


STATS: dict[str, StatsSpec] = {
    "detect": StatsSpec(lambda s: {"checked": s.get("checked", 0), "flagged": s.get("flagged", 0)},
                        lambda c: {"flagged_fraction": _frac(c["flagged"], c["checked"])}),
    # bits_paid: the bits of each puzzle solved (k + round(log2 batch)); expected hashes: sum of 2^bits
    "pow": StatsSpec(lambda s: {"answered": s.get("answered", 0), "similar": s.get("similar", 0),
                                "puzzles": len(s.get("bits_paid", [])), "bits_paid": sum(s.get("bits_paid", [])),
                                "expected_hashes": float(s.get("expected_hashes", 0.0))}, _pow_ratios),
}


def _spec(name: str) -> StatsSpec:
    return STATS.get(name, StatsSpec(_numbers))


def defense_stats(name: str, state: dict) -> dict:
    """The numbers of one account's state of the defense ``name``: its counts and ratios."""
    counts = _spec(name).counts(state)
    return {**counts, **_spec(name).ratios(counts)}


def account_stats(service, names: Sequence[str]) -> dict:
    """Per account (``names``, in order) its queries, requests and each defense's numbers
    (:func:`defense_stats`), and the totals: counts summed, ratios of the sums, and the mean of
    each ratio over the accounts (``mean_<ratio>``: what the typical account looks like)."""
    per = [{"account": name, "used": service.accounts[name].used, "requests": service.accounts[name].requests}
           for name in names]
    totals: dict = {"accounts": len(per), "used": sum(r["used"] for r in per),
                    "requests": sum(r["requests"] for r in per)}
    for defense in service.defenses:
        spec, summed, ratios = _spec(defense.name), {}, []
        for name, row in zip(names, per):
            counts = spec.counts(service.accounts[name].state.get(defense.name, {}))
            ratios.append(spec.ratios(counts))
            row[defense.name] = {**counts, **ratios[-1]}
            for k, v in counts.items():
                summed[k] = summed.get(k, 0) + v
        means = {f"mean_{k}": statistics.fmean(r[k] for r in ratios) for k in ratios[0]} if ratios else {}
        totals[defense.name] = {**summed, **spec.ratios(summed), **means}
    return {"accounts": per, "totals": totals}


def summary(stats: dict) -> str:
    """One log line: queries per account and each defense's headline numbers."""
    t = stats["totals"]
    parts = [f"{t['accounts']} account(s), queries per account {[r['used'] for r in stats['accounts']]}"]
    if "detect" in t:
        parts.append(f"detect: {100 * t['detect']['mean_flagged_fraction']:.1f}% flagged per account "
                     f"({t['detect']['flagged']} of {t['detect']['checked']})")
    if "pow" in t:
        parts.append(f"pow: {t['pow']['bits_per_query']:.2f} bits per query ({t['pow']['expected_hashes']:.3g} "
                     f"expected hashes), deviation score {t['pow']['mean_deviation_score']:.2f} per account")
    return "; ".join(parts)
