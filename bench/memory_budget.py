"""Peak memory of `fp-onnx prune` on a large vendor model, with the default budget and a set one.

    python bench/memory_budget.py [--samples 16] [--budgets auto 4GiB]

The model is torchvision's vgg11_bn (133 M parameters) exported by torch's dynamo
exporter at 64x64 inputs (external data; its adaptive pooling becomes GatherND and
large gathered tensors after the last conv). Before the memory budget, the default
`prune` grew to 21.5 GB here: the prune sweep stacked 8192 rows into the graph after
the prune point, sized by the prune-point tensor alone. Each run is a subprocess;
its peak resident set comes from getrusage. Needs torchvision (not a dependency of
fp-onnx); writes bench/results/memory_budget.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

# A torchvision wheel built against CUDA torch fails to import on CPU torch because its C++ ops are
# missing; declaring their schemas is enough for the Python model definitions (nothing calls them).
_TORCHVISION_SCHEMAS = [
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, bool aligned) -> Tensor",
    "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, SymInt batch_size, SymInt channels, "
    "SymInt height, SymInt width) -> Tensor",
    "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, "
    "SymInt width) -> Tensor",
    "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, SymInt stride_h, "
    "SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, "
    "SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
    "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, "
    "SymInt groups, SymInt offset_groups, bool use_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
]


def import_torchvision():
    try:
        import torchvision
    except RuntimeError:  # "operator torchvision::nms does not exist": a CUDA wheel on CPU torch
        library = torch.library.Library("torchvision", "DEF")
        for schema in _TORCHVISION_SCHEMAS:
            library.define(schema)
        import_torchvision.library = library  # keep the definitions alive
        import torchvision
    return torchvision


def export_vgg(folder: Path, samples: int) -> tuple[Path, Path]:
    torchvision = import_torchvision()
    torch.manual_seed(0)
    model = torchvision.models.vgg11_bn().eval()
    path = folder / "vgg11_bn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 3, 64, 64),), str(path), dynamo=True, input_names=["input"],
                          output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    rng = np.random.default_rng(0)
    data = folder / "clean.npz"
    np.savez(data, x=rng.standard_normal((samples, 3, 64, 64)).astype(np.float32), y=rng.integers(0, 1000, samples))
    return path, data


def peak_of(command: list[str]) -> dict:
    """Run `command`; its exit code, seconds and peak RSS (this process's children only run one at a time)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kib <= before:
        print("warning: an earlier child had a higher peak; this run's peak is not separable", file=sys.stderr)
    lines = (result.stdout + result.stderr).strip().splitlines()
    return {"exit_code": result.returncode, "seconds": round(seconds, 1), "peak_rss_gib": round(peak_kib / 2**20, 2),
            "last_line": lines[-1] if lines else ""}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--budgets", nargs="+", default=["4GiB", "auto"],
                        help="--max-memory values, smallest first (getrusage keeps the largest peak so far)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "memory_budget.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fp-onnx-memory-"))
    model, data = export_vgg(work, args.samples)
    executable = str(Path(sys.executable).parent / "fp-onnx")
    runs = []
    for budget in args.budgets:
        command = [executable, "prune", str(model), "--data", str(data), "--out", str(work / f"out-{budget}"),
                   "--device", "cpu", "--channels", "64", "--max-memory", budget]
        runs.append({"max_memory": budget, **peak_of(command)})
        print(f"--max-memory {budget:<6} exit {runs[-1]['exit_code']}  {runs[-1]['seconds']:>7.1f} s  "
              f"peak RSS {runs[-1]['peak_rss_gib']:.2f} GiB", flush=True)
    report = {"model": "torchvision vgg11_bn, dynamo export, 3x64x64, external data",
              "samples": args.samples, "batch_size_flag": 64, "machine": platform.platform(),
              "cpus": __import__("os").cpu_count(), "runs": runs,
              "before_the_budget": "21.5 GB resident, killed (issue 11, item 15)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(run["exit_code"] == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
