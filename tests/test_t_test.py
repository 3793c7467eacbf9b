"""statistical_tests/t_test.py: scipy's t-test, the reference's 'two.sided' spelling, and the
reference's hand conversion of the two-sided p value to one-sided ones."""
import pytest
from scipy import stats

from statistical_tests.t_test import ttest
from utils import UserError

A = [2.1, 2.5, 1.9, 2.8, 2.2, 2.6]
B = [1.2, 1.9, 1.4, 1.1, 1.8, 1.5]


def test_matches_scipy_and_the_references_conversion():
    t, p2 = stats.ttest_ind(A, B)
    assert ttest(A, B) == pytest.approx((t, p2))
    assert ttest(A, B, alternative="two.sided") == pytest.approx((t, p2))
    assert t > 0
    # the reference: greater = p/2 when t >= 0, less = 1 - p/2
    assert ttest(A, B, alternative="greater")[1] == pytest.approx(p2 / 2)
    assert ttest(A, B, alternative="less")[1] == pytest.approx(1 - p2 / 2)
    assert ttest(B, A, alternative="less")[1] == pytest.approx(p2 / 2)
    welch = stats.ttest_ind(A, B, equal_var=False)
    assert ttest(A, B, equal_var=False) == pytest.approx((welch.statistic, welch.pvalue))


def test_unknown_alternative_is_one_sentence():
    with pytest.raises(UserError, match="alternative must be one of"):
        ttest(A, B, alternative="bigger")
