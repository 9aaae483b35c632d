"""Defense methods: named combinations of a ranking criterion, a stop threshold and recovery recipes.

`fp-onnx fine-prune --method NAME` picks one; `--rank`, `--recover` and `--threshold`
override its parts. `paper` is the paper's fine-pruning exactly (§3.3: mean activation
of the last conv layer, 4-point threshold, fine-tuning with SGD at lr 0.001 and early
stopping), kept so its numbers stay reproducible. `recommended`, the default, is the
combination that measured best across the model zoo (docs/results.md,
`bench/reproduce_paper.py`); docs/decisions.md says why it was chosen.

A method may list more than one recipe: the first is tried, and when its result falls
below the clean-accuracy floor (after its own learning-rate back-offs), the next one
starts again from the pruned model. Stronger recipes unlearn more but are less stable
on some vendor graphs (raw 0-255 inputs, small defender sets); the fallback keeps the
defense usable there, and the report says which recipe produced the shipped model.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from fp_onnx.errors import BadOptionError
from fp_onnx.ranking import find_criterion
from fp_onnx.recipes import find_recipe


@dataclass(frozen=True)
class Method:
    name: str
    rank: str
    recover: tuple[str, ...]
    """Recipes in the order they are tried (a fallback only when the one before fails the floor)."""
    threshold: float
    """Default stop threshold of the pruning step (absolute drop of clean validation accuracy)."""
    summary: str
    prune_on_all_clean_data: bool = False
    """Measure the prune curve on all of --data, not only its validation part (see DefenseConfig)."""
    max_accuracy_drop: float | None = None
    """The clean-accuracy cost accepted for the whole defense when the user gives none (None: the threshold)."""
    fallback_threshold: float | None = None
    """Stop threshold of the pruning the fallback recipes start from, read off the same prune curve (None: they
    start from the same pruned model). Only while the stop rule is the method's own."""
    same_pruning: int = 1
    """How many of the first `recover` recipes start from the method's own pruning (the unlearning recipes); the
    rest are the fallbacks, which start from the `fallback_threshold` pruning first."""
    warp_recipes: tuple[str, ...] = ()
    """Recipes tried before `recover`, on the method's own pruning, when the warp check (`fp_onnx.warp_check`)
    flags a class; empty: the method does not check."""

    def to_dict(self) -> dict:
        return {"name": self.name, "rank": self.rank, "recover": list(self.recover), "threshold": self.threshold,
                "summary": self.summary, "prune_on_all_clean_data": self.prune_on_all_clean_data,
                "max_accuracy_drop": self.max_accuracy_drop, "fallback_threshold": self.fallback_threshold,
                "same_pruning": self.same_pruning, "warp_recipes": list(self.warp_recipes)}


METHODS: dict[str, Method] = {
    "paper": Method("paper", "activation", ("paper",), 0.04,
                    "the paper's fine-pruning: prune the last conv layer by mean activation within 4 points, "
                    "fine-tune at lr 0.001 with early stopping"),
    "recommended": Method("recommended", "activation", ("adversarial", "adversarial-patch-small", "cosine", "paper"),
                          0.01,
                          "prune the channels of the last conv layer that cost (almost) no clean accuracy on all the "
                          "clean data, then unlearn universal perturbations with distillation from the vendor model, "
                          "failing that more gently (smaller perturbations and small patches, capped pull, lower rate, "
                          "distillation of the pruned model on clean and mixed inputs, twice the epochs, the mean of "
                          "the second half's weights); where both cost clean accuracy, prune up to 2 points instead "
                          "and fine-tune with a cosine schedule, failing that the paper's way; where a small warp sends "
                          "inputs to one class far more easily than to the others, unlearn warps towards it first",
                          # prune only what is free (1 point), accept the 2 points for unlearning;
                          # when unlearning cannot be afforded, spend those 2 points on pruning instead
                          prune_on_all_clean_data=True, max_accuracy_drop=0.02, fallback_threshold=0.02,
                          same_pruning=2,
                          # the one backdoor shape the unlearning above misses, only where a check finds it
                          warp_recipes=("adversarial-warp",)),
}
DEFAULT_METHOD = "recommended"


def resolve_method(name: str | None, rank: str | None = None, recover: str | None = None) -> Method:
    """The method `name` (default: DEFAULT_METHOD) with `rank` / `recover` overriding its parts
    (a recipe given by the user replaces the method's whole cascade)."""
    name = name or DEFAULT_METHOD
    if name not in METHODS:
        raise BadOptionError(f"--method {name}: choose one of {', '.join(METHODS)}")
    base = METHODS[name]
    if rank is not None:
        find_criterion(rank)
    if recover is not None:
        find_recipe(recover)
    rank, recipes = rank or base.rank, (recover,) if recover else base.recover
    if rank == base.rank and recipes == base.recover:
        return base
    return Method(f"{name} (rank {rank}, recover {'/'.join(recipes)})", rank, recipes, base.threshold, "custom",
                  base.prune_on_all_clean_data, base.max_accuracy_drop,
                  base.fallback_threshold if len(recipes) > 1 else None, min(base.same_pruning, len(recipes)))


def defense_config(method: Method, finetune=None, **settings):
    """The `fp_onnx.defense.DefenseConfig` that runs `method`: its criterion, threshold (unless `settings`
    give a `rule`) and recipes (the first one in `finetune`, which keeps the caller's other settings). The
    fallback recipes' deeper pruning applies only under the method's own stop rule: a rule the user chose
    bounds every attempt."""
    from fp_onnx.defense import DefenseConfig
    from fp_onnx.finetune import FineTuneConfig
    from fp_onnx.prune import StopRule

    finetune = replace(finetune or FineTuneConfig(), recipe=method.recover[0])
    own_rule = StopRule("threshold", method.threshold)
    settings.setdefault("rule", own_rule)
    if method.fallback_threshold is not None and settings["rule"] == own_rule:
        settings.setdefault("fallback_rule", StopRule("threshold", method.fallback_threshold))
    return DefenseConfig(finetune=finetune, rank=method.rank, method=method.name,
                         second_recipes=method.recover[1:method.same_pruning],
                         fallback_recipes=method.recover[method.same_pruning:], warp_recipes=method.warp_recipes,
                         prune_on_all_clean_data=method.prune_on_all_clean_data,
                         method_accuracy_drop=method.max_accuracy_drop, **settings)
