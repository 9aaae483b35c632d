"""Sharpness-aware fine-tuning (after Zhu et al., ICCV 2023, "Enhancing Fine-Tuning Based Backdoor
Defense with Sharpness-Aware Minimization"), implemented from the paper's description.

Each step first moves the weights by `SAM_RHO` along the normalised gradient (the
locally worst direction), takes the gradient there, returns, and steps with that
gradient (Foret et al.'s SAM). Backdoor neurons sit in sharp regions of the loss
(small weight changes flip the triggered behaviour), so minimising the worst case
in a neighbourhood moves them further than plain fine-tuning does. SGD with a
cosine schedule, fixed budget.
"""
from __future__ import annotations

import torch

from fp_onnx.recipes import TrainingPlan, register_recipe, sgd_or_adam
from fp_onnx.recipes.schedule import cosine_schedule

SAM_RHO = 0.05


def sharpness_aware_step(optimizer: torch.optim.Optimizer, rho: float):
    """A step function for `TrainingPlan.step`: called with the gradients of the current weights in place
    and a closure that recomputes loss and gradients; ascends by rho, re-evaluates, descends."""

    def step(closure) -> None:
        parameters = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not parameters:
            return
        norm = torch.norm(torch.stack([p.grad.detach().norm() for p in parameters]))
        if not torch.isfinite(norm) or float(norm) == 0.0:
            optimizer.step()
            return
        moves = []
        with torch.no_grad():
            for p in parameters:
                move = rho * p.grad / norm
                p.add_(move)
                moves.append(move)
        closure()
        with torch.no_grad():
            for p, move in zip(parameters, moves):
                p.sub_(move)
        optimizer.step()

    return step


@register_recipe("sam", defaults={"lr": 0.01, "epochs": 20, "patience": None, "keep": "last", "weight_decay": 5e-4},
                 summary="sharpness-aware fine-tuning (SAM, rho 0.05), cosine schedule")
def sharpness_recipe(module, groups, config, steps_per_epoch, prepared) -> TrainingPlan:
    optimizer = sgd_or_adam(groups, config)
    return TrainingPlan(optimizer, cosine_schedule(optimizer, config.epochs * steps_per_epoch),
                        step=sharpness_aware_step(optimizer, SAM_RHO))
