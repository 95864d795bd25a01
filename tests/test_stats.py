"""Seed statistics and t-tests against hand computations (math + the t distribution's tail)."""

from __future__ import annotations

import math

import pytest
from scipy.stats import t as t_distribution

from autolora.reporting.stats import STUDENT, WELCH, summarize, two_sample_ttest

AUTOLORA = [54.27, 54.61, 53.95]
VANILLA = [52.97, 53.20, 52.41]
TWINS_SPREAD = [53.04, 50.10, 55.90]


def hand_mean_var(values):
    mean = sum(values) / len(values)
    return mean, sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def hand_student(a, b):
    (ma, va), (mb, vb) = hand_mean_var(a), hand_mean_var(b)
    na, nb = len(a), len(b)
    pooled = ((na - 1) * va + (nb - 1) * vb) / (na + nb - 2)
    statistic = (ma - mb) / math.sqrt(pooled * (1 / na + 1 / nb))
    df = na + nb - 2
    return statistic, 2 * t_distribution.sf(abs(statistic), df), df


def hand_welch(a, b):
    (ma, va), (mb, vb) = hand_mean_var(a), hand_mean_var(b)
    se_a, se_b = va / len(a), vb / len(b)
    statistic = (ma - mb) / math.sqrt(se_a + se_b)
    df = (se_a + se_b) ** 2 / (se_a**2 / (len(a) - 1) + se_b**2 / (len(b) - 1))
    return statistic, 2 * t_distribution.sf(abs(statistic), df), df


def test_summary_is_mean_and_sample_std():
    summary = summarize([81.0, 81.6, 80.7])
    assert summary.mean == pytest.approx(81.1)
    # deviations -0.1, 0.5, -0.4: squares 0.01 + 0.25 + 0.16 = 0.42, / (3 - 1) = 0.21
    assert summary.std == pytest.approx(math.sqrt(0.21))
    assert summary.n == 3


def test_summary_of_one_seed_has_no_std_and_of_none_no_mean():
    one = summarize([70.0])
    assert one.mean == 70.0 and math.isnan(one.std) and one.n == 1
    assert summarize([]).n == 0 and math.isnan(summarize([]).mean)


def test_student_matches_hand_computation():
    result = two_sample_ttest(AUTOLORA, VANILLA)
    statistic, p, df = hand_student(AUTOLORA, VANILLA)
    assert result.kind == STUDENT
    assert result.statistic == pytest.approx(statistic, rel=1e-12)
    assert result.pvalue == pytest.approx(p, rel=1e-10)
    assert result.df == df == 4


def test_welch_matches_welch_satterthwaite():
    result = two_sample_ttest(AUTOLORA, TWINS_SPREAD, welch=True)
    statistic, p, df = hand_welch(AUTOLORA, TWINS_SPREAD)
    assert result.kind == WELCH
    assert result.statistic == pytest.approx(statistic, rel=1e-12)
    assert result.df == pytest.approx(df, rel=1e-12)
    assert result.pvalue == pytest.approx(p, rel=1e-10)
    # unequal variances: Welch's df is well below Student's 4, and the p-values differ
    assert df < 3 and result.pvalue != pytest.approx(
        two_sample_ttest(AUTOLORA, TWINS_SPREAD).pvalue
    )


def test_ttest_needs_two_values_per_group():
    with pytest.raises(ValueError, match="at least two values"):
        two_sample_ttest([1.0], [2.0, 3.0])
