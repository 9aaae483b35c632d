"""Op converters, grouped by family; importing this package registers them all."""
from fp_onnx.converters.ops import (  # noqa: F401
    activation,
    conv,
    indexing,
    math,
    norm,
    pooling,
    reduce,
    resize,
    shape,
    tensor,
)
