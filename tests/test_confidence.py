"""The paired interval of a clean-accuracy cost (`fp_onnx.confidence`): its coverage, its corners, its contract."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fp_onnx.confidence import Z_95, paired_difference_interval, proportion_interval


def paired_outcomes(rng, samples: int, disagreement: float, drop: float) -> tuple[np.ndarray, np.ndarray]:
    """Correct/incorrect of two models on the same samples: they disagree on a share `disagreement` of them,
    and the first is right on more of those, so that its accuracy exceeds the second's by `drop` on average."""
    agreed = rng.random(samples) < 0.84
    disagree = rng.random(samples) < disagreement
    first_right = rng.random(samples) < (disagreement + drop) / (2 * disagreement)
    return np.where(disagree, first_right, agreed), np.where(disagree, ~first_right, agreed)


@pytest.mark.parametrize("samples,disagreement,drop", [(69, 0.15, 0.06), (69, 0.10, 0.0), (69, 0.30, 0.10),
                                                       (204, 0.05, 0.03), (204, 0.02, 0.0)])
def test_the_interval_covers_the_true_cost_about_95_times_in_100(samples, disagreement, drop):
    rng = np.random.default_rng(samples + int(100 * disagreement))
    trials = 1500
    covered = 0
    for _ in range(trials):
        interval = paired_difference_interval(*paired_outcomes(rng, samples, disagreement, drop))
        covered += interval.low <= drop <= interval.high
    assert 0.925 <= covered / trials <= 0.995


def test_on_many_samples_it_is_the_wald_interval_of_a_paired_difference():
    rng = np.random.default_rng(0)
    first, second = paired_outcomes(rng, 20000, 0.1, 0.06)
    only_first, only_second = int((first & ~second).sum()), int((~first & second).sum())
    n = len(first)
    estimate = (only_first - only_second) / n
    spread = Z_95 * math.sqrt(only_first + only_second - (only_first - only_second) ** 2 / n) / n
    interval = paired_difference_interval(first, second)
    assert interval.estimate == pytest.approx(estimate)
    assert interval.low == pytest.approx(estimate - spread, abs=3e-4)
    assert interval.high == pytest.approx(estimate + spread, abs=3e-4)


def test_models_that_never_disagree_still_leave_a_few_points_open_on_few_samples():
    for samples in (69, 204, 2000):
        interval = paired_difference_interval(np.ones(samples, bool), np.ones(samples, bool))
        bound = Z_95 ** 2 / (samples + Z_95 ** 2)  # the most a share can be when none of n samples shows it
        assert interval.estimate == 0.0
        assert interval.high == pytest.approx(bound, rel=1e-6) and interval.low == pytest.approx(-bound, rel=1e-6)


@pytest.mark.parametrize("first,second", [([1, 1, 1], [0, 0, 0]), ([0, 0], [1, 1]), ([1, 0, 1, 0], [0, 1, 1, 0])])
def test_the_interval_holds_the_estimate_and_stays_within_minus_one_and_one(first, second):
    interval = paired_difference_interval(np.array(first, bool), np.array(second, bool))
    assert -1.0 <= interval.low <= interval.estimate <= interval.high <= 1.0
    assert interval.high - interval.low > 0.3  # four samples or fewer prove little either way


def test_outcomes_of_different_samples_are_refused():
    with pytest.raises(ValueError, match="same samples"):
        paired_difference_interval([True, False], [True])
    with pytest.raises(ValueError, match="same samples"):
        paired_difference_interval([], [])


@pytest.mark.parametrize("trials,rate", [(300, 0.03), (270, 0.01), (1000, 0.05)])
def test_the_rate_interval_covers_the_true_attack_success_about_95_times_in_100(trials, rate):
    rng = np.random.default_rng(trials)
    hits = rng.binomial(trials, rate, size=2000)
    covered = [proportion_interval(int(h), trials) for h in hits]
    share = np.mean([i.low <= rate <= i.high for i in covered])
    assert 0.925 <= share <= 0.995


def test_no_successes_in_n_trials_bound_the_rate_at_z2_over_n_plus_z2():
    interval = proportion_interval(0, 270)
    assert interval.estimate == 0.0 and interval.low == 0.0
    assert interval.high == pytest.approx(Z_95 ** 2 / (270 + Z_95 ** 2)) and interval.samples == 270


def test_a_rate_needs_trials_and_a_possible_count():
    for successes, trials in ((0, 0), (3, 2), (-1, 5)):
        with pytest.raises(ValueError, match="at least one trial"):
            proportion_interval(successes, trials)


def test_the_cost_interval_benchmark_measures_a_shipped_model(bench_module, tmp_path):
    """bench/cost_interval.py on the shipped model, one seed: its row is consistent with itself (the numbers are
    the benchmark's to report, docs/benchmarks.md)."""
    cost_interval = bench_module("cost_interval")
    row = cost_interval.measure_cell(cost_interval.SHIPPED / "speech_dormant", seed=0)
    low, high = row["interval"]
    assert low <= row["validation_cost"] <= high
    assert row["validation_samples"] > 0 and row["channels_pruned"] > 0
    assert row["covered"] == (low <= row["test_cost"] <= high)
    assert row["interval_warned"] == (high > cost_interval.LIMIT)
    totals = cost_interval.summary([row])
    assert totals["cells"] == 1 and totals["covered"] == int(row["covered"])
    assert cost_interval.plot([row], tmp_path / "plot.png").stat().st_size > 0
