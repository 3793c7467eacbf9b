"""Statistics and verdicts for REPORT.md, in one place: estimates over seeds with 95% Student-t
intervals, the verdict rules every section uses, and the plot file helper.

A claim compares intervals: it *holds* when the intervals are apart in the claimed direction,
*does not hold* when they are apart the other way, and is *inconclusive* when they overlap (or
when fewer than two seeds give no interval at all). A paired claim is the same rule applied to
the per-seed differences (:func:`sign_verdict`).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from utils import atomic_path

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclass(frozen=True)
class Estimate:
    """Mean of per-seed values with a two-sided 95% Student-t confidence interval."""
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def half_width(self) -> float | None:
        if self.n < 2:
            return None
        from scipy import stats

        return float(stats.t.ppf(0.975, self.n - 1)) * statistics.stdev(self.values) / math.sqrt(self.n)

    @property
    def low(self) -> float:
        return self.mean - (self.half_width or 0.0)

    @property
    def high(self) -> float:
        return self.mean + (self.half_width or 0.0)

    def __str__(self) -> str:
        hw = self.half_width
        return f"{self.mean:.1f}" if hw is None else f"{self.mean:.1f} ± {hw:.1f}"


def estimate(values) -> Estimate | None:
    return Estimate(tuple(float(v) for v in values)) if values else None


def compare(a: Estimate | None, b: Estimate | None) -> str:
    """Is ``a`` above ``b``? holds / does not hold / inconclusive (overlapping intervals)."""
    if a is None or b is None or a.n < 2 or b.n < 2:
        return INCONCLUSIVE
    if a.low > b.high:
        return HOLDS
    if a.high < b.low:
        return FAILS
    return INCONCLUSIVE


def at_least(e: Estimate | None, threshold: float) -> str:
    """Is ``e`` at least ``threshold``? holds when its whole interval is, fails when none of it is."""
    if e is None or e.n < 2:
        return INCONCLUSIVE
    return HOLDS if e.low >= threshold else FAILS if e.high < threshold else INCONCLUSIVE


def all_of(verdicts: list[str]) -> str:
    """A claim made of several comparisons: holds if all hold, fails if any fails."""
    if not verdicts:
        return INCONCLUSIVE
    if FAILS in verdicts:
        return FAILS
    return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE


def sign_verdict(e: Estimate | None) -> str:
    """Is the quantity (a per-seed difference) above zero? holds when its whole 95% interval is,
    does not hold when the whole interval is below zero, inconclusive otherwise (or with fewer
    than two seeds)."""
    if e is None or e.n < 2:
        return INCONCLUSIVE
    return HOLDS if e.low > 0 else FAILS if e.high < 0 else INCONCLUSIVE


def mean_sd(values, scale: float = 1.0, digits: int = 1) -> str:
    """``mean ± standard deviation`` over seeds (``-`` for none; the mean alone for one)."""
    values = list(values)
    if not values:
        return "-"
    mean = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def save_plot(path: Path, draw, size=(6, 4)) -> None:
    """Draw on a fresh figure with ``draw(ax)`` and write it as a PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    draw(ax)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
