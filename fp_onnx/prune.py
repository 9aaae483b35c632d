"""The pruning defense (paper §3.1): prune dormant channels until clean accuracy drops.

The defender profiles the prune point on clean validation data, then prunes channels
in increasing order of mean activation. The paper's stopping rule: stop once clean
validation accuracy has dropped by more than a threshold (an absolute drop: 0.04 =
4 percentage points) and keep the last model still within it. Alternatives prune a
fixed fraction or a fixed number of channels.

Ranking and stopping only ever look at the defender's validation data (`clean`);
triggered data, when given, is only measured along the way for the report.
At least one channel always stays, so the layer never disappears.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from fp_onnx.data import Dataset
from fp_onnx.errors import BadDataError, BadOptionError
from fp_onnx.metrics import AttackSpec, accuracy, attack_success_rate
from fp_onnx.profile import ActivationProfile, profile_model
from fp_onnx.prune_point import PrunePoint
from fp_onnx.runtime import RuntimeOptions
from fp_onnx.surgery import SurgeryResult, prune_channels
from fp_onnx.sweep import PruneSweep

STOP_RULES = ("threshold", "fraction", "channels")


@dataclass(frozen=True)
class StopRule:
    """When the pruning defense stops: an accuracy-drop threshold, a fraction, or a channel count."""

    kind: str = "threshold"
    value: float = 0.04

    def __post_init__(self) -> None:
        if self.kind not in STOP_RULES:
            raise BadOptionError(f"stop rule '{self.kind}': choose one of {', '.join(STOP_RULES)}")
        if self.kind in ("threshold", "fraction") and not 0.0 <= self.value <= 1.0:
            raise BadOptionError(f"--{self.kind} {self.value}: must lie in [0, 1]")
        if self.kind == "channels" and (self.value < 0 or self.value != int(self.value)):
            raise BadOptionError(f"--channels {self.value}: must be a whole number >= 0")

    def describe(self) -> str:
        if self.kind == "threshold":
            return f"stop before clean accuracy drops by more than {self.value:g} (absolute)"
        return f"prune {self.value:g} of the channels" if self.kind == "fraction" else f"prune {int(self.value)} channels"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value}


@dataclass
class PruneCurve:
    """Clean accuracy (and attack success) after pruning the first n channels of `order`, for the
    measured n in `channels_pruned` (every n for the paper's one-layer sweep; a refined grid for
    rankings over several layers, whose `order` holds [point index, channel] pairs)."""

    order: list
    channels_pruned: list[int]
    clean_accuracy: list[float]
    attack_success: list[float] | None
    sweep_method: str

    @property
    def channels(self) -> int:
        return len(self.order)

    def to_dict(self) -> dict:
        return {
            "pruned_channel_order": self.order,
            "sweep_method": self.sweep_method,
            "steps": [
                {
                    "channels_pruned": n,
                    "fraction_pruned": n / self.channels,
                    "clean_accuracy": acc,
                    "attack_success_rate": None if self.attack_success is None else self.attack_success[i],
                }
                for i, (n, acc) in enumerate(zip(self.channels_pruned, self.clean_accuracy))
            ],
        }


@dataclass
class PruneOutcome:
    profile: ActivationProfile
    """Activations of the default prune point (the paper's ranking, and the report's Fig. 4 plot)."""
    curve: PruneCurve
    rule: StopRule
    channels_pruned: int
    surgery: SurgeryResult
    ranking: object | None = None
    """The `fp_onnx.ranking.ChannelRanking` used when the criterion was not the paper's."""

    @property
    def step(self) -> int:
        return self.curve.channels_pruned.index(self.channels_pruned)

    def to_dict(self) -> dict:
        curve = self.curve
        return {
            "stop_rule": self.rule.to_dict(),
            "stop_rule_text": self.rule.describe(),
            "channels": curve.channels,
            "channels_pruned": self.channels_pruned,
            "pruned_channels": curve.order[: self.channels_pruned],
            "channels_kept": self.surgery.channels_kept,
            "clean_accuracy_before": curve.clean_accuracy[0],
            "clean_accuracy_after": curve.clean_accuracy[self.step],
            "attack_success_before": None if curve.attack_success is None else curve.attack_success[0],
            "attack_success_after": None if curve.attack_success is None else curve.attack_success[self.step],
            "criterion": "activation" if self.ranking is None else self.ranking.criterion,
            "ranking": None if self.ranking is None else self.ranking.to_dict(),
            "surgery": self.surgery.actions,
        }


