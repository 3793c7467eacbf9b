"""Nearest earlier answer search for a "similar-query detection" defense.

An encoder API keeps, per customer account, the answers it has already given. For each
new batch of answers it asks: how close is each answer to the most similar *earlier*
answer of that account? Earlier means the stored history plus the rows before it in the
same batch (row 0 of a batch is compared with the history only). Stealing attacks that
query many near-duplicate (augmented) views of the same images show up as answers that
sit unusually close to earlier ones.

Metrics (``METRICS``):

* ``"cosine"``: score = largest cosine similarity, higher = more similar. Rows whose norm
  is below ``EPS`` count as zero vectors and have cosine 0 with everything.
* ``"l2"``: score = smallest Euclidean distance, lower = more similar.

With no earlier answer at all the score is a NaN-free sentinel (``-2.0`` for cosine,
below any real cosine; ``+inf`` for l2) and the index is ``-1``.

Cost. Memory: one stored query costs ``D * element size`` bytes, i.e. ``D * 4`` bytes in
float32 (``D * 2`` in float16): a 128-d head output is 512 B, so 1M stored queries take
512 MB (a 2048-d backbone feature: 8 KB per query, 8 GB per 1M queries). Time: the search
is exact and brute force, so it grows linearly with the history: a batch of ``B``
answers against ``N`` stored ones costs ``B * N * D`` multiply-adds (plus ``B * B * D``
inside the batch), done as one matrix product per chunk of ``chunk`` history rows so
the extra memory is ``B * chunk`` floats whatever ``N`` is.

Ties: when two candidates have exactly the same computed score, the earliest index wins
(history before the batch, lower rows before higher ones). For ``"l2"`` the winner is
chosen on ``||b||^2 - 2ab`` from the matrix product, then its distance is recomputed
directly as ``||a - b||``, so an exact duplicate scores exactly ``0.0``.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

METRICS = ("cosine", "l2")
EPS = 1e-12
SENTINEL = {"cosine": -2.0, "l2": math.inf}


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown similarity metric {metric!r}; the allowed metrics are "
                         f"{', '.join(repr(m) for m in METRICS)}")


def _normalise(x: Tensor) -> Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(EPS)


def _checked_history(batch: Tensor, history: Tensor | None, chunk: int) -> Tensor | None:
    """Validate the arguments of :func:`nearest_earlier`; an empty history becomes ``None``."""
    if batch.dim() != 2:
        raise ValueError(f"batch must be a 2-D tensor [B, D], got shape {tuple(batch.shape)}")
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of rows, got {chunk}")
    D = batch.shape[1]
    if history is not None:
        if history.dim() != 2 or history.shape[1] != D:
            raise ValueError(f"history must be [N, {D}] to match the batch, got shape {tuple(history.shape)}")
        if history.shape[0] == 0:
            history = None
    return history


def _start_search(batch: Tensor, cos: bool) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """The batch in float32 (normalised for cosine), its squared norms (l2 only, else ``None``),
    and the running best key and index of every row, before any candidate."""
    device = batch.device
    B = batch.shape[0]
    b = batch.detach().to(torch.float32)
    b_sq = None
    if cos:
        b = _normalise(b)
        best = torch.full((B,), SENTINEL["cosine"], dtype=torch.float32, device=device)
    else:
        b_sq = (b * b).sum(dim=1)
        # running best of key = ||h||^2 - 2 b.h  (= distance^2 - ||b||^2, same ordering per row)
        best = torch.full((B,), math.inf, dtype=torch.float32, device=device)
    idx = torch.full((B,), -1, dtype=torch.long, device=device)
    return b, b_sq, best, idx


def _update(best: Tensor, idx: Tensor, key: Tensor, offset: int, cos: bool) -> tuple[Tensor, Tensor]:
    """The running ``(best, idx)`` after the candidates of ``key`` [B, c] (column 0 = index ``offset``)."""
    # per row the first best column wins, and it replaces the running best only when
    # strictly better, so earlier candidates win ties
    if cos:
        arg = key.argmax(dim=1)
        val = key.gather(1, arg[:, None]).squeeze(1)
        better = val > best
    else:
        arg = key.argmin(dim=1)
        val = key.gather(1, arg[:, None]).squeeze(1)
        better = val < best
    best = torch.where(better, val, best)
    idx = torch.where(better, arg + offset, idx)
    return best, idx


def _search_history(b: Tensor, history: Tensor | None, chunk: int, cos: bool, best: Tensor,
                    idx: Tensor) -> tuple[Tensor, Tensor]:
    """The running ``(best, idx)`` after every row of ``history``, ``chunk`` rows per matrix product."""
    n_hist = 0 if history is None else history.shape[0]
    for start in range(0, n_hist, chunk):
        h = history[start:start + chunk].detach().to(device=b.device, dtype=torch.float32)
        if cos:
            key = b @ _normalise(h).T
        else:
            key = torch.addmm((h * h).sum(dim=1)[None, :], b, h.T, alpha=-2.0)
        best, idx = _update(best, idx, key, start, cos)
    return best, idx


def _search_within_batch(b: Tensor, b_sq: Tensor | None, n_hist: int, cos: bool, best: Tensor,
                         idx: Tensor) -> tuple[Tensor, Tensor]:
    """The running ``(best, idx)`` after the earlier rows of the batch itself (indices from ``n_hist``)."""
    # within the batch: candidates j < i only (mask the diagonal and above)
    B = b.shape[0]
    upper = torch.ones(B, B, dtype=torch.bool, device=b.device).triu()
    if cos:
        key = (b @ b.T).masked_fill(upper, -math.inf)
    else:
        key = torch.addmm(b_sq[None, :], b, b.T, alpha=-2.0).masked_fill(upper, math.inf)
    return _update(best, idx, key, n_hist, cos)


def _final_scores(b: Tensor, history: Tensor | None, n_hist: int, cos: bool, best: Tensor,
                  idx: Tensor) -> Tensor:
    """The scores of the winners: clamped cosines, or l2 distances recomputed directly."""
    found = idx >= 0
    if cos:
        return torch.where(found, best.clamp(-1.0, 1.0), best)
    # recompute the winner's distance directly (exact 0 for duplicates)
    safe = idx.clamp_min(0)
    other = torch.empty_like(b)
    in_hist = safe < n_hist
    if n_hist:
        hi = safe[in_hist]
        other[in_hist] = history[hi.to(history.device)].to(device=b.device, dtype=torch.float32)
    other[~in_hist] = b[safe[~in_hist] - n_hist]
    dist = (b - other).norm(dim=1)
    return torch.where(found, dist, best)


def nearest_earlier(batch: Tensor, history: Tensor | None, metric: str,
                    chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """For each row ``i`` of ``batch`` [B, D], its most similar earlier answer.

    Candidates are all rows of ``history`` [N, D] (may be ``None`` or empty) and the rows
    ``j < i`` of ``batch``. Returns ``(scores, indices)``: float32 scores [B] and long
    indices [B] on the batch's device; an index points into ``cat(history, batch)``, so
    ``index >= N`` means row ``index - N`` of this batch, and ``-1`` means no earlier
    answer (score ``-2.0`` for cosine, ``inf`` for l2). Computation is in float32 even
    for float16 / bfloat16 inputs; ``history`` may live on another device (it is moved
    ``chunk`` rows at a time). Ties go to the earliest index.
    """
    _check_metric(metric)
    history = _checked_history(batch, history, chunk)
    n_hist = 0 if history is None else history.shape[0]
    cos = metric == "cosine"
    b, b_sq, best, idx = _start_search(batch, cos)
    if batch.shape[0] == 0:
        return best, idx
    best, idx = _search_history(b, history, chunk, cos, best, idx)
    best, idx = _search_within_batch(b, b_sq, n_hist, cos, best, idx)
    return _final_scores(b, history, n_hist, cos, best, idx), idx


@dataclasses.dataclass
class _Layout:
    start: int = 0  # first filled row of the buffer
    end: int = 0  # one past the last filled row


class AnswerHistory:
    """A growing store of one account's answers, rows kept oldest -> newest.

    Storage is one preallocated buffer whose capacity doubles when full (amortised O(1)
    per appended row; no concatenation of the whole history per batch). ``dtype`` is
    float32 by default; float16 halves the memory (search still runs in float32).
    ``dim`` may be left ``None`` and is then taken from the first append.

    ``max_size``: keep only the most recent ``max_size`` rows. The buffer then grows to at
    most ``2 * max_size`` rows; old rows are dropped by moving a start offset, and when
    the end of the buffer is reached the (at most ``max_size``) kept rows are copied back
    to its front once, which happens at most once per ``max_size`` appended rows. So
    ``view()`` stays a contiguous, copy-free slice in oldest -> newest order.
    """

    def __init__(self, dim: int | None = None, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", capacity: int = 1024, max_size: int | None = None):
        if max_size is not None and max_size < 1:
            raise ValueError(f"max_size must be a positive number of rows or None, got {max_size}")
        if capacity < 1:
            raise ValueError(f"capacity must be a positive number of rows, got {capacity}")
        self.dim = dim
        self.dtype = dtype
        self.device = torch.device(device)
        self.max_size = max_size
        self._initial = capacity if max_size is None else min(capacity, 2 * max_size)
        self._buf: Tensor | None = None
        self._lay = _Layout()

    # ---------------------------------------------------------------- size and memory
    def __len__(self) -> int:
        return self._lay.end - self._lay.start

    @property
    def capacity(self) -> int:
        return 0 if self._buf is None else self._buf.shape[0]

    @property
    def bytes_per_query(self) -> int:
        """Bytes one stored answer costs: ``D * element size`` (0 while D is unknown)."""
        elem = torch.empty((), dtype=self.dtype).element_size()
        return (self.dim or 0) * elem

    @property
    def nbytes(self) -> int:
        """Memory of the filled part (the buffer may hold up to twice as much)."""
        return len(self) * self.bytes_per_query

    # ---------------------------------------------------------------- content
    def view(self) -> Tensor:
        """The stored rows [N, D], oldest first; a view into the buffer, not a copy.

        Later appends may overwrite or reallocate the buffer: clone it to keep it.
        """
        if self._buf is None:
            return torch.empty(0, self.dim or 0, dtype=self.dtype, device=self.device)
        return self._buf[self._lay.start:self._lay.end]

    def append(self, rows: Tensor) -> None:
        """Store the answers ``rows`` [B, D] (converted to this store's dtype and device)."""
        if rows.dim() != 2:
            raise ValueError(f"rows must be a 2-D tensor [B, D], got shape {tuple(rows.shape)}")
        if self.dim is None:
            self.dim = rows.shape[1]
        if rows.shape[1] != self.dim:
            raise ValueError(f"rows have dimension {rows.shape[1]} but this history stores {self.dim}")
        rows = rows.detach()
        b = rows.shape[0]
        if b == 0:
            return
        lay = self._lay
        if self.max_size is not None:
            if b >= self.max_size:  # the new rows alone fill the store
                rows, b = rows[-self.max_size:], self.max_size
                lay.start = lay.end
            lay.start += max(0, len(self) + b - self.max_size)  # drop the oldest
        n = len(self)
        if self._buf is None or lay.end + b > self._buf.shape[0]:
            cap = self.capacity or self._initial
            limit = math.inf if self.max_size is None else 2 * self.max_size
            while cap < n + b or (cap < 2 * (n + b) and cap < limit):
                cap *= 2
            if self.max_size is not None:
                cap = min(cap, 2 * self.max_size)
            if self._buf is None or cap != self._buf.shape[0]:
                new = torch.empty(cap, self.dim, dtype=self.dtype, device=self.device)
                if n:
                    new[:n] = self._buf[lay.start:lay.end]
                self._buf = new
            elif n:  # full-size buffer: move the kept rows to the front
                self._buf[:n] = self._buf[lay.start:lay.end].clone()
            lay.start, lay.end = 0, n
        self._buf[lay.end:lay.end + b] = rows.to(device=self.device, dtype=self.dtype)
        lay.end += b

    # ---------------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        """Plain tensors and ints (loadable with ``torch.load(weights_only=True)``).

        ``dim`` 0 means unknown, ``max_size`` 0 means unlimited.
        """
        return {"rows": self.view().clone(), "dim": int(self.dim or 0),
                "max_size": int(self.max_size or 0)}

    def load_state_dict(self, state: dict) -> None:
        """Replace the content with ``state``; rows take this store's dtype and device."""
        rows = state["rows"]
        self.dim = int(state["dim"]) or None
        self.max_size = int(state["max_size"]) or None
        if self.max_size is not None:
            self._initial = min(self._initial, 2 * self.max_size)
        self._buf, self._lay = None, _Layout()
        if self.dim is not None and rows.shape[0]:
            self.append(rows)


def check_batch_against(history: AnswerHistory, batch: Tensor, metric: str,
                        chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """Search ``batch`` against ``history`` (see :func:`nearest_earlier`), then store it.

    Returns ``(scores, indices)``; indices point into ``cat(history.view(), batch)`` as
    it was before the append.
    """
    past = history.view() if len(history) else None
    out = nearest_earlier(batch, past, metric, chunk=chunk)
    history.append(batch)
    return out
