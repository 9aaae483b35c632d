"""`reexport`: write a fine-tuned module as a freshly traced ONNX file.

The default deliverable is the vendor's own graph with new weights
(`write_back`). Some users prefer a re-traced graph (e.g. to let torch fuse or
simplify); this keeps the input/output names and, optionally, a dynamic batch axis.
Graphs that compute shapes at run time (Shape -> Gather -> Concat -> Reshape
chains) cannot be re-traced with a dynamic batch: the tracers turn those shapes
into constants (legacy) or refuse them (dynamo). `reexport` refuses them with
dynamic_batch=True; `write_back` keeps such graphs as they are.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Sequence

import torch

from fp_onnx.errors import BadOptionError
from fp_onnx.module_mode import evaluation_mode

EXPORTERS = ("legacy", "dynamo")


def reexport(
    module: torch.nn.Module,
    example_input: torch.Tensor,
    path: str | Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_batch: bool = True,
    exporter: str = "legacy",
    opset: int = 18,
) -> Path:
    """Export `module` (in eval mode) to `path` with torch.onnx.export and return the path.

    exporter: "legacy" (TorchScript tracing) or "dynamo" (torch.export; may write
    `<path>.data` next to the file for large weights). The module's train/eval
    mode is restored afterwards.
    """
    if exporter not in EXPORTERS:
        raise BadOptionError(f"exporter must be one of {EXPORTERS}, got '{exporter}'")
    if dynamic_batch and getattr(module, "computes_shapes", False):
        raise BadOptionError(
            "this graph computes tensor shapes at run time (Shape/Size nodes), which re-tracing would fix to the "
            "example's batch size; use write_back to keep the vendor graph, or pass dynamic_batch=False"
        )
    path = Path(path)
    with evaluation_mode(module), torch.no_grad():
        if exporter == "legacy":
            _export_legacy(module, example_input, path, input_names, output_names, dynamic_batch, opset)
        else:
            _export_dynamo(module, example_input, path, input_names, output_names, dynamic_batch, opset)
    return path


def _export_legacy(module, example_input, path, input_names, output_names, dynamic_batch, opset):
    dynamic_axes = {name: {0: "batch"} for name in [*input_names, *output_names]} if dynamic_batch else None
    torch.onnx.export(
        module, (example_input,), str(path), input_names=list(input_names), output_names=list(output_names),
        dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False,
    )


def _export_dynamo(module, example_input, path, input_names, output_names, dynamic_batch, opset):
    dynamic_shapes = None
    if dynamic_batch:
        batch = {0: torch.export.Dim("batch")}
        # torch.export matches dynamic_shapes to forward's signature: forward(*inputs) takes one tuple.
        dynamic_shapes = ((batch,),) if _takes_varargs(module) else (batch,)
    torch.onnx.export(
        module, (example_input,), str(path), input_names=list(input_names), output_names=list(output_names),
        dynamic_shapes=dynamic_shapes, opset_version=opset, dynamo=True, external_data=True,
    )


def _takes_varargs(module: torch.nn.Module) -> bool:
    parameters = inspect.signature(module.forward).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
