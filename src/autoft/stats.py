"""Statistics for benchmark comparisons: paired bootstrap confidence intervals and rank correlation.

Seeds are the unit of replication: two methods run on the same seed share its data split, OOD-val
subset and sampler stream, so comparisons are PAIRED (per-seed differences), which removes the
between-seed variance the methods share. Thin wrappers over ``scipy.stats``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``a - b`` over paired samples with a bootstrap confidence interval (same units as the input)."""

    mean: float
    low: float
    high: float
    n: int
    wins: int  # pairs with a > b
    losses: int  # pairs with a < b
    confidence: float
    method: str

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def paired_bootstrap_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
    method: str = "percentile",
) -> PairedDifference:
    """Bootstrap CI of the mean paired difference ``a[i] - b[i]`` (resampling the pairs).

    ``percentile`` is the default: with the handful of seeds a benchmark affords, BCa's acceleration
    estimate is itself noisy (and undefined when every difference is equal). With one pair, or with
    identical differences, the interval is the point.
    """
    from scipy.stats import bootstrap

    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if diff.ndim != 1 or len(diff) == 0 or len(a) != len(b):
        raise ValueError(f"need two equally long, non-empty sequences; got {len(a)} and {len(b)}")
    mean = float(diff.mean())
    wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
    if len(diff) == 1 or np.all(diff == diff[0]):
        return PairedDifference(mean, mean, mean, len(diff), wins, losses, confidence, "degenerate")
    result = bootstrap(
        (diff,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method=method,
        random_state=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return PairedDifference(
        mean, float(interval.low), float(interval.high), len(diff), wins, losses, confidence, method
    )


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman's rank correlation and its two-sided p-value (``scipy.stats.spearmanr``)."""
    from scipy.stats import spearmanr

    result = spearmanr(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    return float(result.statistic), float(result.pvalue)
