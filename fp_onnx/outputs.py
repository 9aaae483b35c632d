"""Write results so that a reader never sees a half-written file.

Everything fp-onnx writes (models, JSON, plots, HTML) goes to a temporary file in
the destination folder and is renamed over the final name only once complete;
`os.replace` is atomic on one filesystem. A crash or a bad input therefore leaves
either the previous file or none, never a truncated one. The finished file gets the
permissions any other tool would give it (0666 minus the umask), not the private
0600 of a temporary file: a defended model is usually served by another user.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from fp_onnx.errors import BadOptionError
from fp_onnx.loading import PROTOBUF_LIMIT
from fp_onnx.procfs import proc_field


def prepare_output_dir(path: str | os.PathLike) -> Path:
    """Create the output folder (and parents); refuse a path that is an existing file."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise BadOptionError(f"--out {folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadOptionError(f"--out {folder}: cannot create it ({exc.strerror})") from None
    return folder


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    final = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, final)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (/proc/self/status)."""
    value = proc_field("/proc/self/status", "Umask:")
    try:
        return int(value, 8) if value is not None else _set_and_restore_umask()
    except ValueError:
        return _set_and_restore_umask()


def _set_and_restore_umask() -> int:
    """Where /proc is missing: the classic set-and-restore (briefly changes the process umask)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    return write_text(path, json.dumps(payload, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Atomic wrapper for writers that insist on a file name (matplotlib's savefig)."""
    with atomic_path(path) as temporary:
        writer(temporary)
    return Path(path)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, data_name: str | None = None) -> Path:
    """Save a model atomically, inline when it fits in one protobuf.

    Models above 2 GiB keep their weights in `data_name` (default `<name>.data`) beside
    the file (the data file is written first, so the model never points at a missing file).
    """
    path = Path(path)
    if model.ByteSize() <= PROTOBUF_LIMIT:
        return write_bytes(path, model.SerializeToString())
    model = _copy(model)
    data_name = data_name or f"{path.name}.data"
    with atomic_path(path.parent / data_name) as temporary_data:
        onnx.external_data_helper.convert_model_to_external_data(model, location=temporary_data.name)
        onnx.external_data_helper.write_external_data_tensors(model, str(path.parent))
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = data_name
    return write_bytes(path, model.SerializeToString())


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy
