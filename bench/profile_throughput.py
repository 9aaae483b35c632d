"""Profiling throughput: fp-onnx (onnxruntime) vs a PyTorch eager forward pass with a hook.

Same model, same batches, same machine, measured side by side: the two runs
alternate for several rounds and the median samples/s of each is compared, so
noise from a shared machine hits both. The models are the paper's three
architectures from the model zoo (random weights: throughput does not depend on
them), exported with torch's legacy exporter as a vendor would.

    python bench/profile_throughput.py [--samples 2048] [--batch-size 64] [--rounds 5] [--device cpu|cuda]

Prints a table and writes bench/results/profile_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from fp_onnx.data import ArrayDataset
from fp_onnx.loading import load_model
from fp_onnx.profile import profile_model
from fp_onnx.prune_point import resolve_prune_point
from fp_onnx.runtime import RuntimeOptions
from fp_onnx.models.architectures import ARCHITECTURES, prune_conv
from fp_onnx.models.export import export_onnx

RESULTS = Path(__file__).resolve().parent / "results"


def torch_profile_rate(module: torch.nn.Module, x: np.ndarray, batch_size: int, device: str) -> float:
    """Samples/s of an eager forward pass that accumulates per-channel means with a forward hook."""
    conv = prune_conv(module)
    totals = {}

    def hook(_module, _inputs, output):
        activated = torch.relu(output)
        totals["sum"] = totals.get("sum", 0) + activated.sum(dim=(0, 2, 3), dtype=torch.float64)

    handle = conv.register_forward_hook(hook)
    start = time.perf_counter()
    with torch.inference_mode():
        for begin in range(0, len(x), batch_size):
            module(torch.from_numpy(x[begin : begin + batch_size]).to(device))
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    handle.remove()
    return len(x) / elapsed


def ort_profile_rate(model, point, x: np.ndarray, batch_size: int, device: str) -> float:
    start = time.perf_counter()
    profile_model(model, point, ArrayDataset(x), options=RuntimeOptions(device=device), batch_size=batch_size)
    return len(x) / (time.perf_counter() - start)


def bench_architecture(name: str, args: argparse.Namespace, folder: Path) -> dict:
    torch.manual_seed(0)
    module = ARCHITECTURES[name]().eval()
    shape = module.input_shape
    path = export_onnx(module, folder / f"{name}.onnx", shape)
    model = load_model(path).model
    point = resolve_prune_point(model, None)
    x = np.random.default_rng(0).standard_normal((args.samples, *shape)).astype(np.float32)
    device = "cuda" if args.device == "cuda" else "cpu"
    module.to(device)
    ort_rates, torch_rates = [], []
    ort_profile_rate(model, point, x[: args.batch_size], args.batch_size, args.device)  # warm-up
    torch_profile_rate(module, x[: args.batch_size], args.batch_size, device)
    for _ in range(args.rounds):
        ort_rates.append(ort_profile_rate(model, point, x, args.batch_size, args.device))
        torch_rates.append(torch_profile_rate(module, x, args.batch_size, device))
    ort_rate, torch_rate = statistics.median(ort_rates), statistics.median(torch_rates)
    return {
        "architecture": name,
        "input_shape": list(shape),
        "prune_point": point.label,
        "fp_onnx_samples_per_s": ort_rate,
        "torch_eager_samples_per_s": torch_rate,
        "ratio": ort_rate / torch_rate,
        "rounds": {"fp_onnx": ort_rates, "torch_eager": torch_rates},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        rows = [bench_architecture(name, args, Path(folder)) for name in ARCHITECTURES]
    print(f"{'architecture':<16}{'fp-onnx (ORT) /s':>18}{'torch eager /s':>16}{'ratio':>8}")
    for row in rows:
        print(f"{row['architecture']:<16}{row['fp_onnx_samples_per_s']:>18.0f}{row['torch_eager_samples_per_s']:>16.0f}"
              f"{row['ratio']:>8.2f}")
    payload = {
        "benchmark": "profile_throughput",
        "settings": vars(args),
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": torch.get_num_threads()},
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "results": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "profile_throughput.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {RESULTS / 'profile_throughput.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
