"""Ranking criteria: which channels, in which prune points, to remove first.

Fine-pruning has three steps: *rank* channels, *remove* them by surgery until the
stop rule says clean accuracy has dropped enough, *recover* by training. This
package is the first step, as a registry with one entry per criterion (the same
pattern as the op registries):

* ``activation`` — the paper's criterion (§3.1): mean activation of each channel of
  one prune point on clean data, lowest first. Exactly the paper's method.
* ``rnp`` — after Reconstructive Neuron Pruning (Li et al., ICML 2023): unlearn the
  clean task, then learn per-channel masks that recover it; channels whose masks
  stay low carry what the unlearning did not touch: the backdoor.
* ``anp`` — after Adversarial Neuron Pruning (Wu and Wang, NeurIPS 2021): channels
  whose masks must drop to keep the clean loss low under small adversarial
  multiplicative perturbations are the ones a backdoor made sensitive.

A criterion sees only the defender's clean data, never triggered inputs. It may
rank channels of several prune points; every channel it selects is removed by the
same surgery, and the stop rule still bounds the clean-accuracy cost.
New criteria register with ``@register_criterion("name")``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from fp_onnx.data import Dataset
from fp_onnx.registry import lookup, register
from fp_onnx.prune_point import PrunePoint
from fp_onnx.runtime import RuntimeOptions


@dataclass(frozen=True)
class RankingInputs:
    """What a criterion may look at: the vendor model, its candidate points, clean data only."""

    model: onnx.ModelProto
    points: tuple[PrunePoint, ...]
    """Candidates; criteria that rank one layer use `default`, multi-layer criteria use all of them."""
    default: PrunePoint
    clean: Dataset
    """The defender's clean labelled data (the part set aside for ranking and stopping)."""
    options: RuntimeOptions = RuntimeOptions()
    batch_size: int = 64
    device: str = "auto"
    seed: int = 0
    progress: bool = False


@dataclass
class ChannelRanking:
    """Channels in the order they are to be removed, possibly across several prune points.

    points: the prune points involved; order: (point index, channel) pairs, first removed first;
    scores: per point, one number per channel (lower goes first); details: what the criterion
    measured on the way (kept in the report).
    """

    criterion: str
    points: list[PrunePoint]
    order: list[tuple[int, int]]
    scores: list[np.ndarray]
    details: dict = field(default_factory=dict)

    @property
    def single_point(self) -> bool:
        return len(self.points) == 1

    def channels_by_point(self, count: int) -> dict[int, list[int]]:
        """The first `count` channels of the order, grouped by point index (sorted ids)."""
        grouped: dict[int, list[int]] = {}
        for point, channel in self.order[:count]:
            grouped.setdefault(point, []).append(channel)
        return {point: sorted(channels) for point, channels in grouped.items()}

    def to_dict(self) -> dict:
        return {
            "criterion": self.criterion,
            "points": [p.tensor for p in self.points],
            "order": [[int(p), int(c)] for p, c in self.order],
            "scores": [np.asarray(s, dtype=float).tolist() for s in self.scores],
            "details": self.details,
        }


def global_order(scores: list[np.ndarray], points: list[PrunePoint], *, keep_per_point: int = 1,
                 tie_break: list[np.ndarray] | None = None) -> list[tuple[int, int]]:
    """All (point, channel) pairs by ascending score (ties by `tie_break`, then point, then channel),
    leaving at least `keep_per_point` channels of every point out of the order: a layer never vanishes."""
    pairs = []
    for i, (values, point) in enumerate(zip(scores, points)):
        ties = tie_break[i] if tie_break is not None else np.zeros(point.channels)
        pairs += [(float(values[c]), float(ties[c]), i, c) for c in range(point.channels)]
    pairs.sort()
    taken = {i: 0 for i in range(len(points))}
    order = []
    for _, _, i, c in pairs:
        if taken[i] + keep_per_point >= points[i].channels:
            continue
        taken[i] += 1
        order.append((i, c))
    return order


Criterion = Callable[[RankingInputs], ChannelRanking]
CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str, *, replace: bool = False) -> Callable[[Criterion], Criterion]:
    """Register `criterion(inputs) -> ChannelRanking` under `name`; refuses to replace an existing one
    unless `replace`."""
    return lambda criterion: register(CRITERIA, [name], criterion, replace=replace, what="a ranking criterion")


def find_criterion(name: str) -> Criterion:
    return lookup(CRITERIA, name, "--rank")


def rank_channels(name: str, inputs: RankingInputs) -> ChannelRanking:
    """Rank with the criterion registered as `name`."""
    return find_criterion(name)(inputs)


# Registration happens on import of the criterion modules.
from fp_onnx.ranking import activation, perturbation, unlearning  # noqa: E402,F401

__all__ = ["CRITERIA", "ChannelRanking", "RankingInputs", "find_criterion", "global_order", "rank_channels",
           "register_criterion"]
