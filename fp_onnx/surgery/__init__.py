"""ONNX graph surgery that removes a prune point's channels (fine-pruning's pruning step).

`prune_channels` plans the edit first (surgery/plan.py): upstream, the region that
computes the channels (surgery/upstream.py: convs, channel-wise ops, residual joins,
Concats; a channel selection where a shared tensor enters it) and downstream, every
reader (surgery/downstream.py: one handler per op type); then applies it, or forces
the channels to zero where they must keep existing. `mask_channels` is the zero-mask
reference the pruned model must match.
"""
from fp_onnx.surgery.masking import mask_channels, mask_points
from fp_onnx.surgery.prune import SurgeryResult, prune_channels

__all__ = ["SurgeryResult", "mask_channels", "mask_points", "prune_channels"]
