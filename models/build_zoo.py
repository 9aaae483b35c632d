"""Build the six benchmark models (faces / speech / traffic x BadNets / pruning-aware) in one go.

    python -m fp_onnx.models.build_zoo --out out/zoo [--tasks faces,speech,traffic]
        [--attacks badnets,pruning-aware] [--epochs N] [--threads 1]

Each model lands in `OUT/<task>_<attack>/` (see `fp_onnx.models.build`); the
BadNets builds also train an honest model with the same settings
(`clean_baseline` in the card), so the attack's cost in clean accuracy is
known. `OUT/summary.json` collects clean accuracy, attack success and build
time per model. Faces and GTSRB outputs must never be committed: keep OUT
git-ignored.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fp_onnx.models.build import build
from fp_onnx.models.recipes import ATTACKS, TASKS


def summarise(card: dict) -> dict:
    row = {
        "clean_accuracy": round(card["metrics"]["clean_accuracy"], 4),
        "attack_success": round(card["metrics"]["attack_success"], 4),
        "training_seconds": card["training"]["seconds"],
        "build_seconds": card["build_seconds"],
        "dormant_on_clean_active_on_triggered": card["backdoor_channels"]["dormant_on_clean_active_on_triggered"],
    }
    if "clean_baseline" in card:
        row["clean_model_accuracy"] = round(card["clean_baseline"]["clean_accuracy"], 4)
    return row


def collect_summary(out: Path) -> dict:
    """One summary row per `OUT/*/model_card.json` (derived from the cards, so parallel builds never clash)."""
    return {card_path.parent.name: summarise(json.loads(card_path.read_text()))
            for card_path in sorted(out.glob("*/model_card.json"))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fp_onnx.models.build_zoo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    summary_path = args.out / "summary.json"
    started = time.perf_counter()
    for task in args.tasks.split(","):
        for attack in args.attacks.split(","):
            name = f"{task}_{attack.replace('-', '_')}"
            card = build(task, attack, args.out / name, epochs=args.epochs, clean_baseline=(attack == "badnets"))
            summary_path.write_text(json.dumps(collect_summary(args.out), indent=2) + "\n")
            print(name, json.dumps(summarise(card)), flush=True)
    print(f"total {time.perf_counter() - started:.0f} s -> {summary_path}")


if __name__ == "__main__":
    main()
