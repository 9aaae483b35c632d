"""How much memory a run may use, and the batch sizes and chunk sizes that follow.

A batch that is harmless for a small model can take tens of gigabytes in a large
one: what an onnxruntime call needs grows with the activations of every tensor the
graph computes, times the rows fed at once. So instead of fixed batch sizes, rows
per call are derived from

* a memory budget: `--max-memory`, by default half of the memory available when
  the command starts (the smallest of /proc/meminfo's MemAvailable, a cgroup
  limit and RLIMIT_AS; half, because the machine is rarely ours alone and
  onnxruntime's arenas keep what they once allocated);
* the model's weights, which every onnxruntime session holds (we count
  `SESSION_COPIES` copies: the proto we hold, the session's own, pre-packed
  Gemm/Conv weights);
* the activation bytes of one sample: the sum over every tensor computed from the
  graph input of its inferred per-sample size. That is an upper bound (onnxruntime
  reuses buffers), which is what a budget wants.

The budget limits what we control (batches, sweep chunks, arrays read into
memory); a single sample that cannot fit is refused up front with the numbers.
"""
from __future__ import annotations

import math
import os
import resource
from pathlib import Path

import onnx

from fp_onnx.errors import ResourceLimitError
from fp_onnx.procfs import proc_field
from fp_onnx.tensor_size import tensor_bytes

DEFAULT_FRACTION = 0.5
"""Share of the available memory a run plans to use when --max-memory is not given."""
SESSION_COPIES = 3
"""Copies of the weights a run holds per model: our proto, onnxruntime's, pre-packed kernels."""
FALLBACK_AVAILABLE = 4 * 1024**3
"""Assumed available memory where the OS does not say (non-Linux without sysconf)."""


def available_memory() -> int:
    """Bytes this process can still use: the least of MemAvailable, the cgroup's room and RLIMIT_AS."""
    candidates = [value for value in (_meminfo_available(), _cgroup_room(), _address_space_room()) if value]
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            candidates.append(FALLBACK_AVAILABLE)
    return max(1, min(candidates))


def default_budget() -> int:
    return int(available_memory() * DEFAULT_FRACTION)


def budget_bytes(max_memory: int) -> int:
    """The budget a run plans with: `max_memory` bytes, or the default when it is 0."""
    return max_memory if max_memory > 0 else default_budget()


def _meminfo_available() -> int | None:
    value = proc_field("/proc/meminfo", "MemAvailable:")
    try:
        return int(value) * 1024 if value is not None else None
    except ValueError:
        return None


def _cgroup_room() -> int | None:
    """Limit minus usage of this process's cgroup (v2, else v1); None without a limit."""
    for limit_file, usage_file in (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes",
                                                                     "memory/memory.usage_in_bytes")):
        try:
            limit = Path("/sys/fs/cgroup", limit_file).read_text().strip()
            usage = int(Path("/sys/fs/cgroup", usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            return max(0, int(limit) - usage)
    return None


def _address_space_room() -> int | None:
    """RLIMIT_AS minus the address space already mapped (a hard cap on allocations)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        mapped = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        mapped = 0
    return max(0, soft - mapped)


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's initializers (what every session of it holds): exact for every fixed-size type,
    wherever the values are stored (raw data, typed fields, external data); 4 per element otherwise."""
    return sum(_initializer_bytes(tensor) for tensor in model.graph.initializer)


def _initializer_bytes(tensor: onnx.TensorProto) -> int:
    exact = tensor_bytes(tensor)
    return exact if exact is not None else len(tensor.raw_data) or _elements(tensor.dims) * 4


def activation_bytes(model: onnx.ModelProto) -> tuple[int, str]:
    """(bytes per sample of the rows fed in and every tensor computed from them, the largest tensor's name).

    Uses the inferred shapes: a dim that is symbolic counts once (it is the batch, or
    unknown); a tensor without a known shape counts like the largest graph input.
    """
    graph = model.graph
    weights = {tensor.name for tensor in graph.initializer}
    shapes = {value.name: value.type.tensor_type for value in [*graph.input, *graph.value_info, *graph.output]}
    reached = {value.name for value in graph.input if value.name not in weights}
    sizes = {name: _sample_bytes(shapes[name]) for name in reached}
    fallback = max((size for size in sizes.values() if size is not None), default=4)
    for node in graph.node:
        if any(name in reached for name in node.input):
            reached.update(node.output)
            sizes.update({name: _sample_bytes(shapes[name]) if name in shapes else None for name in node.output})
    sizes = {name: fallback if size is None else size for name, size in sizes.items()}
    largest = max(sizes, key=sizes.get, default="")
    return sum(sizes.values()), largest


def output_bytes(model: onnx.ModelProto) -> int:
    """Bytes per sample of the graph's outputs (unknown shapes count as nothing)."""
    return sum(_sample_bytes(value.type.tensor_type) or 0 for value in model.graph.output)


def _sample_bytes(tensor_type: onnx.TypeProto.Tensor) -> int | None:
    if not tensor_type.HasField("shape"):
        return None
    dims = [d.dim_value for d in tensor_type.shape.dim if d.HasField("dim_value")]
    if len(dims) < len(tensor_type.shape.dim) - 1:
        return None  # more than one unknown dim: not just the batch
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).itemsize
    except (KeyError, ValueError, TypeError):
        itemsize = 4
    return _elements(dims) * max(itemsize, 1)


def _elements(dims) -> int:
    return math.prod(max(int(d), 0) for d in dims)


def rows_within(budget: int, bytes_per_row: int, at_most: int) -> int:
    """Rows per call that keep `bytes_per_row * rows` within `budget`: between 1 and `at_most`."""
    if bytes_per_row <= 0:
        return max(1, at_most)
    return max(1, min(at_most, budget // bytes_per_row))


def check_sample_fits(per_sample: int, largest: str, budget: int, what: str) -> None:
    """Refuse a model whose single sample already needs more than the budget."""
    if per_sample > budget:
        raise ResourceLimitError(
            f"{what} needs about {format_bytes(per_sample)} of activations for ONE sample (largest tensor "
            f"'{largest}'), more than the memory budget of {format_bytes(budget)}; raise --max-memory if the "
            "machine has the memory"
        )


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"  # pragma: no cover - loop always returns


def is_out_of_memory(exc: BaseException) -> bool:
    """True for MemoryError and the allocation failures of onnxruntime and torch (their errors are untyped)."""
    text = str(exc)
    markers = ("Failed to allocate memory", "bad_alloc", "can't allocate memory", "out of memory")
    return isinstance(exc, MemoryError) or any(marker in text for marker in markers)
