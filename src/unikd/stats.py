"""The statistics every comparison in unikd reports: mean ± sample std over seeds, and paired differences with
their 95% Student-t interval. The study report, the quickstart and the recipe's evidence all call these."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (0 for a single value) of the finite values; (None, None) for none."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def paired_stats(diffs: Sequence[float]) -> dict:
    """{"n", "diff_mean", "ci_low", "ci_high"} of paired differences: the mean and its 95% Student-t interval,
    mean ± t.ppf(0.975, n - 1) * sd / sqrt(n) (sample sd); the interval is None when n < 2, the mean when n = 0."""
    n = len(diffs)
    mean = statistics.fmean(diffs) if n else None
    if n < 2:
        return {"n": n, "diff_mean": mean, "ci_low": None, "ci_high": None}
    from scipy.stats import t

    half = float(t.ppf(0.975, n - 1)) * statistics.stdev(diffs) / math.sqrt(n)
    return {"n": n, "diff_mean": mean, "ci_low": mean - half, "ci_high": mean + half}
