"""Statistics and verdicts for REPORT.md, in one place: the one rule every claim follows (:data:`RULE`,
stated at the top of the report), estimates over seeds with 95% Student-t intervals, and the plot
file helper.

The rule. A row is a mean over seeds (:class:`Estimate`). A claim compares rows through a
:class:`Difference` (:func:`difference`, or :func:`contrast` for more than two rows): *paired* when the
rows have the same units (seeds; every row of a table at seed s faces the victim of seed s), i.e. the
mean of the per-unit differences with a t interval over units; *Welch* otherwise (the difference of
the means, Welch-Satterthwaite degrees of freedom). Then:

* "a is above b" (or above a threshold): :func:`exceeds` on the 95% interval;
* "a is not better than b" / "no difference": :func:`not_above` / :func:`equivalent`, an equivalence
  test (TOST at 5%) with the margin :data:`EQUIVALENCE_MARGIN`, on the 90% interval; failing to show
  equivalence gives :data:`NOT_SHOWN`, never :data:`HOLDS`.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from utils import atomic_path

HOLDS, FAILS, INCONCLUSIVE, NOT_SHOWN = "holds", "does not hold", "inconclusive", "not shown"
PAIRED, WELCH, ONE_SAMPLE = "paired", "Welch", "over seeds"
ALPHA = 0.05  # every test's level: 95% intervals for direction, 90% intervals (two one-sided 5% tests) for equivalence
EQUIVALENCE_MARGIN = 2.0  # points (of top-1 accuracy, or of WSR): "no difference" means within +-2 points

RULE = (
    "**The statistics rule, for every claim below** (`reports/stats.py`). A row is the mean ± 95% Student-t "
    "interval over seeds. A claim compares rows through their difference. Where the rows share their seeds "
    "(the same set of seeds; every row of a table at seed s faces the victim of seed s), the difference is "
    "**paired by seed**: the per-seed differences' mean ± 95% t interval over seeds. Where their seeds differ, it "
    "is the difference of the means with an unpaired **Welch** interval (Welch-Satterthwaite degrees of "
    "freedom). The evidence names which was used. A claim that one row is above another (or above a stated "
    "threshold) **holds** when the 95% interval of the difference lies wholly above zero (the threshold), "
    "**does not hold** when it lies wholly below, and is **inconclusive** otherwise (or with a single seed). A "
    f"claim of no difference, or that one row is not better than another, is an equivalence test (two one-sided "
    f"t-tests at 5%) with a margin of ±{EQUIVALENCE_MARGIN:g} points: it **holds** only when the 90% interval of "
    f"the difference lies inside ±{EQUIVALENCE_MARGIN:g} (for *not better*: its upper end is below "
    f"+{EQUIVALENCE_MARGIN:g}), **does not hold** when the 90% interval lies wholly beyond the margin, and is "
    "**not shown** otherwise: an interval that merely reaches zero is no evidence of equivalence. A claim made "
    "of several comparisons holds when each does and fails when one fails. The one kind of claim outside this "
    "rule counts what a per-seed ownership test decided (*stolen* / *not stolen*), and says so."
)


# ----------------------------------------------------------------------------- rows: estimates over seeds


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
        return t_quantile(0.95, self.n - 1) * statistics.stdev(self.values) / math.sqrt(self.n)

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


def t_quantile(confidence: float, df: float) -> float:
    """The two-sided ``confidence`` quantile of Student's t with ``df`` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, df))


# ----------------------------------------------------------------------------- pairing units


def pairing_units(records: Sequence[dict]) -> list[str]:
    """The unit each record is paired on: its seed, and its victim where one table holds several victims
    at that seed.

    Within a table and scale, every row of seed s attacks (or is) the victim of seed s, so the seed is the
    unit. A record that names its victim (``victim_checkpoint``) in a table where one seed has more than one
    named victim (Table 20: the watermarked SSL victim and the supervised one) gets ``seed@victim``, so rows
    of different victims never pair.
    """
    victims: dict = defaultdict(set)
    for r in records:
        if r.get("victim_checkpoint"):
            victims[(r.get("table"), r.get("scale"), str(r.get("seed")))].add(r["victim_checkpoint"])
    out = []
    for r in records:
        seed = str(r.get("seed"))
        several = len(victims.get((r.get("table"), r.get("scale"), seed), ())) > 1
        out.append(f"{seed}@{r['victim_checkpoint']}" if several and r.get("victim_checkpoint") else seed)
    return out


# ----------------------------------------------------------------------------- differences of rows


@dataclass(frozen=True)
class Difference:
    """A difference (or any linear contrast) of rows with its t interval: ``mean`` ± ``t * se``.

    ``method`` is :data:`PAIRED` (per-unit contrasts over ``sizes[0]`` shared units), :data:`ONE_SAMPLE` (one row
    against a constant) or :data:`WELCH` (independent means; ``sizes`` per row). ``se`` is None when some row
    has fewer than two values (no interval)."""
    mean: float
    se: float | None
    df: float | None
    method: str
    sizes: tuple[int, ...]

    def interval(self, confidence: float = 1 - ALPHA) -> tuple[float, float] | None:
        if self.se is None:
            return None
        hw = t_quantile(confidence, self.df) * self.se if self.se > 0 else 0.0
        return self.mean - hw, self.mean + hw

    @property
    def half_width(self) -> float | None:
        ci = self.interval()
        return None if ci is None else (ci[1] - ci[0]) / 2

    @property
    def how(self) -> str:
        """How it was computed: ``paired by seed, 3 seeds``, ``Welch, seeds differ: 3 vs 2 seeds``, or (one row
        against a constant) ``3 seeds``."""
        if self.method == WELCH:
            return f"Welch, seeds differ: {' vs '.join(map(str, self.sizes))} seeds"
        seeds = f"{self.sizes[0]} seed{'s' if self.sizes[0] != 1 else ''}"
        return f"paired by seed, {seeds}" if self.method == PAIRED else seeds

    def __str__(self) -> str:
        hw = self.half_width
        return f"{self.mean:+.1f}" if hw is None else f"{self.mean:+.1f} ± {hw:.1f}"


def describe(d: Difference | None, unit: str = "") -> str:
    """A difference for a claim's evidence, with how it was computed: ``+14.9 ± 4.4 (paired by seed, 3 seeds)``."""
    return "no data" if d is None else f"{d}{unit} ({d.how})"


def paired_interval(a: Mapping, b: Mapping, confidence: float = 1 - ALPHA) -> tuple[float, float, float]:
    """(mean, low, high) of ``a[u] - b[u]`` over the rows' units (paired t; the rows must share at least two
    units)."""
    if set(a) != set(b):
        raise ValueError(f"paired rows need the same units, got {sorted(a)} and {sorted(b)}")
    d = difference(a, b)
    return (d.mean, *d.interval(confidence))


def welch_interval(a: Iterable[float], b: Iterable[float], confidence: float = 1 - ALPHA) -> tuple[float, float, float]:
    """(mean, low, high) of ``mean(a) - mean(b)`` for independent samples (Welch)."""
    a, b = list(a), list(b)
    d = _welch([(1.0, a), (-1.0, b)], 0.0)
    return (d.mean, *d.interval(confidence))


def contrast(terms: Sequence[tuple[float, Mapping]], offset: float = 0.0) -> Difference | None:
    """``sum(c * row) + offset`` for rows given as ``{unit: value}`` (unit: a seed, :func:`pairing_units`).

    Paired when every row has the same units: the contrast per unit, then a t interval over units (matched
    by unit, never by order; one unit gives no interval). Otherwise Welch: the contrast of the rows' means,
    its standard error from each row's variance, Welch-Satterthwaite degrees of freedom. None when a row is
    empty."""
    terms = [(float(c), dict(row)) for c, row in terms]
    if not terms or any(not row for _, row in terms):
        return None
    units = set(terms[0][1])
    if all(set(row) == units for _, row in terms):
        per_unit = [sum(c * row[u] for c, row in terms) + offset for u in sorted(units)]
        n = len(per_unit)
        se = statistics.stdev(per_unit) / math.sqrt(n) if n >= 2 else None
        return Difference(statistics.fmean(per_unit), se, n - 1 if n >= 2 else None,
                          ONE_SAMPLE if len(terms) == 1 else PAIRED, (n,))
    return _welch([(c, list(row.values())) for c, row in terms], offset)


