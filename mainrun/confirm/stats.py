"""The statistics of a confirmation, from scipy.stats: a config's spread over its train seeds, and
two configs compared seed by seed. Lower values are better (val_loss).

A number comes with its 95% confidence interval only when there is one to give: one seed has
no spread, and values that do not vary at all give a zero-width interval that claims more than
a handful of runs can show. Then `why_no_ci` says which, and the verdict says it in words.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

LEVEL = 0.95
CURSE_SDS = 2.0        # an official value this many fresh-seed sds better than their mean is flagged


@dataclass(frozen=True)
class Spread:
    """One config over its train seeds: n values, their mean, sd (n - 1) and the t interval of
    the mean."""
    n: int
    mean: float
    sd: float | None = None
    ci: tuple[float, float] | None = None
    why_no_ci: str | None = None


def spread(values: Sequence[float], level: float = LEVEL) -> Spread:
    from scipy import stats
    x = np.asarray(values, dtype=float)
    n, mean = len(x), float(np.mean(x))
    if n < 2:
        return Spread(n, mean, why_no_ci="one seed, so no spread")
    sd = float(np.std(x, ddof=1))
    if sd == 0:
        return Spread(n, mean, 0.0, why_no_ci=f"all {n} seeds gave the same value")
    low, high = stats.t.interval(level, n - 1, loc=mean, scale=sd / math.sqrt(n))
    return Spread(n, mean, sd, (float(low), float(high)))


@dataclass(frozen=True)
class Paired:
    """Config a against config b on the train seeds both have: `diff` is the mean of b - a, so
    positive means a is better (lower); its t interval and the paired t-test's two-sided p."""
    n: int
    diff: float
    sd: float | None = None
    ci: tuple[float, float] | None = None
    p: float | None = None
    why_no_ci: str | None = None

    @property
    def decided(self) -> bool:
        """Whether the interval excludes zero (equivalently, p < 1 - LEVEL)."""
        return self.ci is not None and (self.ci[0] > 0 or self.ci[1] < 0)


def paired(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Paired:
    """a[i] and b[i] were trained on the same seed."""
    from scipy import stats
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) != len(b) or not len(a):
        raise ValueError("paired() needs two equally long, non-empty sequences")
    d = b - a
    n, diff = len(d), float(np.mean(d))
    if n < 2:
        return Paired(n, diff, why_no_ci="one shared seed, so no spread")
    if np.ptp(d) == 0:
        return Paired(n, diff, 0.0, why_no_ci=f"the difference is the same on all {n} seeds")
    test = stats.ttest_rel(b, a)
    low, high = test.confidence_interval(level)
    return Paired(n, diff, float(np.std(d, ddof=1)), (float(low), float(high)), float(test.pvalue))


def verdict(a: str, b: str, result: Paired) -> str:
    """One sentence: does a beat b, b beat a, or can the seeds not tell them apart?"""
    seeds = f"{result.n} paired seed{'s' if result.n != 1 else ''}"
    if result.ci is None:
        if result.sd == 0 and result.diff == 0:
            return f"{a} and {b} gave the same value on each of the {seeds}"
        if result.sd == 0:
            better, worse = (a, b) if result.diff > 0 else (b, a)
            return (f"{better} beats {worse} by {abs(result.diff):.4f} on each of the {seeds} "
                    "(the difference does not vary, so there is no CI)")
        return (f"{a} and {b} cannot be compared yet: difference {result.diff:+.4f} on {seeds} "
                f"({result.why_no_ci}; a CI needs at least 2 seeds with some spread)")
    low, high = result.ci
    p = f"p = {result.p:.2g}"
    if result.decided:
        if result.diff > 0:
            return f"{a} beats {b} by {result.diff:.4f} (95% CI {low:.4f} to {high:.4f}, {seeds}, {p})"
        return f"{b} beats {a} by {-result.diff:.4f} (95% CI {-high:.4f} to {-low:.4f}, {seeds}, {p})"
    return (f"{a} and {b} are not distinguishable (difference {result.diff:.4f}, "
            f"CI {low:.4f} to {high:.4f}, {seeds}, {p})")


def winners_curse(official: float, fresh: Spread) -> bool:
    """Whether the official value is better than the fresh seeds' mean by more than CURSE_SDS of
    their sd. The fresh seeds alone: an sd that includes the official value can never put it
    more than (n - 1) / sqrt(n) sds from the mean (1.5 at 4 seeds), so it could never flag."""
    return fresh.sd is not None and fresh.sd > 0 and fresh.mean - official > CURSE_SDS * fresh.sd
