"""The prune curve of a ranking that spans several prune points.

The fast sweep (`fp_onnx.sweep`) evaluates every step of a one-point ranking from a
single pass, because everything after that point is one tail. A criterion that
ranks channels in several layers (RNP, ANP) has no single tail, so each measured
step is the masked reference itself (`fp_onnx.surgery.mask_points`: the channels
forced to zero at every involved point, which is what surgery must compute) run
once through onnxruntime.

Which steps: a coarse grid over the whole order, then, for the threshold rule, a
bisection between the last step within the threshold and the first beyond it
(`REFINE_STEPS` passes). The curve therefore has fewer points than the fast sweep's,
and the stop is exact under the assumption the bisection makes: that accuracy
within one grid cell does not dip below the threshold and come back.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx

from fp_onnx.data import Dataset
from fp_onnx.evaluate import predict
from fp_onnx.inference import ModelRunner
from fp_onnx.runtime import RuntimeOptions
from fp_onnx.surgery import mask_points

if TYPE_CHECKING:
    from fp_onnx.ranking import ChannelRanking

GRID_STEPS = 24
REFINE_STEPS = 6


@dataclass
class MaskedSweep:
    """Predictions of the model with the first k channels of a ranking forced to zero."""

    model: onnx.ModelProto
    ranking: "ChannelRanking"
    options: RuntimeOptions = RuntimeOptions()

    def predictions(self, dataset: Dataset, k: int, batch_size: int = 64) -> np.ndarray:
        points = self.ranking.points
        masked = mask_points(self.model, {points[i]: ids for i, ids in self.ranking.channels_by_point(k).items()})
        return predict(ModelRunner(masked, options=self.options), dataset, batch_size)


def steps_to_measure(total: int) -> list[int]:
    """The coarse grid: 0, the whole order, and evenly spaced counts between."""
    return sorted({int(round(v)) for v in np.linspace(0, total, min(total, GRID_STEPS) + 1)})


def refine_between(good: int, bad: int, within: Callable[[int], bool]) -> tuple[int, list[int]]:
    """Bisect for the last count in [good, bad) still `within` the threshold; returns it and the counts tried."""
    tried = []
    for _ in range(REFINE_STEPS):
        if bad - good <= 1:
            break
        middle = (good + bad) // 2
        tried.append(middle)
        if within(middle):
            good = middle
        else:
            bad = middle
    return good, tried
