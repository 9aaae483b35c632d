"""Adversarial Neuron Pruning as a ranking criterion (after Wu and Wang, NeurIPS 2021).

Implemented from the paper's description: every channel of every prune point gets a
mask m in [0, 1] (learned) and a multiplicative perturbation delta in [-eps, eps]
(adversarial). Each step first moves delta to *raise* the clean loss (one signed
step from a random start), then moves the masks to lower a mix of the natural loss
(weight `ANP_ALPHA`) and the perturbed loss (1 - `ANP_ALPHA`). A backdoored network
has channels whose small perturbation wrecks clean predictions (they push towards
the target class); keeping the clean loss low under perturbation drives their masks
to 0. Channels are ranked by mask value, lowest first.

As for RNP, masks sit on our prune points (post-activation feature tensors) rather
than on BatchNorm layers a vendor graph has folded away, and the stop rule decides
how many channels go.
"""
from __future__ import annotations

import torch

from fp_onnx.channel_masks import ChannelMultipliers
from fp_onnx.ranking import ChannelRanking, RankingInputs, global_order, register_criterion
from fp_onnx.ranking.torch_side import TorchView, maskable_points

ANP_EPS = 0.4
ANP_ALPHA = 0.2
ANP_LR = 0.2
ANP_STEPS = 400


@register_criterion("anp")
def rank_by_perturbation(inputs: RankingInputs) -> ChannelRanking:
    points = maskable_points(inputs)
    view = TorchView(inputs)
    view.freeze()
    start = view.accuracy()
    with ChannelMultipliers(view.module, points, trainable=True, noise=True) as masks:
        optimizer = torch.optim.SGD(masks.masks, lr=ANP_LR, momentum=0.9)
        steps = 0
        while steps < ANP_STEPS:
            for x, y in view.batches():
                _perturb(view, masks, x, y)
                optimizer.zero_grad(set_to_none=True)
                masks.perturbing = True
                robust = view.loss(x, y)
                masks.perturbing = False
                natural = view.loss(x, y)
                (ANP_ALPHA * natural + (1 - ANP_ALPHA) * robust).backward()
                optimizer.step()
                masks.clamp_()
                steps += 1
                if steps == ANP_STEPS:
                    break
        values = masks.values()
    details = {"start_accuracy": start, "steps": ANP_STEPS, "eps": ANP_EPS, "alpha": ANP_ALPHA}
    return ChannelRanking("anp", points, global_order(values, points), values, details)


def _perturb(view: TorchView, masks: ChannelMultipliers, x: torch.Tensor, y: torch.Tensor) -> None:
    """One signed ascent step on the perturbations from a uniform random start, kept in [-eps, eps]."""
    with torch.no_grad():
        for noise in masks.noise:
            noise.uniform_(-ANP_EPS, ANP_EPS)
    masks.perturbing = True
    loss = view.loss(x, y)
    masks.perturbing = False
    gradients = torch.autograd.grad(loss, masks.noise)
    with torch.no_grad():
        for noise, gradient in zip(masks.noise, gradients):
            noise.add_(ANP_EPS * gradient.sign()).clamp_(-ANP_EPS, ANP_EPS)
