"""Pruning by any ranking criterion, in one or several prune points, under the paper's stop rule.

The paper's path (`fp_onnx.prune.prune_defense`) ranks one layer by mean activation
and measures every step with the fast sweep. A criterion from `fp_onnx.ranking` may
order channels of several layers; this module measures its prune curve with the
masked reference (`fp_onnx.masked_sweep`), applies the same stop rule (the threshold
is still an absolute drop of clean validation accuracy), and removes the chosen
channels point by point with the same surgery (`fp_onnx.surgery.prune_channels`),
each point looked up again in the model the previous cut produced.
"""
from __future__ import annotations

import math

import onnx

from fp_onnx.data import Dataset
from fp_onnx.errors import BadDataError
from fp_onnx.masked_sweep import MaskedSweep, refine_between, steps_to_measure
from fp_onnx.metrics import AttackSpec, accuracy, attack_success_rate
from fp_onnx.profile import ActivationProfile
from fp_onnx.prune import PruneCurve, PruneOutcome, StopRule, channels_to_prune
from fp_onnx.prune_point import resolve_prune_point
from fp_onnx.ranking import ChannelRanking
from fp_onnx.runtime import RuntimeOptions
from fp_onnx.surgery import SurgeryResult, prune_channels


def measure_ranked_curve(model: onnx.ModelProto, ranking: ChannelRanking, clean: Dataset, rule: StopRule, *,
                         triggered: Dataset | None = None, attack: AttackSpec | None = None,
                         options: RuntimeOptions = RuntimeOptions(), batch_size: int = 64) -> PruneCurve:
    """Clean accuracy on a grid of prune counts (refined around the threshold's stop), attack success
    at the same counts when triggered data is given (measured only, never used to decide)."""
    if clean.labels is None:
        raise BadDataError(f"{clean.source}: pruning needs labels ('y') to measure clean accuracy")
    sweep = MaskedSweep(model, ranking, options)
    total = len(ranking.order)
    measured: dict[int, float] = {}

    def clean_accuracy(k: int) -> float:
        if k not in measured:
            measured[k] = accuracy(sweep.predictions(clean, k, batch_size), clean.labels)
        return measured[k]

    baseline = clean_accuracy(0)
    within = lambda k: baseline - clean_accuracy(k) <= rule.value + 1e-12  # noqa: E731
    if rule.kind == "threshold":
        good = 0
        for k in steps_to_measure(total):
            if not within(k):
                refine_between(good, k, within)
                break
            good = k
    else:
        clean_accuracy(_fixed_count(rule, total))
    steps = sorted(measured)
    success = None
    if triggered is not None and attack is not None:
        success = [attack_success_rate(attack, sweep.predictions(triggered, k, batch_size),
                                       triggered.labels, triggered.targets, measured[k]) for k in steps]
    return PruneCurve([list(pair) for pair in ranking.order], steps, [measured[k] for k in steps], success,
                      f"masked ({ranking.criterion}, {len(ranking.points)} points)")


def _fixed_count(rule: StopRule, total: int) -> int:
    if rule.kind == "fraction":
        return min(total, math.floor(rule.value * total))
    return min(total, int(rule.value))


def prune_ranked(model: onnx.ModelProto, ranking: ChannelRanking, count: int) -> SurgeryResult:
    """Remove the first `count` channels of the ranking, point by point; the actions of every cut are
    kept, each tagged with its point's tensor."""
    actions, removed = [], []
    for index, channels in sorted(ranking.channels_by_point(count).items()):
        point = resolve_prune_point(model, ranking.points[index].tensor)
        result = prune_channels(model, point, channels)
        model = result.model
        actions += [{**action, "prune_point": point.tensor} for action in result.actions]
        removed += [[point.tensor, channel] for channel in channels]
    kept = [[p.tensor, c] for i, p in enumerate(ranking.points) for c in range(p.channels)
            if [p.tensor, c] not in removed]
    return SurgeryResult(model=model, channels_removed=removed, channels_kept=kept, actions=actions)


def ranked_prune_defense(model: onnx.ModelProto, ranking: ChannelRanking, clean: Dataset, rule: StopRule,
                         profile: ActivationProfile, *, triggered: Dataset | None = None,
                         attack: AttackSpec | None = None, options: RuntimeOptions = RuntimeOptions(),
                         batch_size: int = 64) -> PruneOutcome:
    """Measure the ranking's prune curve, apply the stop rule, cut the channels out of the graph.

    `profile` (the default point's activations) is only carried along for the report."""
    curve = measure_ranked_curve(model, ranking, clean, rule, triggered=triggered, attack=attack, options=options,
                                 batch_size=batch_size)
    count = channels_to_prune(curve, rule)
    surgery = prune_ranked(model, ranking, count) if count else SurgeryResult(model, [], [], [])
    return PruneOutcome(profile, curve, rule, count, surgery, ranking=ranking)
