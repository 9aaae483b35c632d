"""The clean-accuracy guard: is the model file we wrote fit to ship?

Whatever happened in memory, what a user deploys is the file on disk. So the guard
loads the *written* file back through the same untrusted-model path as any vendor
file (`fp_onnx.loading.load_model`), runs it in onnxruntime on the clean validation
data, and demands two things:

* every output is finite (a NaN or inf anywhere means the weights are broken, even
  when the arg-max happens to look right);
* clean accuracy is at most `max_accuracy_drop` (absolute, like the prune threshold)
  below the vendor model's, measured on the same data the same way.

A model that fails is not shipped under its result name (`fp_onnx.shipping`), and
the CLI exits with `ModelRejectedError`'s code.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import onnx

from fp_onnx.confidence import Interval, paired_difference_interval
from fp_onnx.data import Dataset, check_fits
from fp_onnx.errors import BadDataError, BadOptionError, ModelRejectedError
from fp_onnx.inference import ModelRunner, predictions
from fp_onnx.loading import DEFAULT_MAX_BYTES, load_model
from fp_onnx.runtime import RuntimeOptions

DEFAULT_MAX_ACCURACY_DROP = 0.04
"""The paper's stop threshold: what the defense may cost in clean accuracy (absolute)."""


VALIDATION_REMEDY = "more validation data (--val, --val-fraction) would bound it"
"""How a `fine-prune` or `finetune` user bounds the cost (`GuardResult.unbounded_cost`)."""

RESOLUTION_SAMPLES = 2
"""A default limit is never finer than this many validation samples (see `max_accuracy_drop_for`)."""


def max_accuracy_drop_for(given: float | None, rule=None, validation_samples: int | None = None,
                          method_limit: float | None = None) -> float:
    """The guard's limit: `given`, else the larger of the limit the defense method accepts
    (`method_limit`) and the threshold a `StopRule` stopped at, else that threshold, else 0.04.

    A default limit (none given) is widened to `RESOLUTION_SAMPLES / validation_samples`
    when that is larger: on a validation split of 34 samples one sample is 2.9 points, so
    a 2-point limit would reject a model for one unlucky sample, which is noise, not harm.
    A limit the user gives is kept as given. Fine-tuning's floor and the guard on the
    written file use the same value, so a result that trained above the floor passes."""
    if given is not None:
        if not 0.0 <= given <= 1.0:
            raise BadOptionError(f"--max-accuracy-drop {given}: must lie in [0, 1]")
        return given
    threshold = rule.value if rule is not None and rule.kind == "threshold" else None
    if method_limit is not None:
        limit = max(method_limit, threshold or 0.0)  # never stricter than what pruning was allowed to cost
    else:
        limit = threshold if threshold is not None else DEFAULT_MAX_ACCURACY_DROP
    if validation_samples:
        limit = max(limit, RESOLUTION_SAMPLES / validation_samples)
    return limit


@dataclass(frozen=True)
class CleanCheck:
    """Clean accuracy of one model, with the number of samples whose outputs were not finite."""

    accuracy: float
    samples: int
    nonfinite_samples: int
    correct: tuple[bool, ...] | None = field(default=None, repr=False, compare=False)
    """Which samples were right, in the data's order: what pairs two checks on the same data
    (`GuardResult.accuracy_drop_interval`)."""

    @property
    def finite(self) -> bool:
        return self.nonfinite_samples == 0

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "samples": self.samples, "nonfinite_samples": self.nonfinite_samples}


def check_clean(model: onnx.ModelProto, data: Dataset, *, options: RuntimeOptions = RuntimeOptions(),
                batch_size: int = 64) -> CleanCheck:
    """Run `model` on labelled `data`; outputs with NaN/inf count as wrong and are counted."""
    if data.labels is None:
        raise BadDataError(f"{data.source}: checking clean accuracy needs labels ('y')")
    if len(data) == 0:
        raise BadDataError(f"{data.source}: holds no samples")
    runner = ModelRunner(model, options=options)
    check_fits(data, runner.input)
    correct, nonfinite = [], 0
    for batch in data.batches(runner.batch_size(batch_size)):
        scores = runner.run(batch.x)[runner.output]
        finite = np.isfinite(scores.reshape(len(scores), -1)).all(axis=1)
        correct.extend(bool(c) for c in (predictions(scores) == batch.y) & finite)
        nonfinite += int((~finite).sum())
    return CleanCheck(sum(correct) / len(data), len(data), nonfinite, tuple(correct))


