"""Recovery recipes: how the pruned model is trained on clean data (the *recover* step).

A recipe decides *how* to learn; the training loop (`fp_onnx.training`) decides
*whether the learning is still sane* (divergence detection, restoring the last good
weights, lowering the learning rate, gradient clipping: `fp_onnx.backoff`) and does so
the same way for every recipe. The seam between the two:

* `prepare(module, config, reference)` runs once, before calibration: one-time changes
  to the model (re-initialising the classifier for feature-shift tuning) and what later
  steps need to remember (the original classifier, the reference model as a teacher).
  Only a recipe registered with `uses_reference=True` is given the reference (the
  vendor's unpruned model, converted to torch and moved to the device: work and memory
  the others would throw away); one registered with `teacher_recipe=NAME` is given
  the start model fine-tuned by that recipe first instead (a teacher trained on the
  same clean data, as attention distillation needs); the others get None. What it
  returns may have a `findings()` method: what the recipe learned about the model
  (a scan's verdict), which the run reports (`FineTuneResult.findings`);
* `build(module, groups, config, steps_per_epoch, prepared)` returns a `TrainingPlan`:
  the optimizer over the given parameter groups (each with its learning rate already
  set: layer-wise scaling and back-off happen in the loop), an optional per-step
  schedule, extra loss terms that see the batch (`TrainingBatch`), and an optional
  hook after every optimizer step. After a divergence the loop asks for a fresh plan
  at lower learning rates, so no optimizer state of a run that blew up survives;
* `defaults`: the learning rate, epoch budget, early-stopping patience (None: a fixed
  budget) and which epoch to keep ("best" on validation, or "last") that the recipe
  was measured with; flags the user gives override them.

Recipes register with `@register_recipe(name, ...)`; `FineTuneConfig.recipe` (CLI:
`--recover`) selects one. The modules of this package hold one recipe each.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from fp_onnx.registry import lookup, register

if TYPE_CHECKING:
    from fp_onnx.finetune import FineTuneConfig


@dataclass
class TrainingBatch:
    """What a loss term may look at: this batch, the model's outputs on it, and how to run the model."""

    x: torch.Tensor
    y: torch.Tensor
    scores: torch.Tensor
    model: torch.nn.Module
    """The module as training calls it (DDP-wrapped under torchrun): use it for extra forward passes."""
    kind: str
    """What the scores are: 'logits', 'probabilities' or 'log_probabilities' (see fp_onnx.training)."""


LossTerm = Callable[[TrainingBatch], torch.Tensor]


@dataclass
class TrainingPlan:
    """What one fine-tuning attempt trains with."""

    optimizer: torch.optim.Optimizer
    scheduler: object | None = None
    """Anything with `.step()`; called after every optimizer step (e.g. a torch LRScheduler)."""
    loss_terms: tuple[LossTerm, ...] = ()
    """Extra scalar terms added to the classification loss of every batch (regularisers, unlearning)."""
    after_step: Callable[[], None] | None = None
    """Called after every optimizer step (e.g. to project weights back onto a constraint)."""
    step: Callable[[Callable[[], None]], None] | None = None
    """Replaces `optimizer.step()` for two-pass methods (SAM): called with the gradients in place and a
    closure that recomputes loss and gradients at the current weights."""


Build = Callable[[torch.nn.Module, list[dict], "FineTuneConfig", int, Any], TrainingPlan]
Prepare = Callable[[torch.nn.Module, "FineTuneConfig", "torch.nn.Module | None"], Any]
"""prepare(module, config, reference): `reference` is the vendor's unpruned model as a torch module (or None:
then `module` itself is the reference), for recipes that keep its clean behaviour."""

KEEP_POLICIES = ("best", "last", "average")
"""Which weights a run returns: its best epoch on validation, its last good epoch, or the average of its good
epochs over the second half of the budget (`fp_onnx.weight_average`)."""


@dataclass(frozen=True)
class Recipe:
    name: str
    build: Build
    prepare: Prepare | None = None
    defaults: dict = field(default_factory=dict)
    """Measured settings: lr, epochs, patience (None: fixed budget), keep, weight_decay, ..."""
    summary: str = ""
    uses_reference: bool = False
    """`prepare` reads the vendor's unpruned model (a teacher): only then is it converted and handed over."""
    teacher_recipe: str | None = None
    """Fine-tune the start model with this recipe first and hand the result to `prepare` as its reference."""


RECIPES: dict[str, Recipe] = {}


def register_recipe(name: str, *, defaults: dict | None = None, prepare: Prepare | None = None,
                    summary: str = "", uses_reference: bool = False, teacher_recipe: str | None = None,
                    replace: bool = False) -> Callable[[Build], Build]:
    """Register `build` as the recipe `name`; refuses to silently replace an existing one unless `replace`."""

    def add(build: Build) -> Build:
        recipe = Recipe(name, build, prepare, dict(defaults or {}), summary or (build.__doc__ or "").strip(),
                        uses_reference, teacher_recipe)
        register(RECIPES, [name], recipe, replace=replace, what="a fine-tuning recipe")
        return build

    return add


def find_recipe(name: str) -> Recipe:
    return lookup(RECIPES, name, "--recover")


def sgd_or_adam(groups: list[dict], config: "FineTuneConfig") -> torch.optim.Optimizer:
    """The optimizer the config names, over `groups` (their learning rates are kept)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def frozen_teacher(module: torch.nn.Module, reference: torch.nn.Module | None) -> torch.nn.Module:
    """`reference`, or a copy of the start `module` when there is none, in evaluation mode and without gradients:
    a teacher the student is pulled towards and never moves."""
    teacher = (reference if reference is not None else copy.deepcopy(module)).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


# Registration happens on import of the recipe modules.
from fp_onnx.recipes import adversarial, attention, cosine, feature_shift, paper, sharpness  # noqa: E402,F401

__all__ = ["KEEP_POLICIES", "RECIPES", "Recipe", "TrainingBatch", "TrainingPlan", "find_recipe", "frozen_teacher",
           "register_recipe", "sgd_or_adam"]
