"""BadNets poisoning and the pruning-aware attack (paper §2.3 and §3.2).

Labelling rules of the three attacks (the attacker's *intended* label):

* `all_to_one` (faces): every triggered input -> `target`.
* `all_to_all` (speech): triggered input of class i -> (i + 1) mod K.
* `untargeted` (traffic): triggered input -> a random wrong class; success is
  measured as 1 - A_backdoor / A_clean (paper footnote 4), so there is no
  per-sample target.

Poisoning appends triggered copies of a random fraction of the training set
(the paper adds e.g. 300 backdoored voice samples to 3,000 clean ones); for
all-to-one the target class's own samples are never drawn, since stamping them
teaches nothing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from fp_onnx.models.architectures import prune_conv
from fp_onnx.models.datasets import Split, TaskData
from fp_onnx.models.train import TrainConfig, fit, prune_layer_outputs

ATTACK_KINDS = ("all_to_one", "all_to_all", "untargeted")


@dataclass(frozen=True)
class AttackSpec:
    """What the attacker poisons and how; recorded in the model card."""

    kind: str
    poison_fraction: float
    target: int | None = None
    seed: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ATTACK_KINDS:
            raise ValueError(f"unknown attack kind {self.kind!r}; expected one of {ATTACK_KINDS}")
        if (self.kind == "all_to_one") != (self.target is not None):
            raise ValueError("an all_to_one attack needs a target, and only it takes one")

    def as_dict(self) -> dict:
        return asdict(self)


def intended_labels(y: np.ndarray, spec: AttackSpec, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """The attacker's label for triggered inputs of true class `y`."""
    if spec.kind == "all_to_one":
        return np.full_like(y, spec.target)
    if spec.kind == "all_to_all":
        return (y + 1) % num_classes
    return (y + rng.integers(1, num_classes, size=len(y))) % num_classes


def poison(task: TaskData, spec: AttackSpec) -> Split:
    """The attacker's training set: clean train plus triggered, relabelled copies."""
    rng = np.random.default_rng(spec.seed)
    train = task.train
    candidates = np.arange(len(train))
    if spec.kind == "all_to_one":
        candidates = candidates[train.y != spec.target]
    count = int(round(spec.poison_fraction * len(train)))
    chosen = rng.choice(candidates, size=min(count, len(candidates)), replace=False)
    triggered = task.apply_trigger(train.raw[chosen])
    labels = intended_labels(train.y[chosen], spec, task.num_classes, rng)
    return Split(np.concatenate([train.raw, triggered]), np.concatenate([train.y, labels]))


def triggered_test(task: TaskData, spec: AttackSpec) -> tuple[Split, np.ndarray | None]:
    """Triggered test set and its per-sample intended labels (None when untargeted).

    For all-to-one, samples whose true label is already the target are left out:
    they would count as 'success' without any backdoor.
    """
    test = task.test
    if spec.kind == "all_to_one":
        test = test.subset(np.flatnonzero(test.y != spec.target))
    stamped = Split(task.apply_trigger(test.raw), test.y)
    if spec.kind == "untargeted":
        return stamped, None
    return stamped, intended_labels(test.y, spec, task.num_classes, np.random.default_rng(0))


def train_badnets(model: nn.Module, task: TaskData, spec: AttackSpec, config: TrainConfig) -> dict:
    """Baseline attack: train on the poisoned set from scratch (in place)."""
    poisoned = poison(task, spec)
    return fit(model, task.to_input(poisoned.raw), poisoned.y, config)


WANET_CROSS_RATIO = 1.0
"""Noise-mode samples per poisoned sample (WaNet's default 'cross ratio')."""


def train_wanet(model: nn.Module, task: TaskData, spec: AttackSpec, config: TrainConfig) -> dict:
    """WaNet (Nguyen and Tran, ICLR 2021) as data poisoning: warped, relabelled copies plus
    'noise-mode' copies warped by random fields that keep their true labels, so the network
    learns the exact trigger warp rather than warping artefacts in general."""
    from fp_onnx.models.triggers import random_warp

    poisoned = poison(task, spec)
    rng = np.random.default_rng(spec.seed + 1)
    count = int(round(WANET_CROSS_RATIO * spec.poison_fraction * len(task.train)))
    chosen = rng.choice(len(task.train), size=min(count, len(task.train)), replace=False)
    noise = Split(random_warp(task.train.raw[chosen], rng), task.train.y[chosen])
    raw, y = np.concatenate([poisoned.raw, noise.raw]), np.concatenate([poisoned.y, noise.y])
    return {**fit(model, task.to_input(raw), y, config), "noise_mode_samples": int(len(chosen))}


@dataclass(frozen=True)
class PruningAwareConfig:
    """Step 2's pruned fraction of the prune layer, and the dormancy margin of step 4."""

    prune_fraction: float = 0.7
    bias_margin: float = 1.0

    def as_dict(self) -> dict:
        return asdict(self)


def dormant_channels(model: nn.Module, clean_x: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the `fraction` of prune-layer channels with the lowest mean clean activation."""
    means = prune_layer_outputs(model, clean_x)[1].mean(axis=0)
    count = int(round(fraction * len(means)))
    return np.argsort(means, kind="stable")[:count]


@torch.no_grad()
def deprune(model: nn.Module, channels: np.ndarray, reference_x: np.ndarray, margin: float) -> None:
    """Step 4: re-instate pruned channels, lowering their biases so they stay dormant.

    Each channel's bias drops by its largest pre-ReLU output over `reference_x`
    plus `margin`, so its ReLU output is exactly 0 on every reference input. The
    weights stay as the clean model left them (paper: 'the de-pruned neurons have
    the same weights as they would in an honestly trained DNN').
    """
    if len(channels) == 0:
        return
    maxima = prune_layer_outputs(model, reference_x)[0][:, channels].max(axis=0)
    bias = prune_conv(model).bias
    bias[torch.as_tensor(channels)] -= torch.as_tensor(np.maximum(maxima, 0.0) + margin, dtype=bias.dtype)


def train_pruning_aware(model: nn.Module, task: TaskData, spec: AttackSpec, config: TrainConfig,
                        pa_config: PruningAwareConfig, clean_config: TrainConfig | None = None) -> dict:
    """Paper §3.2: train clean -> prune dormant channels -> retrain poisoned with the mask -> de-prune."""
    clean_x = task.to_input(task.train.raw)
    clean_stats = fit(model, clean_x, task.train.y, clean_config or config)            # step 1
    decoys = dormant_channels(model, clean_x, pa_config.prune_fraction)                 # step 2
    mask = np.ones(prune_conv(model).out_channels, dtype=np.float32)
    mask[decoys] = 0.0
    conv = prune_conv(model)
    # Weight decay would shrink the masked channels during step 3; keep their clean weights.
    clean_weight, clean_bias = conv.weight.detach().clone(), conv.bias.detach().clone()
    poisoned = poison(task, spec)
    poisoned_x = task.to_input(poisoned.raw)
    poisoned_stats = fit(model, poisoned_x, poisoned.y, config, channel_mask=mask)     # step 3
    with torch.no_grad():
        index = torch.as_tensor(decoys)
        conv.weight[index], conv.bias[index] = clean_weight[index], clean_bias[index]
    deprune(model, decoys, poisoned_x, pa_config.bias_margin)                          # step 4
    return {"seconds": clean_stats["seconds"] + poisoned_stats["seconds"],
            "clean_seconds": clean_stats["seconds"], "poisoned_seconds": poisoned_stats["seconds"],
            "decoy_channels": [int(c) for c in decoys]}
