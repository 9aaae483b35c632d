"""Converter coverage: does each zoo model convert to PyTorch, how exactly, and how fast.

For every model of the surgery test zoo (tests/model_zoo.py: torch architectures
exported with the legacy and dynamo exporters, plus the tf2onnx/Keras-NHWC and
Caffe-style helper graphs) and its pruned variant (fp_onnx.surgery, first two
channels of the default prune point), this measures for fp-onnx's converter
(`fp_onnx.converters.onnx_to_torch`) and, when importable, onnx2torch:

* converts: yes, or the error's first line;
* max |torch - onnxruntime| and that divided by max |onnxruntime| (float32,
  batch 8 where the graph's batch is symbolic, else the fixed batch);
* conversion time (best of 3, seconds).

onnx2torch is deliberately not a dependency (no release since 2024, pulls
torchvision). To fill its column, run this script from a separate venv:

    python3.11 -m venv /tmp/o2t-venv
    /tmp/o2t-venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch torchvision
    /tmp/o2t-venv/bin/pip install onnx2torch -e /work/main   # or your checkout
    /tmp/o2t-venv/bin/python bench/converter_coverage.py

    python bench/converter_coverage.py [--no-pruned]

Prints a table and writes bench/results/converter_coverage.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import model_zoo  # noqa: E402

from fp_onnx.converters import onnx_to_torch  # noqa: E402
from fp_onnx.runtime import RuntimeOptions, create_session  # noqa: E402

RESULTS = ROOT / "bench" / "results"
HELPER_BUILDERS = {"keras_nhwc": model_zoo.build_keras_nhwc_model, "caffe": model_zoo.build_caffe_style_model}


def onnx2torch_convert():
    """onnx2torch's `convert`, or None when it is not installed in this interpreter."""
    try:
        from onnx2torch import convert
    except ImportError:
        return None
    return convert


def load_case(name: str, exporter: str, folder: Path) -> onnx.ModelProto:
    if exporter == "helper":
        return model_zoo.name_nodes(HELPER_BUILDERS[name]())
    return model_zoo.load_for_tests(model_zoo.export_zoo(name, exporter, folder))


def pruned(model: onnx.ModelProto) -> onnx.ModelProto | None:
    try:
        from fp_onnx.prune_point import resolve_prune_point
        from fp_onnx.surgery import prune_channels
    except ImportError:
        return None
    result = prune_channels(model, resolve_prune_point(model, None), [0, 1])
    return onnx.shape_inference.infer_shapes(result.model)


def measure(convert, model: onnx.ModelProto) -> dict:
    """Conversion outcome, error against onnxruntime and best-of-3 conversion time."""
    times, module = [], None
    try:
        for _ in range(3):
            start = time.perf_counter()
            module = convert(model)
            times.append(time.perf_counter() - start)
    except Exception as error:  # a peer converter may fail in any way; record it
        return {"converts": False, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"}
    feeds = model_zoo.random_input(model, 8, seed=1)
    reference = create_session(model, RuntimeOptions(device="cpu")).run(None, feeds)
    try:
        with torch.no_grad():
            out = module.eval()(*[torch.from_numpy(v) for v in feeds.values()])
    except Exception as error:
        return {"converts": False, "error": f"runs: {type(error).__name__}: {str(error).splitlines()[0][:100]}"}
    outputs = out if isinstance(out, (tuple, list)) else (out,)
    diff = max(float(np.abs(o.numpy().astype(np.float64) - r).max()) for o, r in zip(outputs, reference))
    scale = max(float(np.abs(r).max()) for r in reference)
    return {"converts": True, "max_abs_error": diff, "rel_error": diff / scale, "seconds": min(times)}


def describe(result: dict | None) -> str:
    if result is None:
        return "not installed"
    if not result["converts"]:
        return f"no ({result['error'][:40]})"
    return f"yes  {result['max_abs_error']:.1e} / {result['rel_error']:.1e}  {result['seconds'] * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-pruned", action="store_true", help="skip the pruned variants")
    args = parser.parse_args()
    peer = onnx2torch_convert()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, exporter in model_zoo.zoo_cases():
            model = load_case(name, exporter, Path(tmp))
            variants = [("", model)]
            if not args.no_pruned:
                variants.append((" pruned", pruned(model)))
            for suffix, variant in variants:
                if variant is None:
                    continue
                rows.append({
                    "model": f"{name}{suffix}", "exporter": exporter,
                    "ops": sorted({n.op_type for n in variant.graph.node}),
                    "fp_onnx": measure(onnx_to_torch, variant),
                    "onnx2torch": measure(peer, variant) if peer else None,
                })
    print(f"{'model':<22} {'exporter':<8} {'fp-onnx: converts  abs / rel error  time':<44} onnx2torch")
    for row in rows:
        print(f"{row['model']:<22} {row['exporter']:<8} {describe(row['fp_onnx']):<44} {describe(row['onnx2torch'])}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"machine": platform.platform(), "torch": torch.__version__, "onnxruntime": ort.__version__,
               "onnx2torch": "installed" if peer else "not installed", "rows": rows}
    (RESULTS / "converter_coverage.json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
