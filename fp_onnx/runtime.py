"""The one place that creates onnxruntime sessions.

Provider choice is deliberate: the onnxruntime-gpu wheel lists CUDA and TensorRT
providers even on machines without a GPU, and asking for them there prints loud
errors. So `auto` asks for CUDA only after the CUDA driver itself reports a device,
and TensorRT is never used unless asked for by name.
"""
from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import onnx
import onnxruntime as ort

from fp_onnx.errors import BadModelError, BadOptionError

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_QUIET = 3  # onnxruntime severity: 0 verbose ... 3 error


@dataclass(frozen=True)
class RuntimeOptions:
    """How to run a model: device, threads and graph-optimisation level."""

    device: str = "auto"
    threads: int = 0
    """Intra-op threads; 0 lets onnxruntime decide (one per physical core)."""
    optimization: str = "all"
    allow_spinning: bool = True
    """Let idle intra-op threads spin; off where several sessions take turns on the same cores."""

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise BadOptionError(f"--device {self.device}: choose one of {', '.join(DEVICES)}")
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise BadOptionError(
                f"--graph-optimization {self.optimization}: choose one of {', '.join(OPTIMIZATION_LEVELS)}"
            )
        if self.threads < 0:
            raise BadOptionError(f"--threads {self.threads}: must be 0 (automatic) or more")


@functools.cache
def cuda_device_count() -> int:
    """GPUs the CUDA driver reports, asked through libcuda directly (quiet, no provider errors)."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


@functools.cache
def _cuda_runtime_ready() -> bool:
    """True when onnxruntime's CUDA provider is built in and its libraries load."""
    if "CUDAExecutionProvider" not in ort.get_available_providers() or cuda_device_count() == 0:
        return False
    try:
        # Loads CUDA/cuDNN from the nvidia-* wheels when they are installed (onnxruntime >= 1.21).
        ort.preload_dlls(cuda=True, cudnn=True, msvc=False)
    except Exception:  # noqa: BLE001 - system-wide CUDA may still work; the session check decides
        pass
    return True


def select_providers(device: str) -> list[str]:
    """Execution providers for `device`, most preferred first; CPU always last as fallback."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "auto":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if _cuda_runtime_ready() else ["CPUExecutionProvider"]
    if not _cuda_runtime_ready():
        raise BadOptionError(
            f"--device {device}: no CUDA GPU usable by onnxruntime here "
            f"(driver devices: {cuda_device_count()}, providers: {', '.join(ort.get_available_providers())}); "
            "use --device cpu or auto"
        )
    if device == "tensorrt":
        return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def create_session(model: onnx.ModelProto, options: RuntimeOptions = RuntimeOptions()) -> ort.InferenceSession:
    """An InferenceSession for an in-memory model, on the device the options ask for."""
    session_options = ort.SessionOptions()
    session_options.log_severity_level = _QUIET
    session_options.graph_optimization_level = OPTIMIZATION_LEVELS[options.optimization]
    session_options.intra_op_num_threads = options.threads
    if not options.allow_spinning:
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = select_providers(options.device)
    try:
        session = ort.InferenceSession(model.SerializeToString(), session_options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise BadModelError(f"onnxruntime cannot load the model: {_first_line(exc)}") from None
    if options.device in ("cuda", "tensorrt") and session.get_providers()[0] == "CPUExecutionProvider":
        raise BadOptionError(f"--device {options.device}: onnxruntime fell back to the CPU; check the CUDA install")
    return session


def active_device(session: ort.InferenceSession) -> str:
    """'cuda' or 'cpu': what the session really runs on (reports say it)."""
    return "cuda" if session.get_providers()[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__
