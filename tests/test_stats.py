"""The intervals behind the report's verdicts."""

import math

import pytest
from scipy import stats as scipy_stats

from mnist_precision.analysis.stats import difference_of_means, ratio_of_means


def test_paired_interval_when_both_sides_ran_the_same_seeds():
    treated, control = {0: 0.91, 1: 0.93, 2: 0.92}, {0: 0.90, 1: 0.92, 2: 0.911}
    interval = difference_of_means(treated, control)
    differences = [0.01, 0.01, 0.009]
    mean = sum(differences) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2)
    half = scipy_stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert interval.method == "paired t, 3 seeds"
    assert interval.estimate == pytest.approx(mean)
    assert (interval.low, interval.high) == pytest.approx((mean - half, mean + half))
    assert interval.contains(0.0) is False


def test_welch_interval_when_the_seeds_differ():
    interval = difference_of_means({0: 1.0, 1: 2.0, 2: 3.0}, {5: 1.5, 6: 2.5})
    assert interval.method.startswith("Welch t")
    assert interval.estimate == pytest.approx(0.0)
    assert interval.contains(0.0) is True


def test_too_few_seeds_give_an_estimate_without_an_interval():
    interval = difference_of_means({0: 0.92}, {0: 0.91})
    assert interval.estimate == pytest.approx(0.01)
    assert not interval.has_interval and interval.contains(0.0) is None
    assert "too few seeds" in interval.method


def test_ratio_interval_is_symmetric_on_a_log_scale():
    interval = ratio_of_means({0: 200.0, 1: 220.0}, {0: 100.0, 1: 100.0})
    assert interval.estimate == pytest.approx(math.sqrt(2.0 * 2.2))
    assert interval.low * interval.high == pytest.approx(interval.estimate**2)