@dataclass(frozen=True)
class GuardResult:
    """The written file measured against the vendor model on the same clean data."""

    file: str
    vendor: CleanCheck
    written: CleanCheck
    max_accuracy_drop: float

    @property
    def accuracy_drop(self) -> float:
        return self.vendor.accuracy - self.written.accuracy

    @property
    def passed(self) -> bool:
        return self.written.finite and self.accuracy_drop <= self.max_accuracy_drop + 1e-12

    @cached_property
    def accuracy_drop_interval(self) -> Interval | None:
        """The 95 % interval of the drop (`fp_onnx.confidence`), or None when the two checks are not paired
        per sample. The guard decides on `accuracy_drop`; this says how sure that number is. Computed once:
        the verdict, its caveat and the JSON all read it."""
        vendor, written = self.vendor.correct, self.written.correct
        if vendor is None or written is None or len(vendor) != len(written):
            return None
        return paired_difference_interval(vendor, written)

    def unbounded_cost(self, remedy: str = VALIDATION_REMEDY, data: str = "validation") -> str | None:
        """What to tell a user whose `data` samples cannot rule out a drop above the limit, ending with `remedy`
        (None when they can, or when the drop was not measured per sample)."""
        interval = self.accuracy_drop_interval
        if interval is None or interval.high <= self.max_accuracy_drop + 1e-12:
            return None
        return (f"{self.written.samples} {data} samples cannot rule out a clean-accuracy cost of up to "
                f"{interval.high:.3f} (95 %; limit {self.max_accuracy_drop:.3g}); {remedy}")

    def reasons(self) -> list[str]:
        """What failed and by how much, one phrase per failure (empty when it passed)."""
        reasons = []
        if not self.written.finite:
            reasons.append(f"{self.written.nonfinite_samples} of {self.written.samples} validation outputs "
                           f"are not finite (NaN/inf)")
        if self.accuracy_drop > self.max_accuracy_drop + 1e-12:
            reasons.append(f"clean accuracy {self.written.accuracy:.4f} is {self.accuracy_drop:.4f} below the "
                           f"vendor's {self.vendor.accuracy:.4f} (limit {self.max_accuracy_drop:g})")
        return reasons

    def error(self, kept_as: str, context: str = "") -> ModelRejectedError | None:
        """The one-line error for a failed guard, or None."""
        if self.passed:
            return None
        suffix = f"; {context}" if context else ""
        return ModelRejectedError(f"{self.file} rejected: {'; '.join(self.reasons())}{suffix}; kept as {kept_as}")

    def to_dict(self) -> dict:
        interval = self.accuracy_drop_interval
        return {"file": self.file, "passed": self.passed, "reasons": self.reasons(),
                "measured": {"vendor": self.vendor.to_dict(), "written": self.written.to_dict(),
                             "accuracy_drop": self.accuracy_drop,
                             "accuracy_drop_interval": None if interval is None else interval.to_dict()},
                "limits": {"max_accuracy_drop": self.max_accuracy_drop, "outputs_finite": True},
                "data": "clean validation data"}


def guard_written_model(path: str | os.PathLike, vendor: CleanCheck, data: Dataset, max_accuracy_drop: float, *,
                        name: str, options: RuntimeOptions = RuntimeOptions(), batch_size: int = 64,
                        max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[GuardResult, onnx.ModelProto]:
    """Load the file at `path` like any untrusted model and measure it against `vendor` (see module docstring).

    Returns the result and the model as loaded from disk (for further measurements of the same bytes).
    """
    written = load_model(path, max_bytes=max_bytes).model
    return GuardResult(name, vendor, check_clean(written, data, options=options, batch_size=batch_size),
                       max_accuracy_drop), written
