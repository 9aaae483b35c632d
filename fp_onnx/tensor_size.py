"""How many bytes an ONNX tensor's values occupy, from its type and shape alone.

Two steps need it and must agree: checking that an external-data reference covers
exactly the bytes its tensor needs (`fp_onnx.external_data`), and planning how much
memory an onnxruntime session of a model holds (`fp_onnx.memory`). Neither can read
the size off the tensor: external data has no `raw_data`, and values stored in the
typed fields (`float_data`, `int64_data`, ...) are packed differently from how a
session holds them.
"""
from __future__ import annotations

import onnx

SUB_BYTE_BITS = {
    getattr(onnx.TensorProto, name): bits
    for name, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
    if hasattr(onnx.TensorProto, name)
}
"""Element types narrower than a byte, packed (their raw data rounds up to whole bytes)."""


def tensor_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes a tensor of this type and shape occupies as raw data; None when the type has no fixed size."""
    count = 1
    for dim in tensor.dims:
        count *= dim
    if tensor.data_type in SUB_BYTE_BITS:
        return (count * SUB_BYTE_BITS[tensor.data_type] + 7) // 8
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None
    return None if tensor.data_type == onnx.TensorProto.STRING else count * itemsize
