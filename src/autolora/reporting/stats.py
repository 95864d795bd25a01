"""Statistics over seeds: mean, sample standard deviation and two-sample t-tests (Table 8)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

STUDENT = "student"
WELCH = "welch"
TEST_DESCRIPTIONS = {
    STUDENT: "Student's two-sample t-test (equal variances, two-sided)",
    WELCH: "Welch's two-sample t-test (unequal variances, Welch–Satterthwaite df, two-sided)",
}
STD_DESCRIPTION = "std = sample standard deviation over seeds (ddof = 1)"


@dataclass(frozen=True)
class SeedSummary:
    """Mean and sample std (ddof=1) of one number's per-seed values; std is NaN for one seed."""

    mean: float
    std: float
    n: int


@dataclass(frozen=True)
class TTestResult:
    statistic: float
    pvalue: float
    df: float
    kind: str  # STUDENT | WELCH


def summarize(values: Sequence[float]) -> SeedSummary:
    """Mean and sample standard deviation (ddof=1) of per-seed values."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return SeedSummary(math.nan, math.nan, 0)
    std = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return SeedSummary(float(array.mean()), std, int(array.size))


def ttest_kind(welch: bool) -> str:
    return WELCH if welch else STUDENT


def two_sample_ttest(a: Sequence[float], b: Sequence[float], *, welch: bool = False) -> TTestResult:
    """Two-sided two-sample t-test of ``a`` against ``b``; Student's by default, Welch's on request.

    Needs at least two values per group; NaN p-value when both groups have zero variance.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"a t-test needs at least two values per group, got {a.size} and {b.size}")
    result = scipy_stats.ttest_ind(a, b, equal_var=not welch)
    return TTestResult(
        statistic=float(result.statistic),
        pvalue=float(result.pvalue),
        df=float(result.df),
        kind=ttest_kind(welch),
    )
