"""Effect of weight noise before fine-tuning (`--noise σ`, the paper's §4 proposal) on a backdoored model.

Runs fine-pruning (paper defaults: threshold 0.04, fine-tuning defaults) on the shipped
backdoored FSDD model, or a zoo folder with the same files (`--model`), for several σ,
side by side in one run with the same split and seed, and reports clean test accuracy
and attack success for each.

    python bench/noise_effect.py [--sigmas 0 0.05 0.1 0.2] [--device cpu] [--model out/zoo/speech_badnets_demo]

Prints a table and writes bench/results/noise_effect.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fp_onnx.data import open_dataset
from fp_onnx.defense import DefenseConfig, fine_prune
from fp_onnx.finetune import FineTuneConfig
from fp_onnx.loading import load_model
from fp_onnx.metrics import AttackSpec
from fp_onnx.models import demo_files, shipped_demo
from fp_onnx.prune import StopRule
from fp_onnx.prune_point import resolve_prune_point
from fp_onnx.report import library_versions

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2])
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    parser.add_argument("--model", type=Path, default=None,
                        help="a zoo folder (model.onnx, clean_val/clean_test/triggered_test.npz); default: the shipped demo")
    args = parser.parse_args(argv)
    demo = shipped_demo() if args.model is None else demo_files(args.model)
    model = load_model(demo["model"]).model
    point = resolve_prune_point(model, None)
    rows = []
    for sigma in args.sigmas:
        config = DefenseConfig(rule=StopRule("threshold", 0.04), finetune=FineTuneConfig(noise=sigma, device=args.device))
        started = time.perf_counter()
        result = fine_prune(model, point, open_dataset(demo["clean_val"]), test=open_dataset(demo["clean_test"]),
                            triggered=open_dataset(demo["triggered_test"]), attack=AttackSpec("targeted", None),
                            config=config)
        vendor, defended = result.table["none"], result.table["fine-pruning"]
        rows.append({"sigma": sigma, "clean_accuracy": defended.clean_accuracy, "attack_success": defended.attack_success,
                     "vendor_clean_accuracy": vendor.clean_accuracy, "vendor_attack_success": vendor.attack_success,
                     "best_epoch": result.finetune.best_epoch, "seconds": time.perf_counter() - started})
    print(f"{'sigma':>6}{'clean acc':>11}{'attack success':>16}{'best epoch':>12}{'seconds':>9}")
    for row in rows:
        print(f"{row['sigma']:>6.2f}{row['clean_accuracy']:>11.4f}{row['attack_success']:>16.4f}"
              f"{row['best_epoch']:>12}{row['seconds']:>9.0f}")
    print(f"(vendor model: clean {rows[0]['vendor_clean_accuracy']:.4f}, attack success {rows[0]['vendor_attack_success']:.4f})")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "noise_effect.json").write_text(json.dumps({"versions": library_versions(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS / 'noise_effect.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
