"""The torchvision zoo, architecture x exporter: where fp-onnx prunes and what it buys.

For each torchvision classifier of tests/torchvision_zoo.py (random weights with randomised
biases and BN statistics, 64x64 inputs; see that module) and each torch exporter (legacy
TorchScript, dynamo), at the default prune point:

* the point (its layer name, channels) and whether the channels are removed or masked (and why);
* equivalence: the largest relative difference between the model pruned at 50 % of the channels
  (`prune_channels`) and the masked reference (`mask_channels`), over random inputs;
* parameters and FLOPs before and after pruning 50 %;
* the prune sweep: the fast full-resolution curve (`measure_curve`) against the naive way
  (surgery + a new session + a full pass per step), timed on --naive-steps evenly spaced steps and
  extrapolated to all C steps (running every step of a 1,280-channel point naively takes hours),
  with the predictions compared at those steps; and the fast curve in profiling passes.

    python bench/torchvision_zoo.py [--samples 64] [--batch-size 32] [--naive-steps 6] [--only NAME ...]
                                    [--exporters legacy dynamo] [--out PATH] [--resume]

Prints a Markdown table and writes bench/results/torchvision_zoo.json; exits 1 when a pruned model
differs from its masked reference by more than 1e-5 or a fast and a naive curve differ.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))
import model_zoo  # noqa: E402
import prune_sweep  # noqa: E402
import torchvision_zoo  # noqa: E402
from fp_onnx.cost import count_flops, count_parameters  # noqa: E402
from fp_onnx.data import ArrayDataset  # noqa: E402
from fp_onnx.inference import ModelRunner  # noqa: E402
from fp_onnx.loading import load_model  # noqa: E402
from fp_onnx.profile import profile_model  # noqa: E402
from fp_onnx.prune import measure_curve  # noqa: E402
from fp_onnx.prune_point import resolve_prune_point  # noqa: E402
from fp_onnx.runtime import RuntimeOptions  # noqa: E402
from fp_onnx.surgery import mask_channels, prune_channels  # noqa: E402

EQUIVALENCE_GOAL = 1e-5
DEGENERATE_LOGITS = 1e-5
"""Centred logits below this are float noise (saturated random features): curve differences are ties."""


def equivalence(pruned, reference, shape: tuple[int, ...], options: RuntimeOptions) -> float:
    x = np.random.default_rng(7).standard_normal((8, *shape)).astype(np.float32)
    got = ModelRunner(pruned, options=options).run(x)[pruned.graph.output[0].name].astype(np.float64)
    want = ModelRunner(reference, options=options).run(x)[reference.graph.output[0].name]
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def bench_one(name: str, exporter: str, args: argparse.Namespace, folder: Path) -> dict:
    options = RuntimeOptions(device="cpu", threads=args.threads)
    size = torchvision_zoo.CLASSIFIERS[name].size
    shape = (3, size, size)
    started = time.perf_counter()
    module = prune_sweep.centre_classifier(torchvision_zoo.build(name), prune_sweep._calibration_inputs(shape))
    path = model_zoo.export_torch(module, folder / f"{name}_{exporter}.onnx", exporter, input_shape=shape)
    export_s = time.perf_counter() - started
    model = load_model(path).model
    point = resolve_prune_point(model, None)
    channels = sorted(np.random.default_rng(0).choice(point.channels, point.channels // 2, replace=False).tolist())
    result = prune_channels(model, point, channels)
    error = equivalence(result.model, mask_channels(model, point, channels), shape, options)

    x = np.random.default_rng(0).random((args.samples, *shape), dtype=np.float32)
    logits = ModelRunner(model, options=options).run(x)[model.graph.output[0].name]
    labels = logits.argmax(axis=1)
    dataset = ArrayDataset(x, labels, source=f"{name} random inputs")
    profile_s, _, profile = prune_sweep.median_time(1, profile_model, model, point, dataset, options=options,
                                                    batch_size=args.batch_size)
    order = profile.pruning_order()
    fast_s, _, curve = prune_sweep.median_time(1, measure_curve, model, point, order, dataset, options=options,
                                               batch_size=args.batch_size)
    steps = prune_sweep.naive_steps(point.channels, args.naive_steps)
    naive = prune_sweep.naive_curve(model, point, dataset, order, options, args.batch_size, steps)
    fast_predictions = [curve.clean_accuracy[k] for k in steps]
    naive_accuracy = [float((p == labels).mean()) for p in naive.pop("predictions")]
    return {
        "model": name, "exporter": exporter, "export_s": export_s, "point": point.label, "tensor": point.tensor,
        "op_type": point.op_type, "channels": point.channels, "removed": result.physically_removed,
        "mask_reason": result.mask_reason, "sources": list(point.sources), "selections": list(point.selections),
        "equivalence_rel": error, "parameters": [count_parameters(model), count_parameters(result.model)],
        "flops": [count_flops(model), count_flops(result.model)], "sweep_path": curve.sweep_method,
        "profile_pass_s": profile_s, "fast_s": fast_s, "naive_s": naive["total_s"], "naive": naive,
        "speedup": naive["total_s"] / fast_s, "passes": fast_s / profile_s,
        "curves_identical": fast_predictions == naive_accuracy,
        # Random features can saturate (MobileNetV2's ReLU6): the centred logits are then float noise and
        # argmax ties decide the predictions, which no two float computations need to agree on.
        "logit_scale": float(np.abs(logits).max()),
    }


def markdown(rows: list[dict]) -> str:
    lines = ["| architecture | exporter | default point (channels) | removed or masked | max rel. diff vs masked "
             "| parameters before → after | MFLOPs before → after | sweep path | speed-up vs naive | passes "
             "| fast = naive |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        how = "removed" if r["removed"] else f"masked: {r['mask_reason']}"
        if r["removed"]:
            how += f" ({len(r['sources'])} source(s), {len(r['selections'])} selection(s))"
        lines.append(
            f"| {r['model']} | {r['exporter']} | `{r['point']}` ({r['channels']}) | {how} | {r['equivalence_rel']:.1e} "
            f"| {r['parameters'][0]:,} → {r['parameters'][1]:,} | {r['flops'][0] / 1e6:.1f} → {r['flops'][1] / 1e6:.1f} "
            f"| {r['sweep_path']} | {r['speedup']:.0f}×{'~' if r['naive']['extrapolated'] else ''} | {r['passes']:.2f} "
            f"| {_curve_check(r)} |")
    return "\n".join(lines)


def write(args: argparse.Namespace, rows: list[dict]) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "resume"}
    args.out.write_text(json.dumps({"benchmark": "torchvision_zoo", "settings": settings,
                                    "machine": prune_sweep.machine(), "results": rows}, indent=2, default=str) + "\n")


def _curve_check(row: dict) -> str:
    if row["curves_identical"]:
        return "yes"
    return f"ties only (logits {row['logit_scale']:.0e})" if row.get("logit_scale", 1.0) < DEGENERATE_LOGITS else "NO"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--naive-steps", type=int, default=6)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--exporters", nargs="*", default=["legacy", "dynamo"])
    parser.add_argument("--out", type=Path, default=prune_sweep.RESULTS / "torchvision_zoo.json")
    parser.add_argument("--resume", action="store_true", help="keep the cases already in --out, run the rest")
    args = parser.parse_args(argv)
    if not torchvision_zoo.available():
        print("torchvision is not installed; install the `test` extra", file=sys.stderr)
        return 1
    rows = json.loads(args.out.read_text())["results"] if args.resume and args.out.exists() else []
    done = {(r["model"], r["exporter"]) for r in rows}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.only or list(torchvision_zoo.CLASSIFIERS):
            for exporter in args.exporters:
                if (name, exporter) in done:
                    continue
                print(f"benchmarking {name} ({exporter}) ...", flush=True)
                rows.append(bench_one(name, exporter, args, Path(folder)))
                write(args, rows)  # after every case: a long run keeps what it measured
    print(markdown(rows))
    write(args, rows)
    print(f"wrote {args.out}")
    bad = [f"{r['model']}/{r['exporter']}" for r in rows if r["equivalence_rel"] > EQUIVALENCE_GOAL
           or not (r["curves_identical"] or r.get("logit_scale", 1.0) < DEGENERATE_LOGITS)]
    if bad:
        print(f"FAILED: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
