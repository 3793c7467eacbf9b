"""Two-sample t-test with a one-sided option: the counterpart of the reference's
``statistical_tests/t_test.py``.

``ttest(a, b, alternative=...)`` is ``scipy.stats.ttest_ind`` (Student's, or Welch's with
``equal_var=False``) using scipy's own ``alternative`` argument; the reference converted the
two-sided p value by hand, which gives the same numbers. Its spelling ``'two.sided'`` is
accepted for ``'two-sided'``. The ownership tests (watermark success rate, dataset inference)
come with the ownership-verification issue and call this.

Example: python statistical_tests/t_test.py     # three toy cases, as the reference's main()
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import stats

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils import UserError  # noqa: E402

ALTERNATIVES = {"two-sided": "two-sided", "two.sided": "two-sided", "greater": "greater", "less": "less"}


def ttest(a, b, axis: int = 0, equal_var: bool = True, nan_policy: str = "propagate",
          alternative: str = "two-sided") -> tuple[float, float]:
    """``(t, p)`` of the independent two-sample t-test of ``a`` against ``b``.

    ``alternative``: ``two-sided`` (or the reference's ``two.sided``), ``greater`` (mean of
    ``a`` above ``b``) or ``less``.
    """
    if alternative not in ALTERNATIVES:
        raise UserError(f"alternative must be one of {', '.join(ALTERNATIVES)}, got {alternative!r}")
    res = stats.ttest_ind(np.asarray(a, dtype=float), np.asarray(b, dtype=float), axis=axis, equal_var=equal_var,
                          nan_policy=nan_policy, alternative=ALTERNATIVES[alternative])
    return float(res.statistic), float(res.pvalue)


def main() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 50), rng.normal(0.0, 1.0, 50)
    for alternative in ("two.sided", "greater", "less"):
        t, p = ttest(a, b, alternative=alternative)
        print(f"a ~ N(1, 1) vs b ~ N(0, 1), 50 each, {alternative:9s}: t = {t:.3f}, p = {p:.3g}")


if __name__ == "__main__":
    main()
