"""fp-onnx: the Fine-Pruning backdoor defense (Liu et al., RAID 2018) for ONNX models."""
from fp_onnx.errors import (
    BackdoorRemainsError,
    BadDataError,
    BadModelError,
    BadOptionError,
    FpOnnxError,
    ModelRejectedError,
    UnsafeFileError,
    UnsupportedOpError,
)

__version__ = "0.1.0"

__all__ = [
    "BackdoorRemainsError",
    "BadDataError",
    "BadModelError",
    "BadOptionError",
    "FpOnnxError",
    "ModelRejectedError",
    "UnsafeFileError",
    "UnsupportedOpError",
    "__version__",
]
