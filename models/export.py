"""Ship a model the way a vendor would: a legacy-exporter ONNX file plus .npz test sets.

ONNX contract: one input named "input" (float32 NCHW, dynamic batch), one
output named "logits" (N, classes), exported with `torch.onnx.export(...,
dynamo=False)` at opset `OPSET`, weights inside the file.

.npz contract (read with `np.load(path, allow_pickle=False)`):

* `x`: the model's input layout, NCHW; float32, or float16 where a shipped
  file must stay small (the reader casts to float32; metrics in the model card
  are computed on the stored values cast to float32, so they reproduce exactly);
* `y`: int64 true labels;
* `target` (triggered sets of targeted attacks only): int64, the attacker's
  intended label per sample.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from fp_onnx.data import ArrayDataset
from fp_onnx.evaluate import predict
from fp_onnx.inference import ModelRunner
from fp_onnx.loading import load_model
from fp_onnx.runtime import RuntimeOptions

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(model: nn.Module, path: Path, input_shape: tuple[int, ...]) -> Path:
    """Export `model` (eval mode) with the legacy TorchScript exporter and a dynamic batch axis."""
    model.eval()
    dummy = torch.zeros(1, *input_shape, dtype=torch.float32)
    torch.onnx.export(
        model, (dummy,), str(path), dynamo=False, opset_version=OPSET,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
    )
    return path


CAFFE_OPSET = 9


def export_caffe_style(model: nn.Module, path: Path, input_shape: tuple[int, ...]) -> Path:
    """Export `model` (logits out) the way Caffe-era converters wrote graphs, for vendor-style tests.

    Opset 9, a fixed batch of 1, every initializer also listed as a graph input, input
    "data" and a Softmax output "prob" (what the paper authors' DeepID release looks like
    once converted). Inputs are whatever scale the model takes; such models often take raw
    0-255 pixels with no normalisation inside the graph.
    """
    wrapped = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    dummy = torch.zeros(1, *input_shape, dtype=torch.float32)
    torch.onnx.export(wrapped, (dummy,), str(path), dynamo=False, opset_version=CAFFE_OPSET,
                      keep_initializers_as_inputs=True, input_names=["data"], output_names=["prob"])
    return path


def save_npz(path: Path, x: np.ndarray, y: np.ndarray, target: np.ndarray | None = None,
             dtype: type = np.float32, groups: np.ndarray | None = None) -> Path:
    """Write one data set (compressed, no objects, so it loads without pickle)."""
    arrays = {"x": np.ascontiguousarray(x, dtype=dtype), "y": np.asarray(y, dtype=np.int64)}
    if target is not None:
        arrays["target"] = np.asarray(target, dtype=np.int64)
    if groups is not None:
        arrays["groups"] = np.asarray(groups, dtype=np.int64)
    np.savez_compressed(path, **arrays)
    return path


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Read a data set written by `save_npz`, with `x` cast to float32."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["x"] = arrays["x"].astype(np.float32)
    return arrays


def onnx_predict(model_path: Path, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Labels predicted by the exported file under onnxruntime's CPU provider, through fp-onnx's own runner."""
    runner = ModelRunner(load_model(model_path).model, options=RuntimeOptions(device="cpu"))
    return predict(runner, ArrayDataset(np.asarray(x, dtype=np.float32)), batch_size).astype(np.int64)


def conv_node_name(model_path: Path, module_name: str) -> str | None:
    """Name of the exported Conv node of torch module `module_name` (legacy names look like
    '/conv5/conv5.0/Conv'), or None when the exporter named it otherwise."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    names = [n.name for n in graph.node if n.op_type == "Conv" and n.name.startswith(f"/{module_name}/")]
    return names[0] if len(names) == 1 else None
