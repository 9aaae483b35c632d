"""ONNX <-> PyTorch conversion for fine-tuning, and weight write-back into the vendor graph.

* `onnx_to_torch(model)`: an `nn.Module` that runs the ONNX graph with torch ops.
* `write_back(model, module)`: the vendor graph with the module's weights.
* `reexport(module, example_input, path, ...)`: a re-traced ONNX file instead.
"""
from fp_onnx.converters.graph_module import OnnxGraphModule, onnx_to_torch
from fp_onnx.converters.registry import supported_ops
from fp_onnx.converters.reexport import reexport
from fp_onnx.converters.write_back import write_back

__all__ = ["OnnxGraphModule", "onnx_to_torch", "reexport", "supported_ops", "write_back"]
