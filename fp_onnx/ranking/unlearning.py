"""Reconstructive Neuron Pruning as a ranking criterion (after Li et al., ICML 2023).

Implemented from the paper's description:

1. **Unlearn** (neuron level): a copy of the model takes gradient *ascent* steps on
   the clean loss (SGD, lr 0.01, momentum 0.9, weight decay 5e-4) until its clean
   accuracy falls to `UNLEARN_FLOOR` (or `UNLEARN_EPOCHS` passes are spent). Clean
   features are destroyed; the backdoor, which clean data never exercises, is not.
2. **Recover** (filter level): the unlearned weights are frozen and one mask in [0, 1]
   per channel of every prune point is learned (SGD, lr 0.2, momentum 0.9) to bring
   the clean loss back down. Channels that help the clean task get their mask back
   to 1; channels whose mask stays low contributed to the unlearned model's wrong
   answers, i.e. to what survived unlearning: the backdoor.
3. Channels are ranked by mask value, lowest first (ties: lowest mean clean activation
   is irrelevant here, so point then channel order).

Differences from the paper, and why: masks sit on our prune points (feature tensors,
after BN and activation) rather than on BatchNorm layers, because a vendor's ONNX
graph has usually folded BN into the conv; and the stop rule, not a fixed mask
threshold, decides how many channels go, so clean accuracy stays bounded.
"""
from __future__ import annotations


import torch

from fp_onnx.channel_masks import ChannelMultipliers
from fp_onnx.ranking import ChannelRanking, RankingInputs, global_order, register_criterion
from fp_onnx.ranking.torch_side import TorchView, maskable_points

UNLEARN_LR = 0.01
UNLEARN_FLOOR = 0.20
UNLEARN_EPOCHS = 20
MASK_LR = 0.2
MASK_EPOCHS = 20


def unlearn(view: TorchView) -> dict:
    """Gradient ascent on the clean loss until accuracy <= UNLEARN_FLOOR; returns what happened."""
    parameters = [p for p in view.module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=UNLEARN_LR, momentum=0.9, weight_decay=5e-4)
    accuracy, epochs = view.accuracy(), 0
    for epochs in range(1, UNLEARN_EPOCHS + 1):
        view.module.train()
        for x, y in view.batches():
            optimizer.zero_grad(set_to_none=True)
            (-view.loss(x, y)).backward()
            # Ascent has no natural scale: bound the step like RNP's small learning rate does.
            torch.nn.utils.clip_grad_norm_(parameters, 10.0)
            optimizer.step()
        accuracy = view.accuracy()
        if accuracy <= UNLEARN_FLOOR:
            break
    view.module.eval()
    return {"unlearn_epochs": epochs, "unlearned_accuracy": accuracy}


def recover_masks(view: TorchView, points) -> tuple[list, float]:
    """Learn channel masks on the frozen unlearned model; returns (mask values per point, clean accuracy)."""
    view.freeze()
    with ChannelMultipliers(view.module, points, trainable=True) as masks:
        optimizer = torch.optim.SGD(masks.masks, lr=MASK_LR, momentum=0.9)
        for _ in range(MASK_EPOCHS):
            for x, y in view.batches():
                optimizer.zero_grad(set_to_none=True)
                view.loss(x, y).backward()
                optimizer.step()
                masks.clamp_()
        return masks.values(), view.accuracy()


@register_criterion("rnp")
def rank_by_reconstruction(inputs: RankingInputs) -> ChannelRanking:
    points = maskable_points(inputs)
    view = TorchView(inputs)
    details = {"start_accuracy": view.accuracy()}
    details.update(unlearn(view))
    masks, recovered = recover_masks(view, points)
    details["recovered_accuracy"] = recovered
    return ChannelRanking("rnp", points, global_order(masks, points), masks, details)


