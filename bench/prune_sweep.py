"""Prune-curve sweep: the fast way (fp_onnx.sweep) against the naive way, and what pruning buys.

For every model the full-resolution curve (clean accuracy after pruning 0 .. C-1 channels
in profiled order) is computed twice on the same data:

* fast: `fp_onnx.prune.measure_curve` (one head pass per batch, then the masked tail or,
  when the tail is affine, a running sum of per-channel logit contributions);
* naive: for every step, `fp_onnx.surgery.prune_channels` builds the pruned model and
  onnxruntime runs it over the whole data set.

The per-step predictions must be identical (the script exits non-zero otherwise). Models with many
channels (the torchvision cases: 512 to 1,280) would need hours of naive runs, so the naive way is
timed on --naive-steps evenly spaced steps there and its whole-curve time extrapolated from their
mean ("naive s" is then marked "~"); the predictions are compared at those steps. It reports
both times, their ratio (goal >= 10x) and the fast curve's cost in units of one profiling
pass (`profile_model` over the same data; goal <= 3), plus parameters, FLOPs and onnxruntime
latency (batch 1 and 32) of the original model and of the model pruned by the paper's rule
(threshold 0.04) and at 50 % of the channels.

Weights are random (seeded); inputs are seeded uniform [0, 1) "images", and the labels are
the unpruned model's own predictions, so clean accuracy starts at 1.0 and falls as channels go.

    python bench/prune_sweep.py [--samples 512] [--batch-size 64] [--device cpu|cuda] [--threads N]
                                [--repeats 3] [--naive-steps 12] [--quick] [--only MODEL ...] [--out PATH]

Timings are wall-clock and end to end: the fast time is one `measure_curve` call (graph cut,
sessions, head and tail passes), the profiling pass one `profile_model` call, both the median
of --repeats runs; the naive time is one run of every step (surgery + session + inference).
An instrumented extra sweep splits the fast time into setup, head and tail. Prints tables and
writes bench/results/prune_sweep.json; exits 1 when a fast and a naive curve differ.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from fp_onnx.cost import count_flops, count_parameters
from fp_onnx.data import ArrayDataset
from fp_onnx.evaluate import latency_ms, predict
from fp_onnx.inference import ModelRunner, single_input
from fp_onnx.loading import load_model
from fp_onnx.metrics import accuracy
from fp_onnx.models.architectures import ARCHITECTURES
from fp_onnx.models.export import export_onnx
from fp_onnx.profile import profile_model
from fp_onnx.prune import StopRule, channels_to_prune, measure_curve
from fp_onnx.prune_point import PrunePoint, find_prune_points
from fp_onnx.runtime import RuntimeOptions
from fp_onnx.surgery import prune_channels
from fp_onnx.sweep import PruneSweep

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(BENCH.parent / "tests"))  # the test model zoo (random-weight zoo architectures)
import model_zoo  # noqa: E402
import torchvision_zoo  # noqa: E402

SPEED_GOAL = 10.0
PASSES_GOAL = 3.0


@dataclass(frozen=True)
class Case:
    """One benchmarked (model, prune point): `build(folder)` writes the ONNX file and returns its path;
    `conv` picks the prune point by a substring of the Conv's node name (None: the default point)."""

    name: str
    build: Callable[[Path], Path]
    conv: str | None
    note: str


