"""Can a trigger-free probe choose between two defended models that both pass the clean-accuracy floor?

The default method ships its first recipe whose result passes the floor. On some models a
second recipe, also above the floor, leaves less backdoor (docs/decisions.md, "Universal
patches": `adversarial-patch` against `adversarial` on the post-it model), but the defender
has no trigger to tell which. This benchmark asks whether something measured on clean data
alone orders the two as their attack success on the (held-out) triggered test set does.

Per zoo model and seed it runs the default's pruning with each of two recipes (no
fallback), then scores each defended model with two probes, both searches for a universal
patch (`fp_onnx.recipes.patch.universal_patch`, Neural Cleanse's mask-and-pattern trigger
model) on the defender's clean data:

- *self*: the patch searched on the defended model itself; the score is its reach, the
  largest fraction of inputs (of other classes) it sends to one class;
- *transfer*: the patch reverse-engineered on the vendor's model (where a backdoor makes a
  small universal patch easy to find), stamped on the defended model's inputs; the score is
  the fraction still sent to that patch's class.

A probe "picks" the candidate with the lower score; a pick is right when that candidate's
measured attack success is the lower one (ties within 0.01 count as either).

    python bench/trigger_free_selector.py --zoo models/shipped out/zoo [--models ...] [--seeds 0 1]
        [--cells MODEL:SEED ...] [--recipes adversarial adversarial-patch] [--work DIR]

Defended models and measured cells are kept in --work (default: a folder under the system's temp dir) and reused
when present.
Prints a table, writes bench/results/trigger_free_selector.json and .png.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from fp_onnx.converters import onnx_to_torch
from fp_onnx.finetune import FineTuneConfig, trainable_graph
from fp_onnx.loading import load_model
from fp_onnx.methods import defense_config, resolve_method
from fp_onnx.outputs import save_model, write_json
from fp_onnx.recipes.patch import Patch, universal_patch
from fp_onnx.report import library_versions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce_paper import defend_zoo_model, defender_data, zoo_folders  # noqa: E402  (one defender set and run)

RESULTS = Path(__file__).resolve().parent / "results"
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "shipped"
PROBE_AREAS = (0.01, 0.02, 0.05)
"""Patch budgets probed (fractions of the input's elements): the zoo's triggers cover 1-6 %."""
SEARCH_EPOCHS = 2
SEARCH_RESTARTS = 2
TIE = 0.01
"""Attack-success differences up to this count as a tie: either pick is right."""


def defend(folder: Path, recipe: str, seed: int, work: Path) -> dict:
    """The default's pruning and `recipe` alone (no fallback): the defended model's file and its measured row,
    reused from `work` when an earlier run left them."""
    stem = work / f"{folder.name}_{seed}_{recipe}"
    if stem.with_suffix(".json").exists() and stem.with_suffix(".onnx").exists():
        return {**json.loads(stem.with_suffix(".json").read_text()), "onnx": str(stem.with_suffix(".onnx"))}
    config = defense_config(resolve_method("recommended", recover=recipe), FineTuneConfig(device="cpu", seed=seed),
                            seed=seed)
    result = defend_zoo_model(folder, config, "cpu").result
    attempt = result.method["recover_attempts"][-1]
    row = {"result": result.table["fine-pruning"].to_dict(), "vendor": result.table["none"].to_dict(),
           "passed_floor": attempt["failure"] is None and not attempt["below_floor"]}
    save_model(result.defended, stem.with_suffix(".onnx"))
    write_json(stem.with_suffix(".json"), row)  # last: its presence says the pair is complete
    return {**row, "onnx": str(stem.with_suffix(".onnx"))}


def frozen_module(path: Path) -> tuple[torch.nn.Module, str]:
    """The model as a torch module that outputs scores, in evaluation mode, with no weight gradients."""
    model, kind = trainable_graph(load_model(path).model)
    module = onnx_to_torch(model).eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module, kind


def predictions(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([module(part).reshape(len(part), -1).argmax(1) for part in x.split(256)])


def share_sent_to(predicted: torch.Tensor, y: torch.Tensor, target: int) -> float:
    """The fraction of inputs of classes other than `target` that are predicted as `target`."""
    return float(((predicted == target) & (y != target)).sum()) / max(1, int((y != target).sum()))


def reach(predicted: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """The largest fraction of inputs of other classes that are predicted as one class, and that class."""
    fractions = [share_sent_to(predicted, y, c) for c in range(int(max(y.max(), predicted.max())) + 1)]
    best = int(np.argmax(fractions))
    return fractions[best], best


def strongest_patch(module: torch.nn.Module, kind: str, x: torch.Tensor, y: torch.Tensor, area: float,
                    seed: int) -> tuple[Patch, float, int]:
    """The universal patch of budget `area` with the largest reach over SEARCH_RESTARTS searches, each
    SEARCH_EPOCHS passes over the data in batches of 64 (the search accumulates from batch to batch)."""
    best = None
    for restart in range(SEARCH_RESTARTS):
        torch.manual_seed(1000 * seed + restart)
        patch = None
        for _ in range(SEARCH_EPOCHS):
            for indices in torch.randperm(len(x)).split(64):
                patch = universal_patch(module, x[indices], y[indices], kind, patch, area=area)
        score, target = reach(predictions(module, patch.stamp(x)), y)
        if best is None or score > best[1]:
            best = (patch, score, target)
    return best


def clean_tensors(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    card = json.loads((folder / "model_card.json").read_text())
    data = defender_data(folder, card)
    batch = data.take(np.arange(len(data)))
    return torch.tensor(batch.x, dtype=torch.float32), torch.tensor(batch.y, dtype=torch.long)


def probe_scores(candidate: Path, vendor_patches: dict, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict:
    """Both probes at every budget: the self-search reach and the vendor patch's transfer."""
    module, kind = frozen_module(candidate)
    scores = {}
    for area, (patch, _, target) in vendor_patches.items():
        scores[f"self {area:g}"] = strongest_patch(module, kind, x, y, area, seed)[1]
        scores[f"transfer {area:g}"] = share_sent_to(predictions(module, patch.stamp(x)), y, target)
    return scores


def measure_cell(folder: Path, seed: int, recipes: tuple[str, str], work: Path) -> dict:
    x, y = clean_tensors(folder)
    vendor, kind = frozen_module(folder / "model.onnx")
    vendor_patches = {area: strongest_patch(vendor, kind, x, y, area, seed) for area in PROBE_AREAS}
    candidates = {}
    for recipe in recipes:
        run = defend(folder, recipe, seed, work)
        candidates[recipe] = {"clean_accuracy": run["result"]["clean_accuracy"],
                              "attack_success": run["result"]["attack_success"], "passed_floor": run["passed_floor"],
                              "scores": probe_scores(Path(run["onnx"]), vendor_patches, x, y, seed)}
    return {"model": folder.name, "seed": seed, "recipes": list(recipes), "candidates": candidates,
            "vendor_reach": {f"{a:g}": {"reach": s, "class": t} for a, (_, s, t) in vendor_patches.items()},
            **judge(candidates, recipes)}


def cached_cell(folder: Path, seed: int, recipes: tuple[str, str], work: Path) -> dict:
    """`measure_cell`, kept in `work` so that a rerun (or a second process on other models) reuses it."""
    path = work / f"{folder.name}_{seed}_{'_'.join(recipes)}.cell.json"
    if path.exists():
        return json.loads(path.read_text())
    row = measure_cell(folder, seed, recipes, work)
    write_json(path, row)
    return row


def judge(candidates: dict, recipes: tuple[str, str]) -> dict:
    """Which candidate each probe picks (the lower score; the first on a tie), and whether that is the one with
    the lower measured attack success (a difference up to TIE: either is right)."""
    first, second = (candidates[r] for r in recipes)
    gap = first["attack_success"] - second["attack_success"]
    picks = {name: (recipes[0] if first["scores"][name] <= second["scores"][name] else recipes[1])
             for name in first["scores"]}
    right = {name: abs(gap) <= TIE or (pick == recipes[0]) == (gap < 0) for name, pick in picks.items()}
    return {"both_pass": first["passed_floor"] and second["passed_floor"], "attack_success_gap": gap,
            "picks": picks, "right": right}


def summary(rows: list[dict]) -> dict:
    """Per probe: right picks among the cells where both candidates pass the floor and differ by more than TIE."""
    decisive = [r for r in rows if r["both_pass"] and abs(r["attack_success_gap"]) > TIE]
    names = list(rows[0]["right"]) if rows else []
    return {"cells": len(rows), "decisive": len(decisive),
            "right": {name: sum(r["right"][name] for r in decisive) for name in names}}


def print_table(rows: list[dict], totals: dict) -> None:
    names = list(totals["right"])
    print(f"{'model':<24}{'seed':>5}  {'candidate':<20}{'clean':>7}{'attack':>8}{'floor':>7}"
          + "".join(f"{n:>14}" for n in names))
    for r in rows:
        for recipe, c in r["candidates"].items():
            print(f"{r['model']:<24}{r['seed']:>5}  {recipe:<20}{c['clean_accuracy']:>7.3f}{c['attack_success']:>8.3f}"
                  f"{'pass' if c['passed_floor'] else 'fail':>7}" + "".join(f"{c['scores'][n]:>14.3f}" for n in names))
    print(f"cells where both pass the floor and attack success differs by more than {TIE}: {totals['decisive']} of "
          f"{totals['cells']}; right picks: " + ", ".join(f"{n} {k}" for n, k in totals["right"].items()))


def plot(rows: list[dict], path: Path) -> Path:
    """Each probe's score against the measured attack success, one point per defended model."""
    from fp_onnx.plots import save_figure  # first: it selects the non-interactive backend
    import matplotlib.pyplot as plt

    names = [n for n in (rows[0]["candidates"][rows[0]["recipes"][0]]["scores"] if rows else {})]
    figure, axes = plt.subplots(1, max(1, len(names)), figsize=(3 * max(1, len(names)), 3.2), sharey=True)
    for axis, name in zip(np.atleast_1d(axes), names):
        for r in rows:
            for recipe, c in r["candidates"].items():
                axis.plot(c["scores"][name], c["attack_success"], "o" if recipe == r["recipes"][0] else "x",
                          color="tab:blue" if c["passed_floor"] else "gray")
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("probe score")
    np.atleast_1d(axes)[0].set_ylabel("attack success (test)")
    figure.suptitle(f"o {rows[0]['recipes'][0]}, x {rows[0]['recipes'][1]}; gray: below the floor" if rows else "",
                    fontsize=9)
    return save_figure(figure, path)


def cells(args) -> list[tuple[Path, int]]:
    """(model folder, seed) pairs: --cells when given, else every selected model with every seed."""
    if args.cells is None:
        return [(folder, seed) for folder in zoo_folders(args.zoo, args.models) for seed in args.seeds]
    folders = {folder.name: folder for folder in zoo_folders(args.zoo)}
    pairs = [cell.rpartition(":") for cell in args.cells]
    unknown = sorted({name for name, _, _ in pairs} - set(folders))
    if unknown:
        raise SystemExit(f"--cells: no model folder named {', '.join(unknown)} in --zoo")
    return [(folders[name], int(seed)) for name, _, seed in pairs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, nargs="+", default=[SHIPPED])
    parser.add_argument("--models", nargs="+", default=None, help="default: every model folder in --zoo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--cells", nargs="+", default=None, metavar="MODEL:SEED",
                        help="measure exactly these cells instead of every model and seed")
    parser.add_argument("--recipes", nargs=2, default=["adversarial", "adversarial-patch"])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fp_onnx_selector")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for folder, seed in cells(args):
        rows.append(cached_cell(folder, seed, tuple(args.recipes), args.work))
        print(f"  {folder.name} seed {seed}: done", file=sys.stderr, flush=True)
    totals = summary(rows)
    print_table(rows, totals)
    RESULTS.mkdir(exist_ok=True)
    png = plot(rows, RESULTS / "trigger_free_selector.png")
    payload = {"probe_areas": PROBE_AREAS, "tie": TIE, "summary": totals, "rows": rows, "plot": png.name,
               "versions": library_versions()}
    write_json(RESULTS / "trigger_free_selector.json", payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
