"""Fine-pruning (paper §3.3): prune the dormant channels, then fine-tune what is left.

Pruning alone is beaten by the pruning-aware attack (the backdoor lives in channels
that clean data also uses) and fine-tuning alone leaves backdoor channels that
clean data never activates untouched (their gradients are zero). Fine-pruning does
both, in that order, and measures every stage the way the paper's Table 1 does.

The defender's clean data is split once, deterministically, into a fine-tuning part
and a held-out validation part; pruning ranks and stops on the validation part,
fine-tuning stops early on it. Clean accuracy in the results table is measured on
`test` data when the user gives it, otherwise on the validation part (the report
says which). Triggered data is only ever measured, never used to decide anything.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import onnx

from fp_onnx.data import Dataset, split_dataset
from fp_onnx.errors import BadDataError, BadOptionError
from fp_onnx.evaluate import Measurement, measure
from fp_onnx.finetune import FineTuneConfig, FineTuneResult, fine_tune
from fp_onnx.guard import max_accuracy_drop_for
from fp_onnx.metrics import AttackSpec
from fp_onnx.prune import PruneOutcome, StopRule, prune_defense
from fp_onnx.prune_point import PrunePoint
from fp_onnx.runtime import RuntimeOptions
from fp_onnx.signature import signature_differences

STRATEGIES = ("none", "pruning", "fine-tuning", "fine-pruning")


@dataclass(frozen=True)
class DefenseConfig:
    rule: StopRule = StopRule()
    finetune: FineTuneConfig = FineTuneConfig()
    val_fraction: float = 0.2
    """Share of --data held out for validation when no separate --val is given."""
    seed: int = 0
    baselines: bool = False
    """Also run pruning-only and fine-tuning-only, for the paper's Table 1 row."""
    batch_size: int = 64
    max_accuracy_drop: float | None = None
    """What the result may lose in clean validation accuracy against the vendor (None: the threshold rule's value,
    else 0.04). Fine-tuning that makes a usable model drop below it recovers at a lower learning rate."""

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise BadOptionError(f"--val-fraction {self.val_fraction}: must lie strictly between 0 and 1")
        max_accuracy_drop_for(self.max_accuracy_drop, self.rule)

    @property
    def accuracy_drop_limit(self) -> float:
        return max_accuracy_drop_for(self.max_accuracy_drop, self.rule)


@dataclass(frozen=True)
class DefenseData:
    """The data a run was judged on, kept for checking the written files the same way."""

    val: Dataset
    """Clean validation data (ranking, stopping, early stopping, the guard)."""
    scored: Dataset
    """Clean data of the results table: the test data when given, else `val`."""
    triggered: Dataset | None = None
    attack: AttackSpec | None = None


@dataclass
class DefenseResult:
    defended: onnx.ModelProto
    prune: PruneOutcome
    finetune: FineTuneResult
    table: dict[str, Measurement]
    evaluated_on: str
    split: dict
    seconds: dict[str, float]
    signature_problems: list[str]
    finetune_only: FineTuneResult | None = None
    models: dict[str, onnx.ModelProto] = field(default_factory=dict, repr=False)
    data: DefenseData | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {
            "evaluated_on": self.evaluated_on,
            "split": self.split,
            "table": {name: row.to_dict() for name, row in self.table.items()},
            "prune": self.prune.to_dict(),
            "prune_curve": self.prune.curve.to_dict(),
            "finetune": self.finetune.to_dict(),
            "finetune_only": None if self.finetune_only is None else self.finetune_only.to_dict(),
            "seconds": self.seconds,
            "signature_check": {"matches_vendor": not self.signature_problems, "differences": self.signature_problems},
        }


def fine_prune(
    model: onnx.ModelProto,
    point: PrunePoint,
    clean: Dataset,
    *,
    val: Dataset | None = None,
    test: Dataset | None = None,
    triggered: Dataset | None = None,
    attack: AttackSpec | None = None,
    config: DefenseConfig = DefenseConfig(),
    options: RuntimeOptions = RuntimeOptions(),
    progress: bool = False,
) -> DefenseResult:
    """Profile → prune → fine-tune → evaluate, with the optional pruning/fine-tuning baselines."""
    if clean.labels is None:
        raise BadDataError(f"{clean.source}: fine-pruning needs labels ('y') in the clean data")
    separate_validation = val is not None
    train, val = (clean, val) if separate_validation else split_dataset(clean, config.val_fraction, config.seed)
    scored = test if test is not None else val
    evaluate = lambda m: measure(m, scored, triggered=triggered, attack=attack, options=options,  # noqa: E731
                                 batch_size=config.batch_size)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    table = {"none": evaluate(model)}
    pruned = prune_defense(model, point, val, config.rule, triggered=triggered, attack=attack, options=options,
                           batch_size=config.batch_size, progress=progress)
    seconds["prune"] = time.perf_counter() - clock
    models = {"pruning": pruned.surgery.model}
    if config.baselines:
        table["pruning"] = evaluate(pruned.surgery.model)
    clock = time.perf_counter()
    floor = pruned.curve.clean_accuracy[0] - config.accuracy_drop_limit  # the vendor's validation accuracy minus it
    tuned = fine_tune(pruned.surgery.model, train, val, config.finetune, accuracy_floor=floor, progress=progress)
    seconds["fine_tune"] = time.perf_counter() - clock
    finetune_only = None
    if config.baselines:
        clock = time.perf_counter()
        finetune_only = fine_tune(model, train, val, config.finetune, accuracy_floor=floor, progress=progress)
        seconds["fine_tune_only_baseline"] = time.perf_counter() - clock
        table["fine-tuning"] = evaluate(finetune_only.model)
        models["fine-tuning"] = finetune_only.model
    table["fine-pruning"] = evaluate(tuned.model)
    models["fine-pruning"] = tuned.model
    return DefenseResult(
        defended=tuned.model,
        prune=pruned,
        finetune=tuned,
        table={name: table[name] for name in STRATEGIES if name in table},
        evaluated_on="test" if test is not None else "validation",
        split={"fine_tune_samples": len(train), "validation_samples": len(val),
               "separate_validation": separate_validation,
               "val_fraction": None if separate_validation else config.val_fraction, "seed": config.seed},
        seconds=seconds,
        signature_problems=signature_differences(model, tuned.model),
        finetune_only=finetune_only,
        models=models,
        data=DefenseData(val, scored, triggered, attack),
    )
