"""Attack success rates as the paper defines them (§2.3 footnotes 2 and 4)."""
from __future__ import annotations

import numpy as np
import pytest

from fp_onnx.errors import BadDataError, BadOptionError
from fp_onnx.metrics import (AttackSpec, accuracy, attack_samples, attack_success_rate, targeted_success,
                             untargeted_success)


def test_targeted_all_to_one_leaves_out_samples_already_of_the_target():
    predicted = np.array([7, 7, 3, 7])
    labels = np.array([1, 7, 2, 4])  # the second sample is of class 7 already
    assert targeted_success(predicted, np.full(4, 7), labels) == pytest.approx(2 / 3)
    assert attack_success_rate(AttackSpec("targeted", 7), predicted, labels, None, None) == pytest.approx(2 / 3)


def test_targeted_all_to_all_uses_per_sample_targets():
    labels = np.array([0, 1, 2, 9])
    targets = (labels + 1) % 10
    predicted = np.array([1, 2, 2, 0])
    assert attack_success_rate(AttackSpec("targeted", None), predicted, labels, targets, None) == pytest.approx(0.75)
    with pytest.raises(BadDataError, match="no 'target' array"):
        attack_success_rate(AttackSpec("targeted", None), predicted, labels, None, None)


def test_a_targeted_rate_is_a_share_of_the_samples_it_counts():
    labels = np.array([1, 7, 2, 4])
    assert attack_samples(AttackSpec("targeted", 7), 4, labels, None) == 3  # the class-7 sample is not counted
    assert attack_samples(AttackSpec("targeted", None), 4, labels, (labels + 1) % 10) == 4
    assert attack_samples(AttackSpec("targeted", 7), 4, None, None) == 4  # no labels: every sample counts
    assert attack_samples(AttackSpec("untargeted"), 4, labels, None) is None  # a ratio of accuracies


def test_untargeted_is_one_minus_the_accuracy_ratio():
    assert untargeted_success(0.2, 0.8) == pytest.approx(0.75)
    assert untargeted_success(0.9, 0.8) == 0.0
    labels = np.array([0, 1, 2, 0])
    predicted = np.array([0, 2, 1, 1])  # triggered accuracy 0.25
    assert attack_success_rate(AttackSpec("untargeted"), predicted, labels, None, 0.5) == pytest.approx(0.5)


def test_invalid_specs_and_degenerate_data():
    with pytest.raises(BadOptionError):
        AttackSpec("sideways")
    with pytest.raises(BadOptionError):
        AttackSpec("untargeted", 3)
    with pytest.raises(BadDataError):
        accuracy(np.array([]), np.array([]))
    with pytest.raises(BadDataError, match="already has the target"):
        targeted_success(np.array([1]), np.array([1]), np.array([1]))
