"""Load an untrusted vendor ONNX file, or refuse it with one clear reason.

A model from a vendor we cannot fully trust is parsed defensively:

* the file (and its external data) must stay under a size cap, so a hostile file
  cannot make us allocate without bound;
* external data may only come from regular files inside the model's own folder:
  absolute paths, `..` components and symlinks that resolve outside it are refused
  (the torch dynamo exporter's `model.onnx.data` next to the model is normal);
* the full ONNX checker and shape inference must pass;
* every op domain must be one onnxruntime can run (or a model-local function).

After `load_model` returns, later steps may rely on: shapes inferred, every node
named uniquely (vendor files sometimes leave names empty; we fill `<op_type>_<i>`),
and all external data held in memory.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from fp_onnx.errors import BadModelError, UnsafeFileError

DEFAULT_MAX_BYTES = 8 * 1024**3
"""Cap on the model file plus its external data (8 GiB); `--max-model-size` changes it."""

PROTOBUF_LIMIT = 2 * 1024**3 - 1
"""Above this size a ModelProto cannot be serialised in one piece (checker, onnxruntime)."""

ONNXRUNTIME_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training"})


@dataclass(frozen=True)
class LoadedModel:
    """A vendor model that passed every load-time check."""

    path: Path
    model: onnx.ModelProto
    sha256: str
    """SHA-256 of the .onnx file itself (external data files are hashed in `data_sha256`)."""
    data_sha256: dict[str, str]


def load_model(path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES) -> LoadedModel:
    """Parse, vet and prepare the ONNX model at `path` (see the module docstring)."""
    path = Path(path)
    _check_model_file(path, max_bytes)
    raw = path.read_bytes()
    model = _parse(raw, path)
    data_files = _vet_external_data(model, path, max_bytes - len(raw))
    if data_files:
        onnx.load_external_data_for_model(model, str(path.parent))
    _check_domains(model, path)
    model = _check_and_infer(model, path)
    _name_nodes(model.graph)
    return LoadedModel(
        path=path,
        model=model,
        sha256=hashlib.sha256(raw).hexdigest(),
        data_sha256={name: _sha256_file(file) for name, file in data_files.items()},
    )


def _check_model_file(path: Path, max_bytes: int) -> None:
    if not path.exists():
        raise BadModelError(f"{path}: no such file")
    if not path.is_file():
        raise BadModelError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size > max_bytes:
        raise UnsafeFileError(
            f"{path}: {size} bytes exceeds the size cap of {max_bytes} bytes; raise it with --max-model-size if you trust the file"
        )


def _parse(raw: bytes, path: Path) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise BadModelError(f"{path}: not an ONNX model ({exc.__class__.__name__}: {exc})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise BadModelError(f"{path}: not an ONNX model (no graph or an empty graph)")
    return model


def iter_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto a graph carries: initializers, sparse values, node attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from iter_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from iter_tensors(subgraph)


def _vet_external_data(model: onnx.ModelProto, path: Path, budget: int) -> dict[str, Path]:
    """Check every external-data reference; return {location: resolved file} of those used."""
    folder = path.parent.resolve()
    files: dict[str, Path] = {}
    for tensor in iter_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        if location not in files:
            files[location] = _safe_data_file(location, folder, path, tensor.name)
        _check_data_range(info, files[location], tensor.name, path)
    total = sum(file.stat().st_size for file in files.values())
    if total > budget:
        raise UnsafeFileError(
            f"{path}: model plus external data exceed the size cap ({total} bytes of data); "
            "raise it with --max-model-size if you trust the file"
        )
    return files


def _safe_data_file(location: str, folder: Path, path: Path, tensor: str) -> Path:
    refused = f"{path}: tensor '{tensor}' refers to external data '{location}'"
    if not location:
        raise UnsafeFileError(f"{refused}, which names no file")
    candidate = Path(location)
    if candidate.is_absolute() or candidate.drive or ".." in candidate.parts or "\\" in location:
        raise UnsafeFileError(f"{refused} outside the model's folder; external data must sit beside the model")
    resolved = (folder / candidate).resolve()
    if not resolved.is_relative_to(folder):
        raise UnsafeFileError(f"{refused}, a link that leaves the model's folder; refusing to follow it")
    if not resolved.is_file():
        raise BadModelError(f"{refused}, which does not exist next to the model")
    return resolved


def _check_data_range(info: dict[str, str], file: Path, tensor: str, path: Path) -> None:
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise UnsafeFileError(f"{path}: tensor '{tensor}' has a malformed external-data offset/length") from None
    size = file.stat().st_size
    if offset < 0 or offset > size or (length is not None and (length < 0 or offset + length > size)):
        raise UnsafeFileError(
            f"{path}: tensor '{tensor}' reads bytes {offset}..{offset + (length or 0)} of '{file.name}', "
            f"which has only {size} bytes"
        )


def _check_domains(model: onnx.ModelProto, path: Path) -> None:
    local = {function.domain for function in model.functions}
    for node in model.graph.node:
        if node.domain not in ONNXRUNTIME_DOMAINS and node.domain not in local:
            raise BadModelError(
                f"{path}: node '{node.name or node.op_type}' uses op domain '{node.domain}', which onnxruntime "
                "cannot run; export the model with standard ONNX ops"
            )


def _check_and_infer(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    if model.ByteSize() > PROTOBUF_LIMIT:
        raise BadModelError(f"{path}: models above 2 GiB in memory are not supported yet")
    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise BadModelError(f"{path}: invalid ONNX model: {first_line}") from None


def _name_nodes(graph: onnx.GraphProto) -> None:
    """Give every node a unique, non-empty name: prune points and reports refer to nodes by name."""
    seen: set[str] = set()
    for index, node in enumerate(graph.node):
        name = node.name
        if not name or name in seen:
            name = f"{node.op_type}_{index}"
            while name in seen:
                name += "_"
            node.name = name
        seen.add(name)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: str | os.PathLike) -> str:
    """SHA-256 of a file, streamed (reports record the hash of every model they talk about)."""
    return _sha256_file(Path(path))
