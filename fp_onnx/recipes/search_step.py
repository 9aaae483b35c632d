"""The step the universal searches take (additive perturbations, warps): a normalised gradient step, projected back
onto an L2 ball.

Normalising makes the step a fixed share of the ball whatever the loss's scale (logits or probabilities, a model
near or far from its decision boundaries), so a few steps cross the ball; projecting keeps what is found within the
budget the recipe unlearns at.
"""
from __future__ import annotations

import torch


def step_within_ball(value: torch.Tensor, direction: torch.Tensor, radius: float, fraction: float) -> torch.Tensor:
    """`value` moved by `fraction * radius` along `direction` (the gradient to ascend, or its negative to descend),
    then scaled back onto the ball of `radius` around zero if it left it."""
    value = value + fraction * radius * direction / (direction.norm() + 1e-12)
    norm = float(value.norm())
    return value * (radius / norm) if norm > radius else value
