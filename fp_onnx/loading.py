"""Load an untrusted vendor ONNX file, or refuse it with one clear reason.

A model from a vendor we cannot fully trust is parsed defensively:

* the file (and its external data) must stay under a size cap, so a hostile file
  cannot make us allocate without bound;
* external data may only come from regular files inside the model's own folder:
  absolute paths, `..` components and symlinks that resolve outside it are refused
  (the torch dynamo exporter's `model.onnx.data` next to the model is normal; see
  `fp_onnx.external_data`);
* the graph must have outputs, and its IR version and opsets must be ones the
  installed onnx and onnxruntime know (a future opset's ops have no defined meaning);
* the full ONNX checker and shape inference must pass;
* every op domain must be one onnxruntime can run (or a model-local function).

After `load_model` returns, later steps may rely on: shapes inferred (by onnx, and by
onnxruntime for contrib ops onnx has no schema for), every node named uniquely (vendor files sometimes leave names empty; we fill `<op_type>_<i>`),
and all external data held in memory.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from fp_onnx.errors import BadModelError, UnsafeFileError, first_line
from fp_onnx.external_data import read_external_data
from fp_onnx.runtime import runtime_value_info, unsupported_opsets

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
    _check_outputs(model, path)
    _check_opsets(model, path)
    data_files = read_external_data(model, path, max_bytes - len(raw))
    _check_domains(model, path)
    model = _check_and_infer(model, path)
    _complete_value_info(model)
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


def _check_outputs(model: onnx.ModelProto, path: Path) -> None:
    if not model.graph.output:
        raise BadModelError(f"{path}: the graph has no outputs; a classifier must output its class scores")


def _check_opsets(model: onnx.ModelProto, path: Path) -> None:
    """Refuse opsets newer than the installed onnx or onnxruntime know (their meaning is not defined yet)."""
    known = onnx.defs.C.schema_version_map()
    if model.ir_version > onnx.IR_VERSION:
        raise BadModelError(f"{path}: IR version {model.ir_version} is newer than onnx {onnx.__version__} "
                            f"supports ({onnx.IR_VERSION}); upgrade onnx or re-export the model")
    for opset in model.opset_import:
        domain = "" if opset.domain == "ai.onnx" else opset.domain
        if domain in known and not 1 <= opset.version <= known[domain][1]:
            raise BadModelError(
                f"{path}: declares opset {opset.version} of domain '{opset.domain or 'ai.onnx'}'; onnx "
                f"{onnx.__version__} knows opsets 1..{known[domain][1]}; re-export the model with a released opset"
            )
    problem = unsupported_opsets(model)
    if problem:
        raise BadModelError(f"{path}: {problem}; re-export the model with an older opset or upgrade onnxruntime")


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
    # The vendor's value_info is a claim, not a fact: a wrong one would mislead prune points, memory
    # plans and graph cuts, so shapes are inferred afresh from the graph itself.
    del model.graph.value_info[:]
    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError, RuntimeError) as exc:
        # onnx's C++ checks raise ValueError/RuntimeError for some malformed protos (e.g. data type 999)
        raise BadModelError(f"{path}: invalid ONNX model: {first_line(exc)}") from None


def _complete_value_info(model: onnx.ModelProto) -> None:
    """Type the tensors onnx's inference could not (after a contrib op it has no schema for), from
    onnxruntime's own inference: cutting the graph at a prune point needs every tensor's type."""
    graph = model.graph
    typed = {value.name for value in [*graph.input, *graph.value_info, *graph.output]}
    missing = [name for node in graph.node for name in node.output if name and name not in typed]
    if missing:
        graph.value_info.extend(runtime_value_info(model, missing))


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
