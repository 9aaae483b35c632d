"""The one exception family of fp-onnx.

The library raises these and never prints or exits; the CLI turns any of them
into a single `error: ...` line and a non-zero exit code. Messages name the
file, node or tensor involved and say what to do next.
"""
from __future__ import annotations


def first_line(error: BaseException | str) -> str:
    """The first non-empty line of a library's error, for our one-line messages (its class name when
    the error says nothing)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else error.__class__.__name__


class FpOnnxError(Exception):
    """Base class: anything the user can fix by changing an input or a flag."""

    exit_code = 1


class BadModelError(FpOnnxError):
    """The ONNX file is missing, unreadable, invalid, or not a classifier we can defend."""

    exit_code = 3


class UnsafeFileError(BadModelError):
    """A file tries something an untrusted input must not do (path traversal, pickles, size)."""

    exit_code = 4


class ResourceLimitError(UnsafeFileError):
    """An input needs more than a cap allows: memory (--max-memory) or size (--max-model-size)."""


class UnsupportedOpError(BadModelError):
    """An op (or op/opset pair) that a pipeline step has no handler for."""

    exit_code = 5


class BadDataError(FpOnnxError):
    """Data that cannot be read, or does not fit the model's input."""

    exit_code = 6


class BadOptionError(FpOnnxError):
    """A flag value or a combination of flags that makes no sense."""

    exit_code = 2


class ModelRejectedError(FpOnnxError):
    """The model we wrote failed the clean-accuracy guard (non-finite outputs or too large a drop): not shipped."""

    exit_code = 7


class BackdoorRemainsError(FpOnnxError):
    """The defense ran and the model is usable, but attack success is still above --max-attack-success."""

    exit_code = 8
