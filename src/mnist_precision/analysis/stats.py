"""Confidence intervals for comparing a reduced precision with fp32 across seeds."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats

# A throughput ratio measured without an interval (one seed, one timing) is
# called faster or slower only beyond these (the machines are noisy).
FASTER, SLOWER = 1.05, 0.95


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float | None  # None: too few seeds for an interval
    high: float | None
    method: str

    @property
    def has_interval(self) -> bool:
        return self.low is not None

    def contains(self, value: float) -> bool | None:
        if self.low is None or self.high is None:
            return None
        return self.low <= value <= self.high


def difference_of_means(treated: dict[int, float], control: dict[int, float], level: float = 0.95) -> Interval:
    """Mean(treated) - mean(control), by seed.

    With the same seeds on both sides (two runs of a seed share the initial
    weights and batch order), a paired t-interval on the per-seed differences;
    otherwise Welch's t-interval. Fewer than 2 seeds: the estimate alone.
    """
    shared = sorted(set(treated) & set(control))
    if len(shared) >= 2 and len(shared) == len(treated) == len(control):
        differences = [treated[s] - control[s] for s in shared]
        mean = statistics.fmean(differences)
        half = _t(level, len(differences) - 1) * statistics.stdev(differences) / math.sqrt(len(differences))
        return Interval(mean, mean - half, mean + half, f"paired t, {len(shared)} seeds")
    a, b = list(treated.values()), list(control.values())
    mean = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return Interval(mean, None, None, f"too few seeds for an interval ({len(a)} and {len(b)})")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return Interval(mean, mean, mean, f"Welch t, {len(a)} and {len(b)} seeds, no variance")
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = _t(level, df) * math.sqrt(va + vb)
    return Interval(mean, mean - half, mean + half, f"Welch t, {len(a)} and {len(b)} seeds")


def ratio_of_means(treated: dict[int, float], control: dict[int, float], level: float = 0.95) -> Interval:
    """Geometric-mean ratio treated / control, with the interval of the
    difference of log values carried back: ratios are symmetric on a log scale."""
    logs = difference_of_means(
        {s: math.log(v) for s, v in treated.items()}, {s: math.log(v) for s, v in control.items()}, level
    )

    def back(x: float | None) -> float | None:
        return None if x is None else math.exp(x)

    return Interval(math.exp(logs.estimate), back(logs.low), back(logs.high), logs.method + ", on logs")


def _t(level: float, df: float) -> float:
    return float(stats.t.ppf(0.5 + level / 2, df))