def _welch(terms: Sequence[tuple[float, list]], offset: float) -> Difference:
    mean = sum(c * statistics.fmean(v) for c, v in terms) + offset
    sizes = tuple(len(v) for _, v in terms)
    if min(sizes) < 2:
        return Difference(mean, None, None, WELCH, sizes)
    parts = [c * c * statistics.variance(v) / len(v) for c, v in terms]
    var = sum(parts)
    if var == 0:  # no spread anywhere: a degenerate interval, any degrees of freedom
        return Difference(mean, 0.0, float(sum(n - 1 for n in sizes)), WELCH, sizes)
    df = var * var / sum(p * p / (n - 1) for p, n in zip(parts, sizes))
    return Difference(mean, math.sqrt(var), df, WELCH, sizes)


def difference(a: Mapping, b: Mapping) -> Difference | None:
    """Row ``a`` minus row ``b`` by the rule: paired by unit when they share their units, else Welch."""
    return contrast([(1.0, a), (-1.0, b)])


def one_sample(values: Mapping, minus: float = 0.0) -> Difference | None:
    """One row (``{unit: value}``, e.g. per-seed ratios) minus a constant, with its t interval over units."""
    return contrast([(1.0, values)], offset=-minus)


# ----------------------------------------------------------------------------- verdicts


def exceeds(d: Difference | None, threshold: float = 0.0) -> str:
    """Is the difference above ``threshold``? holds when its whole 95% interval is, does not hold when the
    whole interval is below, inconclusive otherwise (or without an interval)."""
    ci = d.interval(1 - ALPHA) if d is not None else None
    if ci is None:
        return INCONCLUSIVE
    return HOLDS if ci[0] > threshold else FAILS if ci[1] < threshold else INCONCLUSIVE


def not_above(d: Difference | None, margin: float = EQUIVALENCE_MARGIN) -> str:
    """One-sided equivalence ("not better by more than ``margin``"): holds when the upper end of the 90%
    interval is below ``+margin`` (the one-sided 5% test), does not hold when its lower end is above it,
    not shown otherwise."""
    ci = d.interval(1 - 2 * ALPHA) if d is not None else None
    if ci is None:
        return NOT_SHOWN
    return HOLDS if ci[1] < margin else FAILS if ci[0] > margin else NOT_SHOWN


def equivalent(d: Difference | None, margin: float = EQUIVALENCE_MARGIN) -> str:
    """Two one-sided tests (TOST): holds when the 90% interval lies inside ``±margin``, does not hold when it
    lies wholly outside, not shown otherwise."""
    ci = d.interval(1 - 2 * ALPHA) if d is not None else None
    if ci is None:
        return NOT_SHOWN
    if -margin < ci[0] and ci[1] < margin:
        return HOLDS
    return FAILS if ci[0] >= margin or ci[1] <= -margin else NOT_SHOWN


def interval90(d: Difference | None) -> str:
    """``90% CI a to b`` for an equivalence claim's evidence."""
    ci = d.interval(1 - 2 * ALPHA) if d is not None else None
    return "no interval" if ci is None else f"90% CI {ci[0]:+.1f} to {ci[1]:+.1f}"


def all_of(verdicts: list[str]) -> str:
    """A claim made of several comparisons: holds if all hold, fails if any fails; otherwise not shown when
    an equivalence was not shown, else inconclusive."""
    if not verdicts:
        return INCONCLUSIVE
    if FAILS in verdicts:
        return FAILS
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    return NOT_SHOWN if NOT_SHOWN in verdicts else INCONCLUSIVE


# ----------------------------------------------------------------------------- text and plots


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
