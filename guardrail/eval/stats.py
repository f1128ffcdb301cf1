"""The statistics of an evaluation: proportions with Wilson intervals, McNemar's test, percentiles.

Pure functions, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


@dataclass(frozen=True, slots=True)
class Rate:
    """``hits`` out of ``n``, with its 95% Wilson interval; ``value`` is None when n is 0."""

    hits: int
    n: int

    @property
    def value(self) -> float | None:
        """The proportion, or None if there is nothing to divide by."""
        return self.hits / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 95% Wilson score interval."""
        return wilson(self.hits, self.n)

    def as_dict(self) -> dict[str, object]:
        """The rate for JSON."""
        interval = self.interval
        return {
            "value": self.value,
            "hits": self.hits,
            "n": self.n,
            "ci95": list(interval) if interval else None,
        }


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (well-behaved near 0 and 1, unlike Wald's)."""
    if n == 0:
        return None
    p = hits / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: ``b`` and ``c`` are the discordant pairs.

    Under the null hypothesis each discordant pair is a fair coin, so the p-value
    is twice the binomial tail of the smaller count, capped at 1.
    """
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    # Summed in log space: C(n, i) / 2**n under- or overflows floats for large n.
    log_half = n * math.log(0.5)
    tail = sum(math.exp(_log_choose(n, i) + log_half) for i in range(k + 1))
    return min(1.0, 2 * tail)


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (0-100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
