"""External data of an untrusted model: vetted, then read by fp-onnx itself.

Large ONNX models keep their weights in files beside the model (the torch dynamo
exporter writes `model.onnx.data`); each tensor names a `location`, an `offset`
and a `length`. A hostile file can point those anywhere, so every reference, in
the graph, in its subgraphs and in model-local functions, is checked before any
byte is read:

* the location must be a relative path without `..` that resolves (symlinks
  followed) to a regular file inside the model's own folder: absolute paths,
  links that leave the folder, symlink loops and names the OS cannot even
  resolve are refused as unsafe;
* the byte range must lie inside that file and hold exactly as many bytes as the
  tensor's type and dims need;
* the bytes read in total stay under the caller's size budget (a hostile file
  could reference the same gigabyte a thousand times).

We read the bytes ourselves instead of calling onnx's loader: its rules differ
from ours (it refuses any symlink, even one inside the folder, and it never looks
into functions), and one place deciding what is read keeps the rules in one spot.
A symlink that stays inside the folder is followed (docs/decisions.md, "Safety").
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import onnx

from fp_onnx.errors import BadModelError, UnsafeFileError
from fp_onnx.tensor_size import tensor_bytes


def iter_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto a graph carries: initializers, sparse values, node attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def model_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of the model: the graph's and those inside model-local functions."""
    yield from iter_tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)


def _node_tensors(nodes) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield attribute.sparse_tensor.values
                yield attribute.sparse_tensor.indices
            if attribute.HasField("g"):
                yield from iter_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from iter_tensors(subgraph)


def read_external_data(model: onnx.ModelProto, path: Path, budget: int) -> dict[str, Path]:
    """Vet every external-data reference of `model` (loaded from `path`), then read the bytes in.

    Afterwards no tensor of `model` refers to a file any more. Returns {location: resolved
    file} of the files read (for hashing). Raises UnsafeFileError for a reference that
    leaves the folder, a range outside its file, or more bytes than `budget`; BadModelError
    for a missing file or a range that does not fit the tensor.
    """
    folder = path.parent.resolve()
    files: dict[str, Path] = {}
    reads: list[tuple[onnx.TensorProto, Path, int, int]] = []
    for tensor in model_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        if location not in files:
            files[location] = _safe_data_file(location, folder, path, tensor.name)
        offset, length = _data_range(info, files[location], tensor, path)
        reads.append((tensor, files[location], offset, length))
    total = sum(length for *_, length in reads)
    if total > budget:
        raise UnsafeFileError(
            f"{path}: model plus external data exceed the size cap ({total} bytes of data); "
            "raise it with --max-model-size if you trust the file"
        )
    for tensor, file, offset, length in reads:
        with file.open("rb") as handle:
            handle.seek(offset)
            tensor.raw_data = handle.read(length)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
    return files


def _safe_data_file(location: str, folder: Path, path: Path, tensor: str) -> Path:
    refused = f"{path}: tensor '{tensor}' refers to external data '{_shorten(location)}'"
    if not location:
        raise UnsafeFileError(f"{refused}, which names no file")
    if "\0" in location or "\\" in location:
        raise UnsafeFileError(f"{refused}, which is not a plain relative file name")
    candidate = Path(location)
    if candidate.is_absolute() or candidate.drive or ".." in candidate.parts:
        raise UnsafeFileError(f"{refused} outside the model's folder; external data must sit beside the model")
    try:
        resolved = (folder / candidate).resolve(strict=True)
        regular = resolved.is_file()
    except FileNotFoundError:
        raise BadModelError(f"{refused}, which does not exist next to the model") from None
    except (OSError, RuntimeError) as exc:  # symlink loops (RuntimeError before 3.13), names too long
        reason = "a symlink loop" if isinstance(exc, RuntimeError) or "loop" in str(exc).lower() else exc.strerror
        raise UnsafeFileError(f"{refused}, which cannot be resolved ({reason}); refusing it") from None
    if not resolved.is_relative_to(folder):
        raise UnsafeFileError(f"{refused}, a link that leaves the model's folder; refusing to follow it")
    if not regular:
        raise BadModelError(f"{refused}, which is not a regular file")
    return resolved


def _data_range(info: dict[str, str], file: Path, tensor: onnx.TensorProto, path: Path) -> tuple[int, int]:
    """(offset, length) of the tensor's bytes, checked against the file and the tensor's own size."""
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise UnsafeFileError(f"{path}: tensor '{tensor.name}' has a malformed external-data offset/length") from None
    size = file.stat().st_size
    if length is None and 0 <= offset <= size:
        length = size - offset
    if offset < 0 or offset > size or length < 0 or offset + length > size:
        raise UnsafeFileError(
            f"{path}: tensor '{tensor.name}' reads bytes {offset}..{offset + (length or 0)} of '{file.name}', "
            f"which has only {size} bytes"
        )
    needed = tensor_bytes(tensor)
    if needed is not None and needed != length:
        raise BadModelError(
            f"{path}: tensor '{tensor.name}' needs {needed} bytes for its shape {list(tensor.dims)} "
            f"but its external data holds {length}"
        )
    return offset, length


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
