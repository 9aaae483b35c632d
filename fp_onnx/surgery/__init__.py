"""ONNX graph surgery that removes a prune point's channels (fine-pruning's pruning step).

`prune_channels` edits upstream (surgery/upstream.py: the Conv and its channel-wise
chain) and downstream (surgery/downstream.py: one handler per reader op type), and
falls back to forcing channels to zero where they must keep existing;
`mask_channels` is the zero-mask reference the pruned model must match.
"""
from fp_onnx.surgery.masking import mask_channels, mask_points
from fp_onnx.surgery.prune import SurgeryResult, prune_channels

__all__ = ["SurgeryResult", "mask_channels", "mask_points", "prune_channels"]
