"""Shipping a model file: written, read back, checked, and only then given its result name.

A result name (`defended.onnx`, `pruned.onnx`, `finetuned.onnx`) promises that the
file passed the guard. So a model is first written as `<name>.rejected`, a name that
no `*.onnx` glob or model server picks up; that very file is loaded back and judged;
only a model that passes is renamed to `<name>`. At every moment, also after a crash
half-way, a file under a result name is one that passed, and a failed run leaves its
model only as `<name>.rejected`, for a user who deliberately wants it.

`retire` removes both names left by an earlier run in the same output folder before
a new run writes anything, so a stale `defended.onnx` cannot survive a failed run.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import onnx

from fp_onnx.data import Dataset
from fp_onnx.errors import BadModelError, ModelRejectedError
from fp_onnx.guard import CleanCheck, GuardResult, guard_written_model
from fp_onnx.outputs import save_model
from fp_onnx.runtime import RuntimeOptions

REJECTED_SUFFIX = ".rejected"

Judgement = TypeVar("Judgement")


def rejected_name(name: str) -> str:
    return name + REJECTED_SUFFIX


def retire(out_dir: Path, names: list[str]) -> None:
    """Remove `<name>` and `<name>.rejected` (and their external-data files) left by an earlier run."""
    for name in names:
        for stale in (name, rejected_name(name), f"{name}.data"):
            (out_dir / stale).unlink(missing_ok=True)


def ship_model(model: onnx.ModelProto, out_dir: Path, name: str,
               judge: Callable[[Path], Judgement], passed: Callable[[Judgement], bool]) -> tuple[Path, Judgement]:
    """Write `model` as `<name>.rejected`, judge that file, rename it to `<name>` if `passed(judgement)`.

    Returns the path the model ended up at and the judgement. A file that does not
    even load back is a rejection too (ModelRejectedError), never a "bad vendor model".
    An older `<name>` is removed first: whatever happens next, it did not pass this time.
    """
    (out_dir / name).unlink(missing_ok=True)
    candidate = save_model(model, out_dir / rejected_name(name), data_name=f"{name}.data")
    try:
        judgement = judge(candidate)
    except BadModelError as exc:
        raise ModelRejectedError(f"{name} rejected: the written file does not load back ({exc}); "
                                 f"kept as {candidate.name}") from None
    if not passed(judgement):
        return candidate, judgement
    final = out_dir / name
    os.replace(candidate, final)
    return final, judgement


def ship_guarded(model: onnx.ModelProto, out_dir: Path, name: str, vendor: CleanCheck, data: Dataset,
                 max_accuracy_drop: float, *, options: RuntimeOptions = RuntimeOptions(),
                 batch_size: int = 64) -> tuple[Path, GuardResult]:
    """Ship a model whose only condition is the clean-accuracy guard (pruned.onnx, finetuned.onnx)."""

    def judge(path: Path) -> GuardResult:
        return guard_written_model(path, vendor, data, max_accuracy_drop, name=name, options=options,
                                   batch_size=batch_size)[0]

    return ship_model(model, out_dir, name, judge, lambda guard: guard.passed)
