"""Fuzz cases: the mutator registry and what one generated case is.

A mutator is a function `(CaseContext) -> Case` registered with `@mutator(name,
weight)`. It writes the case's input files under `ctx.inputs` (never anywhere else)
and returns the command line to run. Everything random comes from `ctx.rng`, so a
(campaign seed, case index) pair always gives the same case.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fuzzing.seeds import Seed

COMMANDS = ("layers", "profile", "prune", "finetune", "fine-prune")


@dataclass
class Case:
    """One generated run: the command line (after `fp-onnx`) and what is expected of it."""

    mutator: str
    args: list[str]
    detail: str = ""
    expect_ok: bool = False
    """The input is valid: anything but success is a failure ("valid model refused")."""
    index: int = -1

    @property
    def command(self) -> str:
        return self.args[0]


@dataclass
class CaseContext:
    """What a mutator may use: randomness, the seeds, and the case's own folders."""

    rng: np.random.Generator
    seeds: dict[str, Seed]
    folder: Path
    """The case's folder; inputs go to `inputs`, the command writes to `out`."""
    outside: Path
    """A folder outside every case (decoy files live here; nothing may ever be written to it)."""
    seed_name: str | None = None
    """The seed to start from; None draws one."""
    seed: Seed = field(init=False)

    def __post_init__(self) -> None:
        self.seed = self.seeds[self.seed_name or self.pick(sorted(self.seeds))]

    @property
    def inputs(self) -> Path:
        return self.folder / "inputs"

    @property
    def out(self) -> Path:
        return self.folder / "out"

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def chance(self, probability: float) -> bool:
        return bool(self.rng.random() < probability)

    def copy_seed(self) -> Path:
        """Copy the seed folder into `inputs`; return the copied model path."""
        self.inputs.mkdir(parents=True, exist_ok=True)
        for file in self.seed.files():
            shutil.copy(file, self.inputs / file.name)
        return self.inputs / "model.onnx"

    def command_args(self, command: str, model: Path, data: Path | None = None, *, labelled: bool = True) -> list[str]:
        """A valid command line for `command` on `model`, small enough to run in seconds."""
        data = data or self.inputs / "clean.npz"
        args = [command, str(model)]
        if command == "layers":
            return args
        args += ["--data", str(data), "--out", str(self.out), "--device", "cpu", "--threads", "1"]
        if command in ("prune", "fine-prune"):
            args += ["--fraction", "0.25"]
        if command in ("finetune", "fine-prune"):
            args += ["--epochs", "1", "--patience", "1"]
        return args

    def random_command(self, weights: dict[str, float] | None = None) -> str:
        weights = weights or {"layers": 0.25, "profile": 0.35, "prune": 0.3, "finetune": 0.04, "fine-prune": 0.06}
        names = list(weights)
        probabilities = np.array([weights[name] for name in names], dtype=float)
        return names[int(self.rng.choice(len(names), p=probabilities / probabilities.sum()))]


Mutator = Callable[[CaseContext], Case]
MUTATORS: dict[str, tuple[Mutator, float]] = {}


def mutator(name: str, weight: float = 1.0) -> Callable[[Mutator], Mutator]:
    """Register a mutator under `name`; `weight` sets how often campaigns draw it."""

    def register(function: Mutator) -> Mutator:
        if name in MUTATORS:
            raise ValueError(f"mutator '{name}' is registered twice")
        MUTATORS[name] = (function, weight)
        return function

    return register


def make_case(campaign_seed: int, index: int, seeds: dict[str, Seed], folder: Path, outside: Path,
              only: str | None = None) -> Case:
    """Generate case `index` of a campaign into `folder` (deterministic)."""
    import fuzzing.data_mutators  # noqa: F401 - registration
    import fuzzing.model_mutators  # noqa: F401 - registration

    rng = np.random.default_rng([campaign_seed, index])
    names = sorted(MUTATORS) if only is None else [only]
    weights = np.array([MUTATORS[name][1] for name in names], dtype=float)
    name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    ctx = CaseContext(rng, seeds, folder, outside)
    case = MUTATORS[name][0](ctx)
    case.mutator, case.index = name, index
    return case
