"""Fine-tuning with a larger learning rate annealed to zero over a fixed budget.

BackdoorBench's strong fine-tuning baseline (SGD 0.01 with a cosine schedule) differs
from the paper's in two ways that matter for backdoors: the larger early steps move
the weights away from the attacker's minimum, and a fixed budget with the last
epoch kept replaces early stopping on a validation split too small to tell epochs
apart.
"""
from __future__ import annotations

from fp_onnx.recipes import TrainingPlan, register_recipe, sgd_or_adam
from fp_onnx.recipes.schedule import cosine_schedule


@register_recipe("cosine", defaults={"lr": 0.01, "epochs": 20, "patience": None, "keep": "last",
                                     "weight_decay": 5e-4},
                 summary="SGD lr 0.01, cosine schedule to 0, fixed budget, last epoch kept")
def cosine_recipe(module, groups, config, steps_per_epoch, prepared) -> TrainingPlan:
    optimizer = sgd_or_adam(groups, config)
    return TrainingPlan(optimizer, cosine_schedule(optimizer, config.epochs * steps_per_epoch))
