"""Clean accuracy and attack success rate, as the paper defines them.

* Targeted attacks (faces: all-to-one; speech: all-to-all (i+1) mod 10): the attack
  success rate is the fraction of triggered inputs classified as the attacker's
  target (paper §2.3, footnote 2). Triggered inputs whose true label already equals
  the target are left out: classifying them as the target is no success of the attack.
* Untargeted attacks (traffic signs): 1 - A_backdoor / A_clean, where A_backdoor is
  the accuracy on triggered inputs and A_clean the accuracy on clean ones (footnote 4).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fp_onnx.errors import BadDataError, BadOptionError


@dataclass(frozen=True)
class AttackSpec:
    """What counts as the attacker's success on the triggered set.

    kind: "targeted" or "untargeted". For targeted attacks `target` is the one
    target class (all-to-one), or None to take per-sample targets from the
    triggered data's `target` array (all-to-all).
    """

    kind: str
    target: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("targeted", "untargeted"):
            raise BadOptionError(f"attack kind '{self.kind}': choose targeted or untargeted")
        if self.kind == "untargeted" and self.target is not None:
            raise BadOptionError("an untargeted attack has no target class; drop --target or --untargeted")

    def describe(self) -> str:
        if self.kind == "untargeted":
            return "untargeted (1 - A_backdoor / A_clean)"
        return f"targeted (target {self.target})" if self.target is not None else "targeted (per-sample targets)"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "target": self.target}


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    if len(labels) == 0:
        raise BadDataError("cannot compute an accuracy on zero labelled samples")
    return float(np.mean(np.asarray(predicted) == np.asarray(labels)))


def counted_samples(targets: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """Which triggered samples a targeted rate counts: those whose true label is not already their target
    (every sample when the labels are unknown)."""
    targets = np.asarray(targets)
    return np.ones(len(targets), dtype=bool) if labels is None else np.asarray(labels) != targets


def attacker_targets(attack: AttackSpec, count: int, targets: np.ndarray | None) -> np.ndarray | None:
    """The target of each of `count` triggered samples: the one target class, or the data's per-sample ones."""
    return np.full(count, attack.target) if attack.target is not None else targets


def targeted_success(predicted: np.ndarray, targets: np.ndarray, labels: np.ndarray | None = None) -> float:
    """Fraction of triggered inputs classified as their target (excluding label == target)."""
    predicted, targets = np.asarray(predicted), np.asarray(targets)
    counted = counted_samples(targets, labels)
    if not counted.any():
        raise BadDataError("every triggered sample already has the target label; the attack success rate is undefined")
    return float(np.mean(predicted[counted] == targets[counted]))


def attack_samples(attack: AttackSpec, count: int, labels: np.ndarray | None, targets: np.ndarray | None) -> int | None:
    """How many of `count` triggered samples a targeted rate is a share of (those whose label is not already
    the target), so that its uncertainty can be stated; None for the untargeted rate, a ratio of two
    accuracies rather than a share of samples."""
    if attack.kind == "untargeted":
        return None
    goal = attacker_targets(attack, count, targets)
    return count if goal is None else int(counted_samples(goal, labels).sum())


def untargeted_success(triggered_accuracy: float, clean_accuracy: float) -> float:
    """1 - A_backdoor / A_clean (paper footnote 4); clipped at 0 when triggers help."""
    if clean_accuracy <= 0:
        raise BadDataError("clean accuracy is 0; the untargeted attack success rate is undefined")
    return max(0.0, 1.0 - triggered_accuracy / clean_accuracy)


def attack_success_rate(
    attack: AttackSpec,
    predicted: np.ndarray,
    labels: np.ndarray | None,
    targets: np.ndarray | None,
    clean_accuracy: float | None,
) -> float:
    """The paper's attack success rate for `attack` on triggered predictions."""
    if attack.kind == "untargeted":
        if labels is None or clean_accuracy is None:
            raise BadDataError("the untargeted attack success rate needs true labels 'y' on both clean and triggered data")
        return untargeted_success(accuracy(predicted, labels), clean_accuracy)
    targets = attacker_targets(attack, len(predicted), targets)
    if targets is None:
        raise BadDataError("per-sample targets requested but the triggered data has no 'target' array; use --target T")
    return targeted_success(predicted, targets, labels)
