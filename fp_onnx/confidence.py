"""How far a clean-accuracy cost or an attack success measured on a few hundred samples can be trusted.

The guard and fine-tuning's floor compare the written model with the vendor's on the
defender's validation split. With a small defender set that split is a few dozen samples
(69 on the zoo's face models), where one sample is 1.4 points: a model 6 points worse on
the test set passed the floor there at a measured cost of 1.5 points (docs/decisions.md,
"The clean-accuracy cost, with its uncertainty"). The point estimate is still what the
guard decides on (a stricter rule refuses good models for noise); this module says how
wide the uncertainty around it is, so the verdict can say when the validation data
cannot bound the cost within the limit.

Both models are measured on the *same* samples, so the comparison is paired: what
matters is how often they disagree (b samples only the vendor gets right, c only the
written model), not each accuracy's own spread. The interval is Tango's score interval
for a paired difference (T. Tango, "Equivalence test and confidence interval for the
difference in proportions for the paired-sample design", Statistics in Medicine 17,
1998): every difference whose score test the counts do not reject. It stays inside
[-1, 1], and when the two models never disagree it still says how large a difference so
many agreeing samples leave possible (z^2 / (n + z^2), 1.8 points on 204 samples), where
the Wald interval collapses to a point and Newcombe's method 10, measured here first,
gave 2.3 points. tests/test_confidence.py measures its coverage. Written from the
paper's description.

The same holds for "backdoor gone": an attack success of 0.04 on 300 triggered samples
does not rule out 0.07. A targeted attack success is a share of samples, and its
interval is Wilson's score interval; the untargeted rate (1 - A_backdoor / A_clean) is
a ratio of two accuracies and gets none.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
Z_95 = 1.959963984540054
"""The standard normal quantile of 0.975: a two-sided 95 % interval."""


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    samples: int
    """How many samples the estimate was measured on."""

    def to_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "confidence": CONFIDENCE,
                "samples": self.samples}


def proportion_interval(successes: int, trials: int, z: float = Z_95) -> Interval:
    """The Wilson score interval of a rate measured on `trials` samples (an attack success rate on the
    triggered set): the single-sample case of the same score-test inversion."""
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError("a rate needs at least one trial and between 0 and that many successes")
    rate = successes / trials
    centre = rate + z * z / (2 * trials)
    spread = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials))
    scale = 1 + z * z / trials
    return Interval(rate, max(0.0, (centre - spread) / scale), min(1.0, (centre + spread) / scale), trials)


def paired_difference_interval(first_correct, second_correct, z: float = Z_95) -> Interval:
    """The interval of accuracy(first) - accuracy(second) when both were measured on the same samples.

    Args:
        first_correct, second_correct: one boolean per sample, in the same order (e.g. the vendor's and the
            written model's correct predictions on the validation split).
    Returns:
        The difference (b - c) / n and its two-sided score interval (`CONFIDENCE` for the default `z`).
    """
    first, second = np.asarray(first_correct, dtype=bool), np.asarray(second_correct, dtype=bool)
    if first.shape != second.shape or first.ndim != 1 or len(first) == 0:
        raise ValueError("paired accuracies need one outcome per sample for both models, on the same samples")
    n, only_first, only_second = len(first), int((first & ~second).sum()), int((~first & second).sum())
    estimate = (only_first - only_second) / n
    score = lambda difference: _score(difference, only_first, only_second, n)  # noqa: E731
    return Interval(estimate, _bound(score, estimate, -1.0, z), _bound(score, estimate, 1.0, z), n)


def _score(difference: float, only_first: int, only_second: int, n: int) -> float:
    """Tango's score statistic of the hypothesis "the paired difference is `difference`" (it falls as the
    difference grows; 0 at the estimate)."""
    # the maximum-likelihood share of "only the second is right" under the hypothesis: the root of a quadratic
    quadratic = 2 * n
    linear = (2 * n - only_first + only_second) * difference - only_first - only_second
    constant = -only_second * difference * (1 - difference)
    second_share = (math.sqrt(max(0.0, linear * linear - 4 * quadratic * constant)) - linear) / (2 * quadratic)
    variance = n * (2 * second_share + difference * (1 - difference))
    excess = only_first - only_second - n * difference
    if variance <= 0.0:
        return 0.0 if excess == 0 else math.copysign(math.inf, excess)
    return excess / math.sqrt(variance)


def _bound(score, estimate: float, end: float, z: float, steps: int = 60) -> float:
    """The difference between `estimate` and `end` (-1 or 1) where |score| reaches `z` (bisection; `end`
    itself when the counts reject nothing up to it)."""
    if abs(score(end)) <= z:
        return end
    inside, outside = estimate, end
    for _ in range(steps):
        middle = (inside + outside) / 2
        inside, outside = (middle, outside) if abs(score(middle)) <= z else (inside, middle)
    return inside
