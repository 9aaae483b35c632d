"""Op-type registries: one handler per op type, never silently replaced.

Channel rules (fp_onnx/channel_ops.py), upstream and downstream surgery handlers
(fp_onnx/surgery/) are tables keyed by ONNX op type. `register` is how every
table gains an entry, so each refuses a second handler for the same op unless the
caller says `replace=True` (a vendor extension that means to override one).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

Handler = TypeVar("Handler", bound=Callable)


def register(table: dict[str, Handler], op_types: Iterable[str], handler: Handler, *, replace: bool,
             what: str) -> Handler:
    """Put `handler` in `table` for every op type; ValueError when one is taken and not `replace`."""
    for op_type in op_types:
        if op_type in table and not replace:
            raise ValueError(f"{what} for {op_type} is already registered; pass replace=True to override it")
        table[op_type] = handler
    return handler