def centre_classifier(module: torch.nn.Module, x: np.ndarray) -> torch.nn.Module:
    """Shift the last Linear (or, for conv classifiers like SqueezeNet's, the last Conv2d) layer's bias
    so that its mean output on `x` is zero.

    A randomly initialised net sends nearly every input to one class (ReLU features share a
    large mean direction), so its prune curve would stay flat at 1.0. Centring the class
    scores on the data, as training would roughly do, spreads the predictions over the
    classes, so the curve falls as channels go and compares the two methods on real work.
    """
    last = [m for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
    outputs = []
    handle = last.register_forward_hook(lambda _m, _args, out: outputs.append(out))
    with torch.no_grad():
        module(torch.from_numpy(x))
        handle.remove()
        out = torch.cat(outputs)
        mean = out.mean(dim=0) if out.ndim == 2 else out.mean(dim=(0, 2, 3))
        if last.bias is None:
            last.bias = torch.nn.Parameter(torch.zeros_like(mean))
        last.bias.sub_(mean)
    return module


def _calibration_inputs(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(1).random((256, *shape), dtype=np.float32)


def _paper_net(arch: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        torch.manual_seed(0)
        module = ARCHITECTURES[arch]().eval()
        centre_classifier(module, _calibration_inputs(module.input_shape))
        return export_onnx(module, folder / f"{arch}.onnx", module.input_shape)
    return build


def _zoo_net(arch: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        shape = model_zoo.ARCHITECTURES[arch].input_shape
        module = centre_classifier(model_zoo.build_module(arch), _calibration_inputs(shape))
        return model_zoo.export_torch(module, folder / f"{arch}.onnx", "legacy", input_shape=shape)
    return build


def _torchvision_net(name: str, exporter: str = "legacy") -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        size = torchvision_zoo.CLASSIFIERS[name].size
        module = centre_classifier(torchvision_zoo.build(name), _calibration_inputs((3, size, size)))
        return model_zoo.export_torch(module, folder / f"{name}_{exporter}.onnx", exporter, input_shape=(3, size, size))
    return build


def _keras_nhwc(folder: Path) -> Path:
    path = folder / "keras_nhwc.onnx"
    onnx.save(model_zoo.build_keras_nhwc_model(), str(path))
    return path


CASES = (
    Case("deepid_face@conv3", _paper_net("deepid_face"), "conv3", "paper's prune point; tail = conv4 branch + FCs"),
    Case("deepid_face@conv4", _paper_net("deepid_face"), None, "default point"),
    Case("alexnet_speech@conv5", _paper_net("alexnet_speech"), None, "default point"),
    Case("mobilenetv2@default", _zoo_net("mobilenetv2"), None, "test zoo; GAP -> Gemm tail"),
    Case("keras_nhwc@conv2", _keras_nhwc, None, "test zoo, tf2onnx NHWC; Reshape -> MatMul tail"),
    Case("tv_resnet18@layer4", _torchvision_net("resnet18"), None, "torchvision; last block output, GAP -> Gemm tail"),
    Case("tv_efficientnet_b0@features", _torchvision_net("efficientnet_b0"), None, "torchvision; last SiLU output"),
    Case("tv_densenet121@features", _torchvision_net("densenet121"), None, "torchvision; norm5 -> ReLU output"),
    Case("tv_convnext_tiny@features", _torchvision_net("convnext_tiny"), None,
         "torchvision; last block Add, LayerNorm head (masked)"),
)


def pick_point(model: onnx.ModelProto, conv: str | None) -> PrunePoint:
    points = find_prune_points(model)
    if conv is None:
        return next(p for p in points if p.is_default)
    matches = [p for p in points if any(conv in name for name in (*p.chain, *p.names))]
    if len(matches) != 1:
        raise SystemExit(f"prune point '{conv}': expected one point whose chain or layer names contain it, "
                         f"got {[p.label for p in matches or points]}")
    return matches[0]


def make_inputs(model: onnx.ModelProto, samples: int) -> np.ndarray:
    shape = single_input(model).shape[1:]
    return np.random.default_rng(0).random((samples, *shape), dtype=np.float32)


def timed(function: Callable, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def median_time(repeats: int, function: Callable, *args, **kwargs) -> tuple[float, list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        elapsed, result = timed(function, *args, **kwargs)
        times.append(elapsed)
    return statistics.median(times), times, result


def fast_breakdown(model, point, dataset, order, steps, options, batch_size) -> dict:
    """One instrumented fast sweep: setup (cut + sessions), head-only pass, and the whole predictions call
    (head + tail); tail = predictions - head. Returns the predictions too."""
    setup, sweep = timed(PruneSweep, model, point, options)
    head = 0.0
    for batch in dataset.batches(batch_size):
        elapsed, _ = timed(sweep.head.run, batch.x)
        head += elapsed
    total, predicted = timed(sweep.predictions, dataset, order, steps, batch_size=batch_size)
    return {
        "setup_s": setup, "head_s": head, "predictions_s": total, "tail_s": max(0.0, total - head),
        "path": sweep.method, "predictions": predicted,
    }


FULL_NAIVE_CHANNELS = 128
"""Up to this many channels the naive way runs every step."""


def naive_steps(channels: int, limit: int) -> list[int]:
    """Every step, or `limit` evenly spaced ones (0 and C-1 included) above FULL_NAIVE_CHANNELS."""
    if limit <= 0 or channels <= max(limit, FULL_NAIVE_CHANNELS):
        return list(range(channels))
    return sorted({int(round(k)) for k in np.linspace(0, channels - 1, limit)})


def naive_curve(model, point, dataset, order, options, batch_size, steps) -> dict:
    """Build and run the pruned model at each of `steps` (step 0 is the original model); the
    whole-curve time is extrapolated from the mean step when `steps` is a sample."""
    surgery_s, run_s, predicted, masked_steps = 0.0, 0.0, [], 0
    for k in steps:
        pruned = model
        if k:
            elapsed, result = timed(prune_channels, model, point, order[:k])
            surgery_s += elapsed
            pruned = result.model
            masked_steps += not result.physically_removed
        start = time.perf_counter()
        predicted.append(predict(ModelRunner(pruned, options=options), dataset, batch_size))
        run_s += time.perf_counter() - start
    measured = surgery_s + run_s
    total = measured if len(steps) == point.channels else measured / len(steps) * point.channels
    return {"surgery_s": surgery_s, "run_s": run_s, "total_s": total, "measured_s": measured,
            "steps_timed": len(steps), "extrapolated": len(steps) != point.channels,
            "masked_steps": masked_steps, "predictions": np.stack(predicted)}


def compare(fast: np.ndarray, naive: np.ndarray) -> dict:
    differing = np.flatnonzero((fast != naive).any(axis=1))
    return {"identical": bool(differing.size == 0), "differing_steps": differing.tolist(),
            "differing_predictions": int((fast != naive).sum())}


def model_cost(model: onnx.ModelProto, x: np.ndarray, options: RuntimeOptions, runs: int) -> dict:
    return {
        "parameters": count_parameters(model),
        "flops": count_flops(model),
        "latency_ms_batch1": latency_ms(model, x[:1], options=options, runs=runs),
        "latency_ms_batch32": latency_ms(model, x[:32], options=options, runs=runs),
    }


def pruning_costs(model, point, curve, x, options, runs) -> list[dict]:
    """Cost of the original model and of the pruned models the report would ship."""
    rows = [{"variant": "original", "channels_pruned": 0, "clean_accuracy": 1.0,
             "physically_removed": True, **model_cost(model, x, options, runs)}]
    for variant, rule in (("threshold 0.04", StopRule()), ("50 %", StopRule("fraction", 0.5))):
        count = channels_to_prune(curve, rule)
        result = prune_channels(model, point, curve.order[:count]) if count else None
        pruned = model if result is None else result.model
        rows.append({"variant": variant, "channels_pruned": count, "clean_accuracy": curve.clean_accuracy[count],
                     "physically_removed": True if result is None else result.physically_removed,
                     **model_cost(pruned, x, options, runs)})
    return rows


def bench_case(case: Case, args: argparse.Namespace, folder: Path) -> dict:
    options = RuntimeOptions(device=args.device, threads=args.threads)
    model = load_model(case.build(folder)).model
    point = pick_point(model, case.conv)
    x = make_inputs(model, args.samples)
    labels = predict(ModelRunner(model, options=options), ArrayDataset(x), args.batch_size)
    dataset = ArrayDataset(x, labels, source=f"{case.name} random inputs")
    steps = list(range(point.channels))

    profile_s, profile_runs, profile = median_time(args.repeats, profile_model, model, point, dataset,
                                                   options=options, batch_size=args.batch_size)
    order = profile.pruning_order()
    fast_s, fast_runs, curve = median_time(args.repeats, measure_curve, model, point, order, dataset,
                                           options=options, batch_size=args.batch_size)
    breakdown = fast_breakdown(model, point, dataset, order, steps, options, args.batch_size)
    timed_steps = naive_steps(point.channels, args.naive_steps)
    naive = naive_curve(model, point, dataset, order, options, args.batch_size, timed_steps)
    naive_predictions = naive.pop("predictions")
    check = compare(breakdown.pop("predictions")[timed_steps], naive_predictions)
    check["accuracy_identical"] = [curve.clean_accuracy[k] for k in timed_steps] == [
        accuracy(p, labels) for p in naive_predictions]
    return {
        "model": case.name, "note": case.note, "prune_point": point.label, "tensor": point.tensor,
        "removable": point.removable, "channels": point.channels,
        "channel_axis": point.channel_axis, "input_shape": list(x.shape[1:]), "samples": len(x),
        "path": curve.sweep_method, "profile_pass_s": profile_s, "fast_s": fast_s, "naive_s": naive["total_s"],
        "speedup": naive["total_s"] / fast_s, "passes": fast_s / profile_s,
        "meets_speed_goal": naive["total_s"] / fast_s >= SPEED_GOAL, "meets_pass_goal": fast_s / profile_s <= PASSES_GOAL,
        "timings": {"profile_runs_s": profile_runs, "fast_runs_s": fast_runs, "fast_breakdown": breakdown, "naive": naive},
        "check": check, "clean_accuracy": curve.clean_accuracy,
        "cost": pruning_costs(model, point, curve, x, options, args.latency_runs),
    }


def print_tables(rows: list[dict]) -> None:
    print(f"\n{'model':<30}{'C':>5}  {'path':<14}{'profile s':>10}{'fast s':>9}{'naive s':>10}{'speedup':>9}"
          f"{'passes':>8}  identical  goals")
    for r in rows:
        approx = "~" if r["timings"]["naive"]["extrapolated"] else " "
        print(f"{r['model']:<30}{r['channels']:>5}  {r['path']:<14}{r['profile_pass_s']:>10.3f}{r['fast_s']:>9.3f}"
              f"{r['naive_s']:>9.2f}{approx}{r['speedup']:>8.1f}x{r['passes']:>8.2f}  {str(r['check']['identical']):<9}  "
              f"{'met' if r['meets_speed_goal'] and r['meets_pass_goal'] else 'MISSED'}")
    print(f"\n{'model':<30}{'variant':<16}{'pruned':>7}{'acc':>7}{'params':>10}{'MFLOPs':>9}"
          f"{'ms b=1':>9}{'ms b=32':>9}  removed")
    for r in rows:
        for c in r["cost"]:
            print(f"{r['model']:<30}{c['variant']:<16}{c['channels_pruned']:>7}{c['clean_accuracy']:>7.3f}"
                  f"{c['parameters']:>10}{c['flops'] / 1e6:>9.2f}{c['latency_ms_batch1']:>9.3f}"
                  f"{c['latency_ms_batch32']:>9.3f}  {c['physically_removed']}")


def machine() -> dict:
    return {"platform": platform.platform(), "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0], "processor": platform.processor()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the profile pass and fast curve (median)")
    parser.add_argument("--latency-runs", type=int, default=30)
    parser.add_argument("--naive-steps", type=int, default=12,
                        help="time the naive way on this many evenly spaced steps when a point has more channels "
                             "(0: every step)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 samples, 1 repeat, 5 latency runs")
    parser.add_argument("--out", type=Path, default=RESULTS / "prune_sweep.json")
    parser.add_argument("--only", nargs="*", help="benchmark only these models (names as printed)")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.repeats, args.latency_runs = 64, 1, 5
    cases = [c for c in CASES if not args.only or c.name in args.only]
    if not torchvision_zoo.available():
        print("torchvision is not installed: skipping the tv_* cases (install the `test` extra)")
        cases = [c for c in cases if not c.name.startswith("tv_")]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        rows = []
        for case in cases:
            print(f"benchmarking {case.name} ...", flush=True)
            rows.append(bench_case(case, args, Path(folder)))
    print_tables(rows)
    payload = {
        "benchmark": "prune_sweep",
        "settings": vars(args),
        "goals": {"speedup_at_least": SPEED_GOAL, "profiling_passes_at_most": PASSES_GOAL},
        "machine": {**machine(), "load_average_1m_at_start": load_before},
        "versions": {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
                     "torch": torch.__version__},
        "results": rows,
    }
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    failed = [r["model"] for r in rows if not (r["check"]["identical"] and r["check"]["accuracy_identical"])]
    if failed:
        print(f"FAILED: fast and naive curves differ for {', '.join(failed)}", file=sys.stderr)
        return 1
    for r in rows:
        if not (r["meets_speed_goal"] and r["meets_pass_goal"]):
            print(f"GOAL MISSED for {r['model']}: {r['speedup']:.1f}x (goal >= {SPEED_GOAL:g}x), "
                  f"{r['passes']:.2f} profiling passes (goal <= {PASSES_GOAL:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
