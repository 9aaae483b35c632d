"""Run many fuzz cases and count what happened.

Layout of a campaign folder: `seeds/` (valid vendor folders, built once), `outside/`
(decoys that external-data paths, HDF5 links and pickle payloads aim at; nothing may
change here), `cases/<index>/` (one per running case, removed afterwards unless it
failed and `keep_failures` is set).
"""
from __future__ import annotations

import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fuzzing.cases import Case, make_case
from fuzzing.harness import FAILURES, Outcome, Result, run_case
from fuzzing.seeds import build_seeds


@dataclass
class CampaignResult:
    seed: int
    results: list[Result] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        counts = Counter(result.outcome for result in self.results)
        return {outcome.value: counts.get(outcome.value, 0) for outcome in Outcome}

    @property
    def failures(self) -> list[Result]:
        failing = {outcome.value for outcome in FAILURES}
        return [result for result in self.results if result.outcome in failing]

    def by_mutator(self) -> dict[str, dict[str, int]]:
        table: dict[str, Counter] = {}
        for result in self.results:
            table.setdefault(result.mutator, Counter())[result.outcome] += 1
        return {name: dict(sorted(counts.items())) for name, counts in sorted(table.items())}

    def to_dict(self) -> dict:
        return {"seed": self.seed, "cases": len(self.results), "counts": self.counts,
                "by_mutator": self.by_mutator(), "failures": [r.to_dict() for r in self.failures]}


def prepare(root: Path, dynamo_model: Path | None = None):
    """Seeds and the outside folder with its decoys; returns (seeds, outside)."""
    import h5py

    seeds = build_seeds(root / "seeds", dynamo_model)
    outside = root / "outside"
    outside.mkdir(parents=True, exist_ok=True)
    if not (outside / "other.h5").exists():
        (outside / "secret.bin").write_bytes(np.arange(1 << 16, dtype=np.uint8).tobytes())
        with h5py.File(outside / "other.h5", "w") as file:
            file["x"] = np.zeros((12, 3, 32, 32), np.float32)
    return seeds, outside


def run_campaign(n: int, seed: int, root: Path, *, workers: int = 1, dynamo_model: Path | None = None,
                 start: int = 0, keep_failures: bool = False, only: str | None = None,
                 timeout_scale: float = 1.0, progress=None) -> CampaignResult:
    """Generate and run cases start..start+n-1 of campaign `seed` under `root`."""
    seeds, outside = prepare(root, dynamo_model)
    watched = [root / "seeds", outside]
    result = CampaignResult(seed)

    def one(index: int) -> Result:
        folder = root / "cases" / str(index)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        case: Case = make_case(seed, index, seeds, folder, outside, only)
        outcome = run_case(case, folder, watched, timeout_scale=timeout_scale)
        failed = outcome.outcome in {o.value for o in FAILURES}
        if failed and keep_failures:
            target = root / "failures" / str(index)
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(str(folder), target)
        else:
            shutil.rmtree(folder, ignore_errors=True)
        return outcome

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for outcome in pool.map(one, range(start, start + n)):
            result.results.append(outcome)
            if progress is not None:
                progress(outcome)
    return result