def channels_to_prune(curve: PruneCurve, rule: StopRule) -> int:
    """How many channels the rule prunes, given the measured curve (never all of them)."""
    check_rule_fits(rule, curve.channels)
    if rule.kind == "fraction":
        return min(curve.channels - 1, math.floor(rule.value * curve.channels))
    if rule.kind == "channels":
        return int(rule.value)
    baseline = curve.clean_accuracy[0]
    last_within = 0
    for n, acc in zip(curve.channels_pruned, curve.clean_accuracy):
        if baseline - acc > rule.value + 1e-12:
            return last_within  # the last measured step within the threshold (n - 1 on a full curve)
        last_within = n
    return curve.channels_pruned[-1]


def check_rule_fits(rule: StopRule, channels: int) -> None:
    """Refuse a channel count the layer cannot lose (checked before any expensive work)."""
    if rule.kind == "channels" and rule.value > channels - 1:
        raise BadOptionError(f"--channels {int(rule.value)}: the layer has {channels} channels; at most {channels - 1} can go")


def measure_curve(
    model: onnx.ModelProto,
    point: PrunePoint,
    order: np.ndarray,
    clean: Dataset,
    *,
    triggered: Dataset | None = None,
    attack: AttackSpec | None = None,
    options: RuntimeOptions = RuntimeOptions(),
    batch_size: int = 64,
    progress: bool = False,
) -> PruneCurve:
    """The full-resolution prune curve, one step per channel count 0 .. C-1."""
    if clean.labels is None:
        raise BadDataError(f"{clean.source}: pruning needs labels ('y') to measure clean accuracy")
    steps = list(range(point.channels))
    sweep = PruneSweep(model, point, options)
    clean_predictions = sweep.predictions(clean, order, steps, batch_size=batch_size, progress=progress,
                                          description="prune curve (clean)")
    clean_accuracy = [accuracy(p, clean.labels) for p in clean_predictions]
    success = None
    if triggered is not None and attack is not None:
        triggered_predictions = sweep.predictions(triggered, order, steps, batch_size=batch_size, progress=progress,
                                                  description="prune curve (triggered)")
        success = [
            attack_success_rate(attack, p, triggered.labels, triggered.targets, acc)
            for p, acc in zip(triggered_predictions, clean_accuracy)
        ]
    return PruneCurve([int(c) for c in order], steps, clean_accuracy, success, sweep.method)


def prune_defense(
    model: onnx.ModelProto,
    point: PrunePoint,
    clean: Dataset,
    rule: StopRule = StopRule(),
    *,
    triggered: Dataset | None = None,
    attack: AttackSpec | None = None,
    options: RuntimeOptions = RuntimeOptions(),
    batch_size: int = 64,
    progress: bool = False,
) -> PruneOutcome:
    """Profile, measure the prune curve, apply the stop rule, and cut the channels out of the graph."""
    check_rule_fits(rule, point.channels)
    profile = profile_model(model, point, clean, triggered=triggered, attack=attack, options=options,
                            batch_size=batch_size, progress=progress)
    curve = measure_curve(model, point, profile.pruning_order(), clean, triggered=triggered, attack=attack,
                          options=options, batch_size=batch_size, progress=progress)
    count = channels_to_prune(curve, rule)
    surgery = prune_channels(model, point, curve.order[:count]) if count else _unchanged(model, point)
    return PruneOutcome(profile, curve, rule, count, surgery)


def _unchanged(model: onnx.ModelProto, point: PrunePoint) -> SurgeryResult:
    return SurgeryResult(model=model, channels_removed=[], channels_kept=list(range(point.channels)), actions=[])
