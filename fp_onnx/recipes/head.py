"""Finding the classifier head (the last linear layer) of a converted vendor graph."""
from __future__ import annotations

import torch

from fp_onnx.errors import UnsupportedOpError

LINEAR_OPS = ("Gemm", "MatMul")


def classifier_parameters(module: torch.nn.Module) -> tuple[torch.nn.Parameter, torch.nn.Parameter | None]:
    """The weight (and bias, if any) of the last Gemm/MatMul whose weight is a trained parameter.

    Recipes that re-initialise or regularise the head (feature-shift tuning) need it;
    a graph whose classifier is a conv (SqueezeNet) has none and is refused.
    """
    parameters = dict(module.named_parameters())
    by_onnx = {onnx_name: torch_name for torch_name, onnx_name in getattr(module, "onnx_names", {}).items()}
    for step in reversed(getattr(module, "_steps", [])):
        node = step.node
        if node.op_type not in LINEAR_OPS or len(node.inputs) < 2:
            continue
        weight = parameters.get(by_onnx.get(node.inputs[1], ""))
        if weight is None:
            continue
        bias = parameters.get(by_onnx.get(node.inputs[2], "")) if len(node.inputs) > 2 and node.inputs[2] else None
        return weight, bias
    raise UnsupportedOpError("this recipe needs a linear classifier head (Gemm or MatMul with a trained weight); "
                             "the model has none: use --recover cosine or paper")
