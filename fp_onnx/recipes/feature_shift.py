"""Feature-shift tuning (after Min et al., NeurIPS 2023: "Towards Stable Backdoor Purification
through Feature Shift Tuning"), implemented from the paper's description.

Plain fine-tuning keeps the backdoored classifier head, so the features it reads
barely need to move and the backdoor features survive. Feature-shift tuning
re-initialises the head, keeps its weight norm equal to the original's, and adds a
penalty `FST_ALPHA * <w, w_original>` that pushes the new head away from the
compromised one; the features must then shift to serve a different classifier,
which disentangles them from the trigger. SGD with a cosine schedule, fixed budget.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fp_onnx.recipes import TrainingPlan, register_recipe, sgd_or_adam
from fp_onnx.recipes.head import classifier_parameters
from fp_onnx.recipes.schedule import cosine_schedule

FST_ALPHA = 0.2


@dataclass
class ShiftedHead:
    weight: torch.nn.Parameter
    original: torch.Tensor
    norm: float


def reinitialise_head(module: torch.nn.Module, config, reference=None) -> ShiftedHead:
    """Replace the head's weight by a random one of the same norm (and zero its bias); remember the original."""
    weight, bias = classifier_parameters(module)
    original = weight.detach().clone()
    norm = float(original.norm())
    generator = torch.Generator().manual_seed(config.seed + 2)
    with torch.no_grad():
        fresh = torch.empty(weight.shape).uniform_(-1.0, 1.0, generator=generator)
        weight.copy_((fresh * norm / max(float(fresh.norm()), 1e-12)).to(weight.device, weight.dtype))
        if bias is not None:
            bias.zero_()
    return ShiftedHead(weight, original.to(weight.device), norm)


@register_recipe("fst", prepare=reinitialise_head,
                 defaults={"lr": 0.01, "epochs": 20, "patience": None, "keep": "last", "weight_decay": 5e-4},
                 summary="feature-shift tuning: re-initialised head pushed away from the original, cosine schedule")
def feature_shift_recipe(module, groups, config, steps_per_epoch, head: ShiftedHead) -> TrainingPlan:
    optimizer = sgd_or_adam(groups, config)

    def shift_penalty(batch) -> torch.Tensor:
        return FST_ALPHA * torch.sum(head.weight * head.original)

    def keep_norm() -> None:
        with torch.no_grad():
            head.weight.mul_(head.norm / max(float(head.weight.norm()), 1e-12))

    return TrainingPlan(optimizer, cosine_schedule(optimizer, config.epochs * steps_per_epoch),
                        loss_terms=(shift_penalty,), after_step=keep_norm)


