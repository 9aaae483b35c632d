"""Measure a model the way the paper's Table 1 does: clean accuracy and attack success rate."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from fp_onnx.data import Dataset, check_fits, check_labels
from fp_onnx.errors import BadDataError
from fp_onnx.inference import ModelRunner, predictions
from fp_onnx.metrics import AttackSpec, accuracy, attack_samples, attack_success_rate
from fp_onnx.runtime import RuntimeOptions
from fp_onnx.signature import class_count


@dataclass(frozen=True)
class Measurement:
    clean_accuracy: float
    attack_success: float | None
    clean_samples: int
    triggered_samples: int
    attack_samples: int | None = None
    """The triggered samples a targeted attack success is a share of (None: untargeted, or not measured)."""

    def to_dict(self) -> dict:
        return asdict(self)


def predict(runner: ModelRunner, dataset: Dataset, batch_size: int) -> np.ndarray:
    check_fits(dataset, runner.input)
    if len(dataset) == 0:
        raise BadDataError(f"{dataset.source}: holds no samples")
    batches = dataset.batches(runner.batch_size(batch_size))
    return np.concatenate([predictions(runner.run(b.x)[runner.output]) for b in batches])


def measure(
    model: onnx.ModelProto,
    clean: Dataset,
    *,
    triggered: Dataset | None = None,
    attack: AttackSpec | None = None,
    options: RuntimeOptions = RuntimeOptions(),
    batch_size: int = 64,
) -> Measurement:
    """Clean accuracy on `clean` and, given triggered data, the attack success rate."""
    runner = ModelRunner(model, options=options)
    for dataset in (clean, triggered) if triggered is not None else (clean,):
        check_labels(dataset, class_count(model))
    clean_accuracy = accuracy(predict(runner, clean, batch_size), clean.labels)
    success, counted = None, None
    if triggered is not None and attack is not None:
        triggered_predictions = predict(runner, triggered, batch_size)
        success = attack_success_rate(attack, triggered_predictions, triggered.labels, triggered.targets, clean_accuracy)
        counted = attack_samples(attack, len(triggered), triggered.labels, triggered.targets)
    return Measurement(clean_accuracy, success, len(clean), 0 if triggered is None else len(triggered), counted)


def latency_ms(model: onnx.ModelProto, sample: np.ndarray, *, options: RuntimeOptions = RuntimeOptions(),
               runs: int = 30) -> float:
    """Median onnxruntime latency of one batch (`sample`), in milliseconds, after a warm-up."""
    runner = ModelRunner(model, options=options)
    runner.run(sample)
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.run(sample)
        timings.append((time.perf_counter() - start) * 1000)
    return float(np.median(timings))
