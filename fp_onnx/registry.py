"""Registries: one handler per key (an op type, a criterion or recipe name), never silently replaced.

Channel rules (fp_onnx/channel_ops.py), upstream and downstream surgery handlers
(fp_onnx/surgery/) are tables keyed by ONNX op type; ranking criteria
(fp_onnx/ranking/) and recovery recipes (fp_onnx/recipes/) are tables keyed by the
name the CLI exposes. `register` is how every table gains an entry, so each refuses
a second handler for the same key unless the caller says `replace=True` (a vendor
extension that means to override one); `lookup` is how a user's name is found.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from fp_onnx.errors import BadOptionError

Handler = TypeVar("Handler", bound=Callable)


def register(table: dict[str, Handler], op_types: Iterable[str], handler: Handler, *, replace: bool,
             what: str) -> Handler:
    """Put `handler` in `table` for every op type; ValueError when one is taken and not `replace`."""
    for op_type in op_types:
        if op_type in table and not replace:
            raise ValueError(f"{what} for {op_type} is already registered; pass replace=True to override it")
        table[op_type] = handler
    return handler


def lookup(table: dict[str, Handler], name: str, flag: str) -> Handler:
    """The entry `name`; a one-line BadOptionError naming `flag` and the choices when there is none."""
    if name not in table:
        raise BadOptionError(f"{flag} {name}: choose one of {', '.join(sorted(table))}")
    return table[name]
