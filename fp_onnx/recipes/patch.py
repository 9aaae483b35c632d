"""A universal *patch*: one mask and one pattern that, stamped on every input of a batch, raise its loss.

The adversarial recipes search for trigger-like perturbations without seeing a trigger.
The additive search (`adversarial.universal_perturbation`) looks in an L2 ball: right
for triggers that add a pattern (a noise burst, an image blended at a low ratio), but a
patch trigger *replaces* pixels, `x' = (1 - m) x + m p`, and the additive change that
does that differs from image to image (p - x inside the mask). Its L2 size is about
half the data's spread on the zoo's image models (docs/decisions.md), so the ball that
contains it contains much else, and being robust to all of it cost the face models 20-50
points of clean accuracy. This search looks in the set of patches instead, as Neural
Cleanse (Wang et al., S&P 2019) parameterises a trigger: a mask `m` in [0, 1] with a
bounded total `sum(m) <= PATCH_AREA * numel` and a pattern `p` within the data's value
range, both shared by the whole batch, written here from that description (untargeted:
it raises the loss of the true labels, so all-to-one and all-to-all backdoors alike).

The mask and pattern span the whole input tensor (every channel of every position), so
the search needs to know nothing of the layout (NCHW, NHWC, spectrograms).

What the search finds depends on the budget (measured on the zoo, docs/decisions.md, bullet
"Universal patches"): on the CIFAR-10 subset a 1 % budget finds the backdoor's corner square
(every prediction goes to the attacker's class), while at 5 % a natural adversarial patch that
sends everything to another class is easier to find; on the 21-identity face model a 1 % patch
reaches *every* class, so no budget singles the trigger out there. The recipes unlearn
whatever the search finds: robustness to small patches is cheaper in clean accuracy than
robustness to an L2 ball of a trigger's size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fp_onnx.losses import classification_loss
from fp_onnx.module_mode import evaluation_mode

PATCH_AREA = 0.05
"""The mask's total as a fraction of the input's elements: the zoo's patch triggers cover 1-6 % of the image
(a 3x3 corner square, a 6x6 Post-it on 32x32 signs, the glasses frame on 55x47 faces)."""
PATCH_STEPS = 5
MASK_STEP = 0.5
"""Largest change of one mask element per ascent step."""
PATTERN_STEP = 0.25
"""Change of every pattern element per ascent step, as a fraction of the data's value range."""


@dataclass
class Patch:
    """A mask in [0, 1] and a pattern, both shaped like one input: what a patch trigger is."""

    mask: torch.Tensor
    pattern: torch.Tensor

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        """The batch with the patch on every input."""
        return (1 - self.mask) * x + self.mask * self.pattern


def project_mask(mask: torch.Tensor, total: float) -> torch.Tensor:
    """The nearest mask (Euclidean) with elements in [0, 1] and a sum of at most `total`.

    That is clamp(mask - tau, 0, 1) for the smallest tau >= 0 that meets the sum, found by
    bisection (the sum falls monotonically in tau).
    """
    clamped = mask.clamp(0, 1)
    if float(clamped.sum()) <= total:
        return clamped
    low, high = 0.0, float(mask.max())
    for _ in range(40):
        tau = (low + high) / 2
        if float((mask - tau).clamp(0, 1).sum()) > total:
            low = tau
        else:
            high = tau
    return (mask - high).clamp(0, 1)


def universal_patch(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str,
                    start: Patch | None, area: float = PATCH_AREA) -> Patch:
    """A patch shared by the batch `x` that raises its loss: `PATCH_STEPS` ascent steps from `start` (the last
    batch's patch, so the search accumulates over an epoch) or from a faint uniform mask and a random pattern.

    The pattern moves by signed steps (PGD's: each element's useful direction, whatever the gradient's scale) and is
    kept in the batch's value range; the mask moves along its gradient scaled to a largest step of MASK_STEP, then
    is projected back onto its budget. Gradients are taken with respect to the patch only (the weights' .grad is
    untouched), with the module in evaluation mode so BatchNorm statistics do not move.
    """
    low, high = float(x.min()), float(x.max())
    total = area * x[0].numel()
    if start is not None and start.mask.shape == x.shape[1:]:
        mask, pattern = start.mask.detach().clone(), start.pattern.detach().clone()
    else:
        mask = torch.full(x.shape[1:], area, device=x.device, dtype=x.dtype)
        pattern = low + (high - low) * torch.rand(x.shape[1:], device=x.device, dtype=x.dtype)
    with evaluation_mode(module):
        for _ in range(PATCH_STEPS):
            mask.requires_grad_(True)
            pattern.requires_grad_(True)
            loss = classification_loss(module(Patch(mask, pattern).stamp(x)), y, kind)
            mask_gradient, pattern_gradient = torch.autograd.grad(loss, (mask, pattern))
            with torch.no_grad():
                pattern = (pattern + PATTERN_STEP * (high - low) * pattern_gradient.sign()).clamp(low, high)
                mask = project_mask(mask + MASK_STEP * mask_gradient / (mask_gradient.abs().max() + 1e-12), total)
    return Patch(mask.detach(), pattern.detach())
