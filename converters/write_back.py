"""`write_back`: put fine-tuned weights into the vendor's ONNX graph, changing nothing else.

Only initializer payloads change. Each planned parameter/buffer keeps its name,
element type, shape and storage form (raw_data vs typed fields such as
float_data); external-data references become in-memory data (saving the model,
possibly with external data again, is the caller's job). The input model is not
mutated.
"""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from fp_onnx.converters.initializers import CONSTANT, plan_initializers
from fp_onnx.errors import BadModelError


def write_back(onnx_model: onnx.ModelProto, module: torch.nn.Module) -> onnx.ModelProto:
    """A copy of `onnx_model` whose trained initializers hold `module`'s parameters and buffers.

    Refuses (BadModelError) a module that was not produced by `onnx_to_torch`
    for this model: missing, extra or shape-mismatched parameters or buffers.
    """
    expected = {plan.torch_name: plan for plan in plan_initializers(onnx_model) if plan.role != CONSTANT}
    state = module.state_dict()
    _check_matches(expected, state)
    result = onnx.ModelProto()
    result.CopyFrom(onnx_model)
    by_name = {init.name: init for init in result.graph.initializer}
    for torch_name, plan in expected.items():
        _replace_payload(by_name[plan.onnx_name], state[torch_name])
    return result


def _check_matches(expected, state) -> None:
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise BadModelError(
            f"module does not match the ONNX model: missing {missing[:5]}, unexpected {extra[:5]}; "
            "write back only a module made by onnx_to_torch from this same model"
        )
    for name, plan in expected.items():
        if tuple(state[name].shape) != plan.shape:
            raise BadModelError(
                f"parameter '{name}' (initializer '{plan.onnx_name}') has shape {tuple(state[name].shape)}, "
                f"the model expects {plan.shape}; write back only a module made by onnx_to_torch from this model"
            )


_DATA_FIELDS = ("raw_data", "float_data", "double_data", "int32_data", "int64_data", "external_data")


def _replace_payload(init: onnx.TensorProto, value: torch.Tensor) -> None:
    """Overwrite the tensor's data in the same element type and storage form; name, dims, docs stay."""
    dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
    # via float64, which holds every float16/bfloat16/float32/float64 value exactly
    array = np.ascontiguousarray(value.detach().cpu().to(torch.float64).numpy().astype(dtype))
    uses_raw = init.HasField("raw_data") or init.data_location == onnx.TensorProto.EXTERNAL
    for field in _DATA_FIELDS:
        init.ClearField(field)
    init.data_location = onnx.TensorProto.DEFAULT
    if uses_raw:
        init.raw_data = numpy_helper.from_array(array).raw_data  # little-endian, as ONNX stores it
    else:
        _to_typed_fields(init, array)


def _to_typed_fields(init: onnx.TensorProto, array: np.ndarray) -> None:
    """Store the values in the typed repeated field (float_data, double_data, int32_data) instead of raw_data."""
    if init.data_type == onnx.TensorProto.FLOAT:
        init.float_data[:] = array.reshape(-1).tolist()
    elif init.data_type == onnx.TensorProto.DOUBLE:
        init.double_data[:] = array.reshape(-1).tolist()
    elif init.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
        # float16/bfloat16 bit patterns live in int32_data (ONNX TensorProto docs).
        init.int32_data[:] = array.reshape(-1).view(np.uint16).astype(np.int32).tolist()
    else:
        raise BadModelError(f"initializer '{init.name}' has an element type that write-back cannot store")
