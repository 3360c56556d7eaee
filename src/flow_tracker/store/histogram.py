"""Log-scale duration histograms: the bucket of a duration and percentiles from counts.

A bucket spans a factor of ``BUCKET_BASE`` (2**0.25, about 19 %), so a
percentile read from a histogram is within about 10 % of the exact value while
a whole day of one flow name fits in a few dozen counters. The same bucket
function runs in SQL (PostgreSQL ``ln``, a registered function on SQLite) and here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

BUCKET_BASE = 2**0.25
_LOG_BASE = math.log(BUCKET_BASE)
# Durations below this (in ms) share the lowest bucket.
MIN_DURATION_MS = 0.001


def duration_bucket(duration_ms: float | None) -> int | None:
    """The histogram bucket of a duration in milliseconds (None stays None)."""
    if duration_ms is None:
        return None
    return math.floor(math.log(max(float(duration_ms), MIN_DURATION_MS)) / _LOG_BASE)


def bucket_bounds(bucket: int) -> tuple[float, float]:
    """The lower and upper duration (ms) of a bucket."""
    return BUCKET_BASE**bucket, BUCKET_BASE ** (bucket + 1)


def percentile(histogram: Mapping[int, int], fraction: float) -> float | None:
    """The ``fraction`` quantile (0..1) of the durations counted in ``histogram``.

    Interpolates geometrically inside the bucket that holds the quantile, which
    matches the log-scale buckets; None for an empty histogram.
    """
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = fraction * total
    seen = 0
    for bucket in sorted(histogram):
        count = histogram[bucket]
        if count <= 0:
            continue
        if seen + count >= rank:
            low, high = bucket_bounds(bucket)
            within = (rank - seen) / count
            return float(low * (high / low) ** within)
        seen += count
    low, high = bucket_bounds(max(histogram))
    return float(high)
