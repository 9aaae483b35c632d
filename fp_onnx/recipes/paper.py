"""The paper's recipe (§3.3): plain SGD with momentum (or Adam), constant small learning rate,
cross-entropy only, early stopping on validation accuracy."""
from __future__ import annotations

from fp_onnx.recipes import TrainingPlan, register_recipe, sgd_or_adam


@register_recipe("paper", defaults={"lr": 0.001, "epochs": 30, "patience": 4, "keep": "best", "weight_decay": 0.0},
                 summary="the paper's fine-tuning: SGD, lr 0.001, early stopping on validation accuracy")
def paper_recipe(module, groups, config, steps_per_epoch, prepared) -> TrainingPlan:
    return TrainingPlan(sgd_or_adam(groups, config))
