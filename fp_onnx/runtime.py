"""The one place that creates onnxruntime sessions.

Provider choice is deliberate: the onnxruntime-gpu wheel lists CUDA and TensorRT
providers even on machines without a GPU, and asking for them there prints loud
errors. So `auto` asks for CUDA only after the CUDA driver itself reports a device,
and TensorRT is never used unless asked for by name.
"""
from __future__ import annotations

import ctypes
import functools
import os
import re
from dataclasses import dataclass

import onnx
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from fp_onnx.errors import BadModelError, BadOptionError, FpOnnxError, ResourceLimitError, first_line
from fp_onnx.memory import is_out_of_memory

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
ONNXRUNTIME_ERRORS = (RuntimeError, *(value for value in vars(_ort_state).values()
                                      if isinstance(value, type) and issubclass(value, Exception)))
"""What a failing onnxruntime call raises (its own untyped exception classes, plus RuntimeError)."""
MAX_THREADS = 4 * (os.cpu_count() or 1)
_QUIET = 4  # onnxruntime severity: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal
# onnxruntime logs a failing node or session as an "[E:onnxruntime:...]" line on stderr before
# it raises; we turn the exception into our own one-line error, so its log would be a second,
# coloured copy. Errors (severity 3) are silenced too: only fatal messages remain.
ort.set_default_logger_severity(_QUIET)


@dataclass(frozen=True)
class RuntimeOptions:
    """How to run a model: device, threads and graph-optimisation level."""

    device: str = "auto"
    threads: int = 0
    """Intra-op threads; 0 lets onnxruntime decide (one per physical core)."""
    optimization: str = "all"
    allow_spinning: bool = True
    """Let idle intra-op threads spin; off where several sessions take turns on the same cores."""
    max_memory: int = 0
    """Memory budget in bytes for batches and sweep chunks (fp_onnx.memory); 0: half the available memory."""

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise BadOptionError(f"--device {self.device}: choose one of {', '.join(DEVICES)}")
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise BadOptionError(
                f"--graph-optimization {self.optimization}: choose one of {', '.join(OPTIMIZATION_LEVELS)}"
            )
        if self.threads < 0:
            raise BadOptionError(f"--threads {self.threads}: must be 0 (automatic) or more")
        if self.threads > MAX_THREADS:
            raise BadOptionError(f"--threads {self.threads}: at most {MAX_THREADS} (4 per CPU core); more threads "
                                 "than cores only slow onnxruntime down")
        if self.max_memory < 0:
            raise BadOptionError(f"--max-memory {self.max_memory}: must be positive")


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


def _quiet_session_options() -> ort.SessionOptions:
    """Options for every session we create: onnxruntime's own log lines silenced (see `_QUIET`)."""
    session_options = ort.SessionOptions()
    session_options.log_severity_level = _QUIET
    return session_options


def create_session(model: onnx.ModelProto, options: RuntimeOptions = RuntimeOptions()) -> ort.InferenceSession:
    """An InferenceSession for an in-memory model, on the device the options ask for."""
    session_options = _quiet_session_options()
    session_options.graph_optimization_level = OPTIMIZATION_LEVELS[options.optimization]
    session_options.intra_op_num_threads = options.threads
    if not options.allow_spinning:
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = select_providers(options.device)
    try:
        session = ort.InferenceSession(model.SerializeToString(), session_options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise run_failure(exc, "onnxruntime cannot load the model") from None
    if options.device in ("cuda", "tensorrt") and session.get_providers()[0] == "CPUExecutionProvider":
        raise BadOptionError(f"--device {options.device}: onnxruntime fell back to the CPU; check the CUDA install")
    return session


def unsupported_opsets(model: onnx.ModelProto) -> str | None:
    """Why onnxruntime cannot run a model of this IR version and these opsets, or None.

    Asked of onnxruntime itself with a one-node model stamped with the same IR version
    and opsets (of the domains it knows): it refuses versions newer than it implements.
    """
    opsets = tuple(sorted({(o.domain, o.version) for o in model.opset_import if o.domain in _ORT_DOMAINS}))
    return _version_problem(model.ir_version, opsets)


_ORT_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


@functools.cache
def _version_problem(ir_version: int, opsets: tuple[tuple[str, int], ...]) -> str | None:
    value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe", [value],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets])
    probe.ir_version = ir_version
    session_options = _quiet_session_options()
    try:
        ort.InferenceSession(probe.SerializeToString(), session_options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        return _version_refusal(str(exc), ir_version, opsets)
    return None


def _version_refusal(message: str, ir_version: int, opsets: tuple[tuple[str, int], ...]) -> str:
    """onnxruntime's long refusal, said in one short sentence."""
    ir_limit = re.search(r"max supported IR version: (\d+)", message)
    if ir_limit:
        return f"IR version {ir_version} is newer than onnxruntime {ort.__version__} supports ({ir_limit.group(1)})"
    opset_limit = re.search(r"Opset (\d+) .*?domain (\S+) is till opset (\d+)", message, re.DOTALL)
    if opset_limit:
        version, domain, limit = opset_limit.groups()
        return (f"opset {version} of domain '{domain}' is newer than onnxruntime {ort.__version__} supports "
                f"(up to {limit})")
    shown = ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in opsets)
    return f"onnxruntime {ort.__version__} refuses IR version {ir_version} with opsets {shown}: {first_line(message)}"


_ORT_ELEM_TYPES = {
    "float": onnx.TensorProto.FLOAT, "double": onnx.TensorProto.DOUBLE, "float16": onnx.TensorProto.FLOAT16,
    "bfloat16": onnx.TensorProto.BFLOAT16, "int8": onnx.TensorProto.INT8, "int16": onnx.TensorProto.INT16,
    "int32": onnx.TensorProto.INT32, "int64": onnx.TensorProto.INT64, "uint8": onnx.TensorProto.UINT8,
    "uint16": onnx.TensorProto.UINT16, "uint32": onnx.TensorProto.UINT32, "uint64": onnx.TensorProto.UINT64,
    "bool": onnx.TensorProto.BOOL,
}


def runtime_value_info(model: onnx.ModelProto, names: list[str]) -> list[onnx.ValueInfoProto]:
    """Types and shapes onnxruntime infers for the named tensors (it knows its contrib ops; onnx does not).

    The tensors become outputs of an unoptimised session that is created but never run.
    Tensors onnxruntime cannot type (or a model it cannot load) are simply left out.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names)
    session_options = _quiet_session_options()
    session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(copy.SerializeToString(), session_options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - the session checks of later steps report why, in context
        return []
    wanted, found = set(names), []
    for output in session.get_outputs():
        elem_type = _ORT_ELEM_TYPES.get(output.type.removeprefix("tensor(").removesuffix(")"))
        if output.name in wanted and elem_type is not None and output.type.startswith("tensor("):
            shape = None if output.shape is None else [d if isinstance(d, (int, str)) else None for d in output.shape]
            found.append(onnx.helper.make_tensor_value_info(output.name, elem_type, shape))
    return found


def run_failure(exc: Exception, what: str, kind: type[FpOnnxError] = BadModelError) -> FpOnnxError:
    """The error for a failed onnxruntime call: running out of memory is a resource limit, the rest `kind`."""
    if is_out_of_memory(exc):
        return ResourceLimitError(f"{what}: out of memory; lower --batch-size or --max-memory, or free memory")
    return kind(f"{what}: {first_line(exc)}")


def active_device(session: ort.InferenceSession) -> str:
    """'cuda' or 'cpu': what the session really runs on (reports say it)."""
    return "cuda" if session.get_providers()[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"
