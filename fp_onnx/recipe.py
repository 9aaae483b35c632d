"""Fine-tuning recipes: what optimizer, schedule and extra loss terms a fine-tuning run uses.

A recipe decides *how* to learn; the training loop (`fp_onnx.training`) decides
*whether the learning is still sane* (divergence detection, restoring the last good
weights, lowering the learning rate, gradient clipping) and does so the same way for
every recipe. The seam between the two is `TrainingPlan`: the loop hands a recipe the
parameter groups, each with its own learning rate already set (layer-wise step
scaling and learning-rate back-off happen there), and the recipe returns the
optimizer, an optional per-step schedule and optional extra loss terms. After a
divergence the loop asks the recipe for a fresh plan at the lowered learning rates,
so no optimizer state (momentum of a run that blew up) survives a recovery.

New recipes register with `@register_recipe("name")`; `FineTuneConfig.recipe`
selects one. "paper" is the paper's recipe (§3.3): plain SGD with momentum (or Adam)
at a small learning rate, no schedule, cross-entropy only.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from fp_onnx.errors import BadOptionError

if TYPE_CHECKING:
    from fp_onnx.finetune import FineTuneConfig


@dataclass
class TrainingPlan:
    """What one fine-tuning attempt trains with."""

    optimizer: torch.optim.Optimizer
    scheduler: object | None = None
    """Anything with `.step()`; called after every optimizer step (e.g. a torch LRScheduler)."""
    loss_terms: tuple[Callable[[], torch.Tensor], ...] = ()
    """Extra scalar terms added to the classification loss of every batch (regularisers)."""


class Recipe(Protocol):
    def __call__(self, module: torch.nn.Module, groups: list[dict], config: "FineTuneConfig",
                 steps_per_epoch: int) -> TrainingPlan:
        """A plan for `module`. `groups` are torch parameter groups, each with its own 'lr': keep them."""


RECIPES: dict[str, Recipe] = {}


def register_recipe(name: str) -> Callable[[Recipe], Recipe]:
    """Register a recipe under `name`; refuses to silently replace an existing one."""

    def register(recipe: Recipe) -> Recipe:
        if name in RECIPES:
            raise ValueError(f"a fine-tuning recipe named '{name}' is already registered")
        RECIPES[name] = recipe
        return recipe

    return register


def find_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise BadOptionError(f"fine-tuning recipe '{name}': choose one of {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


@register_recipe("paper")
def paper_recipe(module: torch.nn.Module, groups: list[dict], config: "FineTuneConfig",
                 steps_per_epoch: int) -> TrainingPlan:
    """SGD with momentum (or Adam), constant learning rate, cross-entropy only (paper §3.3)."""
    if config.optimizer == "adam":
        return TrainingPlan(torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay))
    return TrainingPlan(torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                                        weight_decay=config.weight_decay))
