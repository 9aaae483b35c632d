"""Does the verdict's interval of the clean-accuracy cost hold on data the defense never saw?

The guard judges a model on the defender's validation split; with a small defender set
that is a few dozen samples, and the pruning that the stop rule picks on that split is
the one that looks cheapest *there* (a selection the interval's own coverage does not
account for). This benchmark measures, per zoo model and seed, the paper's pruning
(mean activation, 4-point threshold on the validation split): the cost on validation,
its 95 % interval (`fp_onnx.confidence`, what the verdict reports), and the cost on the
held-out test set. It counts how often the test cost lies inside the interval, and how
often the point estimate passed a model whose test cost is above the limit while the
interval warned (its upper end above the limit). Pruning only: fine-tuning would take
hours per cell on a CPU and is judged the same way.

    python bench/cost_interval.py [--zoo models/shipped out/zoo] [--models faces_badnets ...] [--seeds 0 1 2]

Prints a table, writes bench/results/cost_interval.json and bench/results/cost_interval.png.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fp_onnx.confidence import paired_difference_interval
from fp_onnx.data import open_dataset, split_dataset
from fp_onnx.guard import check_clean
from fp_onnx.loading import load_model
from fp_onnx.prune import StopRule, prune_defense
from fp_onnx.prune_point import resolve_prune_point
from fp_onnx.report import library_versions
from fp_onnx.runtime import RuntimeOptions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce_paper import defender_data, zoo_folders  # noqa: E402  (the benchmark's defender set, one rule for both)

RESULTS = Path(__file__).resolve().parent / "results"
LIMIT = 0.04
"""The paper's threshold: the stop rule's and the guard's limit in this benchmark."""
CPU = RuntimeOptions(device="cpu")
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "shipped"


def measure_cell(folder: Path, seed: int) -> dict:
    """One model and seed: the paper's pruning picked on the validation split, measured there and on the test set."""
    card = json.loads((folder / "model_card.json").read_text())
    model = load_model(folder / "model.onnx").model
    clean = defender_data(folder, card)
    _, val = split_dataset(clean, 0.2, seed)
    test = open_dataset(folder / "clean_test.npz")
    outcome = prune_defense(model, resolve_prune_point(model, None), val, StopRule("threshold", LIMIT), options=CPU)
    pruned = outcome.surgery.model
    vendor_val, pruned_val = check_clean(model, val, options=CPU), check_clean(pruned, val, options=CPU)
    interval = paired_difference_interval(vendor_val.correct, pruned_val.correct)
    test_cost = check_clean(model, test, options=CPU).accuracy - check_clean(pruned, test, options=CPU).accuracy
    return {"model": folder.name, "seed": seed, "validation_samples": len(val), "test_samples": len(test),
            "channels_pruned": outcome.channels_pruned, "validation_cost": interval.estimate,
            "interval": [interval.low, interval.high], "test_cost": test_cost,
            "covered": interval.low <= test_cost <= interval.high,
            "passed_on_validation": interval.estimate <= LIMIT + 1e-12,
            "over_limit_on_test": test_cost > LIMIT + 1e-12, "interval_warned": interval.high > LIMIT + 1e-12}


def summary(rows: list[dict]) -> dict:
    missed = [r for r in rows if r["passed_on_validation"] and r["over_limit_on_test"]]
    return {"cells": len(rows), "covered": sum(r["covered"] for r in rows),
            "passed_but_over_limit_on_test": len(missed), "of_those_warned": sum(r["interval_warned"] for r in missed),
            "warned": sum(r["interval_warned"] for r in rows)}


def print_table(rows: list[dict], totals: dict) -> None:
    print(f"{'model':<24}{'seed':>5}{'val n':>7}{'pruned':>8}{'val cost':>10}{'95 % interval':>20}"
          f"{'test cost':>11}{'covered':>9}{'warned':>8}")
    for r in rows:
        low, high = r["interval"]
        print(f"{r['model']:<24}{r['seed']:>5}{r['validation_samples']:>7}{r['channels_pruned']:>8}"
              f"{r['validation_cost']:>10.3f}{f'[{low:.3f}, {high:.3f}]':>20}{r['test_cost']:>11.3f}"
              f"{'yes' if r['covered'] else 'NO':>9}{'yes' if r['interval_warned'] else 'no':>8}")
    print(f"test cost inside the interval: {totals['covered']} of {totals['cells']}; passed on validation but over "
          f"the {LIMIT:g} limit on test: {totals['passed_but_over_limit_on_test']}, of which the interval warned of "
          f"{totals['of_those_warned']}; warned in all: {totals['warned']}")


def plot(rows: list[dict], path: Path) -> Path:
    from fp_onnx.plots import save_figure  # first: it selects the non-interactive backend
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(max(6.0, 0.5 * len(rows) + 2), 4))
    for x, r in enumerate(rows):
        low, high = r["interval"]
        axes.plot([x, x], [low, high], color="tab:blue", linewidth=3, alpha=0.6)
        axes.plot(x, r["validation_cost"], "o", color="tab:blue")
        axes.plot(x, r["test_cost"], "x", color="tab:red" if not r["covered"] else "black", markersize=9)
    axes.axhline(LIMIT, color="gray", linestyle="--", linewidth=1, label=f"limit {LIMIT:g}")
    axes.set_xticks(range(len(rows)), [f"{r['model']} s{r['seed']}" for r in rows], rotation=60, ha="right",
                    fontsize=7)
    axes.set_ylabel("clean-accuracy cost")
    axes.set_title("paper's pruning: validation cost and its 95 % interval (bar), test cost (x)")
    axes.legend(loc="upper left")
    return save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, nargs="+", default=[SHIPPED],
                        help="folders of zoo models (bench/reproduce_paper.py's); default: the shipped models")
    parser.add_argument("--models", nargs="+", default=None, help="default: every model folder in --zoo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    folders = zoo_folders(args.zoo, args.models)
    rows = []
    for folder in folders:
        for seed in args.seeds:
            rows.append(measure_cell(folder, seed))
            print(f"  {folder.name} seed {seed}: done", file=sys.stderr, flush=True)
    totals = summary(rows)
    print_table(rows, totals)
    RESULTS.mkdir(exist_ok=True)
    png = plot(rows, RESULTS / "cost_interval.png")
    payload = {"limit": LIMIT, "summary": totals, "rows": rows, "plot": png.name, "versions": library_versions()}
    (RESULTS / "cost_interval.json").write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
