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
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import onnx

from fp_onnx.data import Dataset, split_dataset
from fp_onnx.errors import BadDataError, BadOptionError
from fp_onnx.evaluate import Measurement, measure
from fp_onnx.finetune import FineTuneConfig, FineTuneResult, fine_tune, torch_device
from fp_onnx.guard import CleanCheck, check_clean, max_accuracy_drop_for
from fp_onnx.metrics import AttackSpec
from fp_onnx.profile import profile_model
from fp_onnx.prune import PruneOutcome, StopRule, channels_to_prune, prune_defense
from fp_onnx.prune_point import PrunePoint, find_prune_points
from fp_onnx.ranked_prune import prune_ranked, ranked_prune_defense
from fp_onnx.ranking import RankingInputs, rank_channels
from fp_onnx.runtime import RuntimeOptions
from fp_onnx.signature import signature_differences
from fp_onnx.surgery import prune_channels
from fp_onnx.warp_check import WarpCheck, check_for_warp_backdoor

STRATEGIES = ("none", "pruning", "fine-tuning", "fine-pruning")


@dataclass(frozen=True)
class DefenseConfig:
    rule: StopRule = StopRule()
    finetune: FineTuneConfig = FineTuneConfig()
    """Its `recipe` is the recover step (`fp_onnx.recipes`)."""
    rank: str = "activation"
    """The ranking criterion (`fp_onnx.ranking`); 'activation' is the paper's, on the chosen prune point."""
    method: str = "paper"
    """The name of the method (`fp_onnx.methods`) these settings came from, for the report."""
    second_recipes: tuple[str, ...] = ()
    """Recipes tried in turn on the same pruned model as the first one, when the one before ends below the
    floor, before any fallback recipe (gentler settings of the same unlearning)."""
    fallback_recipes: tuple[str, ...] = ()
    """Recipes tried in turn, from the pruned model again, when the one before ends below the floor."""
    fallback_rule: StopRule | None = None
    """A looser stop rule for the model the fallback recipes start from first (None: the same pruned model).
    When the first recipe cannot be afforded, the accepted clean-accuracy cost goes to pruning instead, the
    paper's mechanism, on the curve already measured (`recovery_attempts`)."""
    warp_recipes: tuple[str, ...] = ()
    """Recipes tried first, on the method's own pruning, when the warp check (`fp_onnx.warp_check`) flags a class:
    they unlearn warps towards it. Empty: no check."""
    prune_on_all_clean_data: bool = False
    """Rank and stop on the whole of --data (fine-tuning part included) instead of its validation part. The
    paper uses validation data; with a small defender set the validation part is a few dozen samples, too few
    to tell a dormant channel from one that merely did not fire on them."""
    val_fraction: float = 0.2
    """Share of --data held out for validation when no separate --val is given."""
    seed: int = 0
    baselines: bool = False
    """Also run pruning-only and fine-tuning-only, for the paper's Table 1 row."""
    batch_size: int = 64
    max_accuracy_drop: float | None = None
    """What the result may lose in clean validation accuracy against the vendor (None: the method's accepted cost
    and the threshold rule's value, see `fp_onnx.guard.max_accuracy_drop_for`). Fine-tuning that makes a usable
    model drop below it recovers at a lower learning rate."""
    method_accuracy_drop: float | None = None
    """The clean-accuracy cost the defense method accepts when `max_accuracy_drop` is not given (the
    `recommended` method prunes within 1 point but accepts 2 for removing a backdoor)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise BadOptionError(f"--val-fraction {self.val_fraction}: must lie strictly between 0 and 1")
        max_accuracy_drop_for(self.max_accuracy_drop, self.rule)

    def accuracy_drop_limit(self, validation_samples: int | None = None) -> float:
        return max_accuracy_drop_for(self.max_accuracy_drop, self.rule, validation_samples, self.method_accuracy_drop)


@dataclass(frozen=True)
class DefenseData:
    """The data a run was judged on, kept for checking the written files the same way."""

    val: Dataset
    """Clean validation data (ranking, stopping, early stopping, the guard)."""
    scored: Dataset
    """Clean data of the results table: the test data when given, else `val`."""
    vendor: CleanCheck
    """The vendor's model on `val`, measured once: fine-tuning's floor and the guard on the written
    files both compare against it."""
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
    method: dict = field(default_factory=dict)
    """Method name, criterion, recipe and their resolved settings (the report records them)."""
    max_accuracy_drop: float | None = None
    """The clean-accuracy limit fine-tuning's floor used; the guard on the written file uses the same."""

    def to_dict(self) -> dict:
        return {
            "evaluated_on": self.evaluated_on,
            "split": self.split,
            "table": {name: row.to_dict() for name, row in self.table.items()},
            "method": self.method,
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
    stop_data = clean if config.prune_on_all_clean_data and not separate_validation else val
    pruned = prune_step(model, point, train, stop_data, config, triggered=triggered, attack=attack, options=options,
                        progress=progress)
    seconds["prune"] = time.perf_counter() - clock
    clock = time.perf_counter()
    max_drop = config.accuracy_drop_limit(len(val))
    # The vendor on the validation split, as the guard on the written file will compare (the prune curve's
    # start is an accuracy on all the clean data when pruning was measured there, training part included).
    vendor = check_clean(model, val, options=options, batch_size=config.batch_size)
    floor = vendor.accuracy - max_drop
    warp = check_for_warp_backdoor(pruned.surgery.model, train, config.seed, torch_device(config.finetune.device),
                                   progress=progress) if config.warp_recipes else None
    tuned, attempts, pruned = recover_step(model, point, pruned, train, val, config, floor, progress, warp)
    seconds["fine_tune"] = time.perf_counter() - clock
    finetune_only = None
    if config.baselines:
        table["pruning"] = evaluate(pruned.surgery.model)  # the pruning the shipped model started from
        clock = time.perf_counter()
        finetune_only = fine_tune(model, train, val, config.finetune, accuracy_floor=floor, progress=progress)
        seconds["fine_tune_only_baseline"] = time.perf_counter() - clock
        table["fine-tuning"] = evaluate(finetune_only.model)
    table["fine-pruning"] = evaluate(tuned.model)
    models = {"pruning": pruned.surgery.model, "fine-pruning": tuned.model}
    if finetune_only is not None:
        models["fine-tuning"] = finetune_only.model
    return DefenseResult(
        defended=tuned.model,
        prune=pruned,
        finetune=tuned,
        table={name: table[name] for name in STRATEGIES if name in table},
        evaluated_on="test" if test is not None else "validation",
        split={"fine_tune_samples": len(train), "validation_samples": len(val),
               "separate_validation": separate_validation,
               "val_fraction": None if separate_validation else config.val_fraction, "seed": config.seed,
               "by_groups": not separate_validation and clean.groups is not None},
        seconds=seconds,
        signature_problems=signature_differences(model, tuned.model),
        finetune_only=finetune_only,
        models=models,
        data=DefenseData(val, scored, vendor, triggered, attack),
        max_accuracy_drop=max_drop,
        method={"name": config.method, "rank": config.rank, "recover": tuned.config.get("recipe"),
                "recover_attempts": attempts, "warp_check": None if warp is None else warp.to_dict(),
                "recover_settings": {k: tuned.config.get(k) for k in ("lr", "epochs", "patience", "keep",
                                                                       "weight_decay", "optimizer")}},
    )


def recover_step(vendor: onnx.ModelProto, point: PrunePoint, pruned: PruneOutcome, train: Dataset, val: Dataset,
                 config: DefenseConfig, floor: float, progress: bool, warp: WarpCheck | None = None
                 ) -> tuple[FineTuneResult, list[dict], PruneOutcome]:
    """Fine-tune with each (recipe, pruning) of `recovery_attempts` in turn until one ends at or above `floor`
    without failing. Returns the result kept (the last one tried when none passes: the guard on the written
    file refuses it), one line per attempt, and the pruning the kept result started from. The `vendor` model
    is what distilling recipes take clean behaviour from; `warp` is the warp check's verdict, when it ran."""
    attempts = []
    target = None if warp is None else warp.suspect_class
    for recipe, start in recovery_attempts(vendor, point, pruned, config, warp_suspected=target is not None):
        tuned = fine_tune(start.surgery.model, train, val, replace(config.finetune, recipe=recipe, warp_target=target),
                          accuracy_floor=floor, progress=progress, reference=vendor)
        usable = tuned.failure is None and tuned.best_val_accuracy >= floor - 1e-12
        attempts.append({"recipe": recipe, "channels_pruned": start.channels_pruned,
                         "best_val_accuracy": tuned.best_val_accuracy, "failure": tuned.failure,
                         "below_floor": not usable, "recoveries": len(tuned.recoveries),
                         "kept": tuned.describe_kept()})
        if usable:
            break
    return tuned, attempts, start


def attempt_plan(config: DefenseConfig, warp_suspected: bool = False) -> list[tuple[str, bool]]:
    """Every (recipe, on the deeper pruning) pair a defense may try, in order: the warp recipes when the warp check
    flagged a class, the first recipe and the second ones on the method's own pruning; then, with a
    `fallback_rule`, every fallback recipe on the deeper pruning, and every fallback recipe on the method's own
    pruning. `recovery_attempts` follows it, and the benchmark reads from it which recipes a method tries."""
    first = (*(config.warp_recipes if warp_suspected else ()), config.finetune.recipe, *config.second_recipes)
    plan = [(recipe, False) for recipe in first]
    if config.fallback_rule is not None:
        plan += [(recipe, True) for recipe in config.fallback_recipes]
    return plan + [(recipe, False) for recipe in config.fallback_recipes]


def recovery_attempts(vendor: onnx.ModelProto, point: PrunePoint, pruned: PruneOutcome, config: DefenseConfig,
                      warp_suspected: bool = False) -> Iterator[tuple[str, PruneOutcome]]:
    """The (recipe, pruning) pairs of `attempt_plan` to try, in order, the deeper pruning cut only when it is
    needed (and skipped when it cuts no more than `pruned`). Deeper pruning is worth a try where unlearning was
    refused, never the reason a model that the gentle recipes keep usable is refused: should no fallback keep
    clean accuracy there, they run again on `pruned`."""
    deeper = None
    for recipe, on_deeper in attempt_plan(config, warp_suspected):
        if not on_deeper:
            yield recipe, pruned
            continue
        if deeper is None:
            deeper = prune_deeper(vendor, point, pruned, config.fallback_rule)
        if deeper is not pruned:
            yield recipe, deeper


def prune_deeper(vendor: onnx.ModelProto, point: PrunePoint, outcome: PruneOutcome, rule: StopRule) -> PruneOutcome:
    """The `vendor` model cut along `outcome`'s ranking at the looser `rule`, read off the curve already
    measured (never fewer channels than `outcome`)."""
    count = max(outcome.channels_pruned, channels_to_prune(outcome.curve, rule))
    if count == outcome.channels_pruned:
        return outcome
    surgery = (prune_channels(vendor, point, outcome.curve.order[:count]) if outcome.ranking is None
               else prune_ranked(vendor, outcome.ranking, count))
    return replace(outcome, rule=rule, channels_pruned=count, surgery=surgery)


def prune_step(model: onnx.ModelProto, point: PrunePoint, train: Dataset, val: Dataset, config: DefenseConfig, *,
               triggered: Dataset | None, attack: AttackSpec | None, options: RuntimeOptions,
               progress: bool) -> PruneOutcome:
    """Rank, cut by the stop rule. The paper's criterion runs its exact one-layer path (every step of the
    curve); any other criterion ranks with the fine-tuning part of the clean data (it learns from it) and
    stops on the validation part, like the paper's."""
    if config.rank == "activation":
        return prune_defense(model, point, val, config.rule, triggered=triggered, attack=attack, options=options,
                             batch_size=config.batch_size, progress=progress)
    profile = profile_model(model, point, val, triggered=triggered, attack=attack, options=options,
                            batch_size=config.batch_size, progress=progress)
    inputs = RankingInputs(model, tuple(find_prune_points(model)), point, train, options=options,
                           batch_size=config.batch_size, device=config.finetune.device, seed=config.seed,
                           progress=progress)
    ranking = rank_channels(config.rank, inputs)
    return ranked_prune_defense(model, ranking, val, config.rule, profile, triggered=triggered, attack=attack,
                                options=options, batch_size=config.batch_size)
