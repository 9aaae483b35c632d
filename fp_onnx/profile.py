"""Profile the channels of a prune point on the defender's clean data (paper §3.1, Fig. 4).

For every output channel of the chosen conv layer we record, at the activation
tensor after its channel-wise chain (see `prune_point`):

* the mean activation over all samples and all spatial positions, the quantity by
  which the pruning defense ranks channels (most dormant first);
* the fraction of inputs on which the channel is active, i.e. its output is > 0
  somewhere in the feature map (the paper calls a ReLU neuron active when its
  output is positive).

Sums are kept in float64 so the means do not depend on batch size or order.
With labels, top-1 accuracy comes from the same pass; with triggered data, the same
statistics on triggered inputs give the clean-vs-backdoor picture of Fig. 4.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from fp_onnx.data import Dataset, check_fits, check_labels
from fp_onnx.errors import BadDataError
from fp_onnx.inference import ModelRunner, predictions
from fp_onnx.metrics import AttackSpec, accuracy, attack_success_rate
from fp_onnx.progress import progress_bar
from fp_onnx.prune_point import PrunePoint
from fp_onnx.runtime import RuntimeOptions
from fp_onnx.signature import class_count


@dataclass
class ChannelStats:
    """Per-channel statistics of one dataset at the prune point."""

    mean_activation: np.ndarray
    active_fraction: np.ndarray
    samples: int
    accuracy: float | None
    predictions: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "accuracy": self.accuracy,
            "mean_activation": self.mean_activation.tolist(),
            "active_fraction": self.active_fraction.tolist(),
        }


@dataclass
class ActivationProfile:
    prune_point: PrunePoint
    clean: ChannelStats
    triggered: ChannelStats | None = None
    attack: AttackSpec | None = None
    attack_success: float | None = None
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)

    def pruning_order(self) -> np.ndarray:
        """Channel ids from most dormant to most active on clean data (ties keep channel order)."""
        return np.argsort(self.clean.mean_activation, kind="stable")

    def to_dict(self) -> dict:
        return {
            "prune_point": self.prune_point.to_dict(),
            "device": self.device,
            "clean": self.clean.to_dict(),
            "triggered": None if self.triggered is None else self.triggered.to_dict(),
            "attack": None if self.attack is None else self.attack.to_dict(),
            "attack_success_rate": self.attack_success,
            "pruning_order": self.pruning_order().tolist(),
            "notes": self.notes,
        }


class ChannelAccumulator:
    """Streams activation batches into per-channel sums (float64)."""

    def __init__(self, channels: int, channel_axis: int) -> None:
        self.channel_axis = channel_axis
        self.total = np.zeros(channels, dtype=np.float64)
        self.active = np.zeros(channels, dtype=np.int64)
        self.samples = 0
        self.positions = 0

    def add(self, activation: np.ndarray) -> None:
        per_channel = channels_first(activation, self.channel_axis)
        if per_channel.shape[1] != len(self.total):
            raise BadDataError(
                f"activation has {per_channel.shape[1]} channels on axis {self.channel_axis}, expected {len(self.total)}"
            )
        self.total += per_channel.sum(axis=(0, 2), dtype=np.float64)
        self.active += (per_channel.max(axis=2) > 0).sum(axis=0)
        self.samples += per_channel.shape[0]
        self.positions = per_channel.shape[2]

    def mean(self) -> np.ndarray:
        return self.total / max(1, self.samples * self.positions)

    def active_fraction(self) -> np.ndarray:
        return self.active / max(1, self.samples)


def channels_first(activation: np.ndarray, channel_axis: int) -> np.ndarray:
    """View an activation as (samples, channels, positions)."""
    moved = np.moveaxis(activation, channel_axis, 1)
    return moved.reshape(moved.shape[0], moved.shape[1], -1)


def profile_model(
    model: onnx.ModelProto,
    point: PrunePoint,
    clean: Dataset,
    *,
    triggered: Dataset | None = None,
    attack: AttackSpec | None = None,
    options: RuntimeOptions = RuntimeOptions(),
    batch_size: int = 64,
    progress: bool = False,
) -> ActivationProfile:
    """Mean activation and activity of every channel at `point`, on clean (and triggered) data."""
    runner = ModelRunner(model, taps=[point.tensor], options=options)
    for dataset in (clean, triggered) if triggered is not None else (clean,):
        check_fits(dataset, runner.input)
        check_labels(dataset, class_count(model))
    clean_stats = channel_stats(runner, point, clean, batch_size, progress, "profile clean")
    profile = ActivationProfile(point, clean_stats, device=runner.device)
    if triggered is not None:
        profile.triggered = channel_stats(runner, point, triggered, batch_size, progress, "profile triggered")
        if attack is not None:
            profile.attack = attack
            profile.attack_success = attack_success_rate(
                attack, profile.triggered.predictions, triggered.labels, triggered.targets, clean_stats.accuracy
            )
    profile.notes = list(runner.notes)
    return profile


def channel_stats(
    runner: ModelRunner, point: PrunePoint, dataset: Dataset, batch_size: int, progress: bool, description: str
) -> ChannelStats:
    if len(dataset) == 0:
        raise BadDataError(f"{dataset.source}: holds no samples")
    accumulator = ChannelAccumulator(point.channels, point.channel_axis)
    predicted = []
    with progress_bar(len(dataset), description, enabled=progress) as bar:
        for batch in dataset.batches(runner.batch_size(batch_size)):
            outputs = runner.run(batch.x)
            accumulator.add(outputs[point.tensor])
            predicted.append(predictions(outputs[runner.output]))
            bar.update(len(batch.x))
    predicted = np.concatenate(predicted)
    labels = dataset.labels
    return ChannelStats(
        mean_activation=accumulator.mean(),
        active_fraction=accumulator.active_fraction(),
        samples=accumulator.samples,
        accuracy=None if labels is None else accuracy(predicted, labels),
        predictions=predicted,
    )
