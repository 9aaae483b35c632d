"""Fine-pruning paper-style raw-pixel vendor models (0-255 inputs, no normalisation inside) with the defaults.

Issue 12: the paper authors' DeepID face model takes raw 0-255 pixels; fine-tuning it
with the defaults of the time diverged (training loss 577 -> 442, validation accuracy
0.00) and fp-onnx still wrote defended.onnx and exited 0. This benchmark builds such
models (`fp_onnx.models.raw_pixel`: trained on 0-1 inputs, the scale folded into the
first conv, exported Caffe style) and runs `fine_prune` twice on each:

* **defaults**: what `fp-onnx fine-prune model.onnx --data clean.npz` does now
  (layer-wise learning-rate scaling, automatic gradient clipping, divergence recovery);
* **unprotected**: the same with those three switched off, i.e. the old behaviour.

Both results are written and judged on the file exactly as the CLI does (the guard:
finite outputs, clean validation accuracy within the 0.04 stop threshold of the vendor's).

    python bench/raw_pixel_recovery.py [--faces-epochs 20] [--out out/raw_pixel] [--device cpu]

Faces need ../shared/data (DeepID on faces_glint24; skipped without it); speech uses the
shipped FSDD-derived data. Prints a table and writes bench/results/raw_pixel_recovery.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from fp_onnx.data import open_dataset
from fp_onnx.defense import DefenseConfig, fine_prune
from fp_onnx.errors import BadDataError
from fp_onnx.finetune import FineTuneConfig
from fp_onnx.loading import load_model
from fp_onnx.models.raw_pixel import build_raw_pixel_faces, build_raw_pixel_speech
from fp_onnx.prune import StopRule
from fp_onnx.prune_point import resolve_prune_point
from fp_onnx.report import library_versions
from fp_onnx.reporting import write_defense_outputs
from fp_onnx.shipping import retire

RESULTS = Path(__file__).resolve().parent / "results"
THRESHOLD = 0.04
UNPROTECTED = {"layer_scale_spread": 0.0, "clip_grad_norm": 0.0, "max_recoveries": 0}


def defend(paths: dict[str, Path], out: Path, finetune: FineTuneConfig) -> dict:
    loaded = load_model(paths["model"])
    clean = open_dataset(paths["clean"])
    config = DefenseConfig(rule=StopRule("threshold", THRESHOLD), finetune=finetune)
    started = time.perf_counter()
    result = fine_prune(loaded.model, resolve_prune_point(loaded.model, None), clean,
                        test=open_dataset(paths["clean_test"]), config=config)
    seconds = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    retire(out, ["defended.onnx", "pruned.onnx"])
    _, verdict = write_defense_outputs(out, result, loaded, {"benchmark": "raw_pixel_recovery"},
                                       clean.take(np.arange(1)).x)
    tuned = result.finetune
    return {
        "verdict": verdict.summary, "exit_code": verdict.exit_code, "model_file": verdict.model,
        "vendor_val_accuracy": verdict.measured["vendor_clean_accuracy"],
        "written_val_accuracy": verdict.measured["clean_accuracy"],
        "nonfinite_outputs": verdict.measured["nonfinite_outputs"],
        "test_accuracy": {"vendor": result.table["none"].clean_accuracy,
                          "fine_pruned": result.table["fine-pruning"].clean_accuracy},
        "channels_pruned": result.prune.channels_pruned, "channels": result.prune.curve.channels,
        "first_epoch_train_loss": tuned.history[0]["train_loss"] if tuned.history else None,
        "epochs_run": len(tuned.history), "recoveries": tuned.recoveries, "failure": tuned.failure,
        "lr_scales": tuned.calibration.get("lr_scales"), "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces-epochs", type=int, default=20, help="DeepID training epochs (Adam, cosine).")
    parser.add_argument("--out", type=Path, default=Path("out/raw_pixel"), help="Working folder (git-ignored).")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    args = parser.parse_args(argv)
    builders = {"speech (Caffe-style CNN, FSDD)": ("speech", build_raw_pixel_speech, {}),
                "faces (DeepID, faces_glint24)": ("faces", build_raw_pixel_faces, {"epochs": args.faces_epochs})}
    defaults = FineTuneConfig(device=args.device)
    rows = []
    for label, (name, build, kwargs) in builders.items():
        started = time.perf_counter()
        try:
            paths = build(args.out / name, **kwargs)
        except BadDataError as exc:
            print(f"skipping {label}: {exc}", file=sys.stderr)
            continue
        build_seconds = time.perf_counter() - started
        for setting, config in (("defaults", defaults), ("unprotected", replace(defaults, **UNPROTECTED))):
            row = defend(paths, args.out / name / setting, config)
            rows.append({"model": label, "setting": setting, "build_seconds": build_seconds, **row})
    print(f"{'model':<32}{'setting':<13}{'val vendor':>11}{'val written':>12}{'1st loss':>10}{'recov.':>7}"
          f"{'exit':>5}  verdict")
    for row in rows:
        loss = row["first_epoch_train_loss"]
        print(f"{row['model']:<32}{row['setting']:<13}{row['vendor_val_accuracy']:>11.4f}"
              f"{row['written_val_accuracy']:>12.4f}{'-' if loss is None else f'{loss:.3g}':>10}"
              f"{len(row['recoveries']):>7}{row['exit_code']:>5}  {row['verdict']}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "raw_pixel_recovery.json"
    path.write_text(json.dumps({"versions": library_versions(), "threshold": THRESHOLD, "rows": rows}, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
