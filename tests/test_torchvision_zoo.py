"""The real-exporter zoo: torchvision classifiers, each exported by both torch exporters.

For every (architecture, exporter): `layers` picks the feature map the classifier head reads;
`prune --fraction 0.5` writes a model that equals the masked reference (<= 1e-5 relative) and is
physically smaller unless the report justifies a mask; the ONNX -> torch converter matches
onnxruntime on the pruned model; `finetune --epochs 1` writes a model with the vendor's signature.
Each model is exported once per session (conftest.py); the CLI runs once per case and the tests
read its outputs.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import model_zoo
import torchvision_zoo
from fp_onnx.cli.main import cli
from fp_onnx.converters import onnx_to_torch
from fp_onnx.inference import ModelRunner, predictions
from fp_onnx.prune_point import find_prune_points, resolve_prune_point
from fp_onnx.runtime import RuntimeOptions
from fp_onnx.signature import signature_of
from fp_onnx.surgery import mask_channels

CASES = [(name, exporter) for name in torchvision_zoo.CLASSIFIERS for exporter in ("legacy", "dynamo")]
# Where the channels can only be forced to zero: (architecture, exporter) -> the op that needs them.
# ConvNeXt's head normalises the pooled features over the channels (LayerNorm2d); the dynamo exporter
# writes its `as_strided` as a 1-D Reshape and a Gather of computed indices before that LayerNorm.
MASKED = {("convnext_tiny", "legacy"): "LayerNormalization", ("convnext_tiny", "dynamo"): "Reshape"}
HEAD_READERS = {"GlobalAveragePool", "ReduceMean", "Flatten", "Reshape", "AveragePool", "Conv"}
SAMPLES, BATCH = 16, 8
_runs: dict[tuple, dict] = {}


def _run(torchvision_path, tmp_path_factory, name: str, exporter: str, randomise: bool = True) -> dict:
    """Export, make data, and run `prune --fraction 0.5` then (for randomised weights) `finetune --epochs 1`
    on the pruned model, once per case; returns paths and the loaded models."""
    key = (name, exporter, randomise)
    if key in _runs:
        return _runs[key]
    path = torchvision_path(name, exporter, randomise)
    model = model_zoo.load_for_tests(path)
    folder = tmp_path_factory.mktemp(f"{name}_{exporter}")
    x = np.random.default_rng(0).random((SAMPLES, *[d.dim_value for d in model.graph.input[0].type.tensor_type
                                                   .shape.dim[1:]]), dtype=np.float32)
    labels = predictions(ModelRunner(model, options=RuntimeOptions(device="cpu")).run(x)["logits"])
    np.savez(folder / "clean.npz", x=x, y=labels)
    # Random weights, labels from the model itself: half the channels gone costs accuracy, and these
    # tests check exactness, not accuracy, so the ship guard is opened (--max-accuracy-drop 1).
    common = ["--data", folder / "clean.npz", "--device", "cpu", "--batch-size", BATCH,
              "--max-accuracy-drop", "1"]
    pruned = CliRunner().invoke(cli, [str(a) for a in ["prune", path, "--fraction", "0.5", "--out",
                                                       folder / "prune", *common]])
    assert pruned.exit_code == 0, pruned.output
    # A small learning rate: random ResNet-50 activations reach the hundreds, and the default 1e-3 turns
    # one epoch on 13 samples into NaN weights (what fine-tuning does with real data is not tested here).
    if randomise:
        tuned = CliRunner().invoke(cli, [str(a) for a in ["finetune", folder / "prune" / "pruned.onnx", "--epochs",
                                                          "1", "--lr", "1e-4", "--out", folder / "finetune", *common]])
        assert tuned.exit_code == 0, tuned.output
    _runs[key] = {"name": name, "exporter": exporter, "path": path, "model": model, "folder": folder, "x": x,
                  "report": json.loads((folder / "prune" / "prune_curve.json").read_text()),
                  "pruned": onnx.load(folder / "prune" / "pruned.onnx"),
                  "finetuned": onnx.load(folder / "finetune" / "finetuned.onnx") if randomise else None}
    return _runs[key]


@pytest.fixture
def case(request, torchvision_path, tmp_path_factory):
    return _run(torchvision_path, tmp_path_factory, *request.param)


def _outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ModelRunner(model, options=RuntimeOptions(device="cpu")).run(x)[model.graph.output[0].name]


def _relative_error(got: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - reference).max() / max(np.abs(reference).max(), 1e-12))


@pytest.mark.parametrize("case", CASES, indirect=True, ids=[f"{n}-{e}" for n, e in CASES])
def test_default_point_is_the_feature_map_the_head_reads(case):
    name = case["name"]
    point = next(p for p in find_prune_points(case["model"]) if p.is_default)
    assert torchvision_zoo.CLASSIFIERS[name].feature_module in point.names
    readers = {n.op_type for n in case["model"].graph.node if point.tensor in n.input}
    assert readers & HEAD_READERS and point.spatial and point.channels > 1
    assert point.removable == ((name, case["exporter"]) not in MASKED), point.mask_reason
    assert case["report"]["prune_point"]["tensor"] == point.tensor


@pytest.mark.parametrize("case", CASES, indirect=True, ids=[f"{n}-{e}" for n, e in CASES])
def test_pruned_half_equals_the_masked_reference_and_shrinks(case):
    name = case["name"]
    report, model, pruned = case["report"], case["model"], case["pruned"]
    point = resolve_prune_point(model, report["prune_point"]["tensor"])
    channels = report["pruned_channels"]
    assert len(channels) == point.channels // 2
    reference = mask_channels(model, point, channels)
    x = np.random.default_rng(1).standard_normal((3, *case["x"].shape[1:])).astype(np.float32)
    assert _relative_error(_outputs(pruned, x), _outputs(reference, x)) <= 1e-5
    assert signature_of(pruned) == signature_of(model)
    actions = report["surgery"]
    if (name, case["exporter"]) in MASKED:
        kept = [a for a in actions if a["action"] == "kept"]
        assert kept and kept[0]["op_type"] == MASKED[name, case["exporter"]] and kept[0]["detail"]
        assert report["cost_after"]["parameters"] == report["cost_before"]["parameters"]
    else:
        assert not any(a["action"] == "masked" for a in actions)
        assert report["cost_after"]["parameters"] < report["cost_before"]["parameters"]
        assert report["cost_after"]["flops"] < report["cost_before"]["flops"]


@pytest.mark.parametrize("case", CASES, indirect=True, ids=[f"{n}-{e}" for n, e in CASES])
def test_converter_matches_onnxruntime_on_the_pruned_model(case):
    pruned = case["pruned"]
    module = onnx_to_torch(pruned).eval()
    x = case["x"][:2]
    with torch.no_grad():
        got = module(torch.from_numpy(x))
    assert _relative_error(got.numpy(), _outputs(pruned, x)) <= 1e-4


@pytest.mark.parametrize("case", CASES, indirect=True, ids=[f"{n}-{e}" for n, e in CASES])
def test_finetuned_model_keeps_the_vendor_signature(case):
    finetuned = case["finetuned"]
    onnx.checker.check_model(finetuned, full_check=True)
    assert signature_of(finetuned) == signature_of(case["model"])
    assert np.isfinite(_outputs(finetuned, case["x"][:2])).all()


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_residual_pruning_changes_what_the_classifier_reads(torchvision_path, tmp_path_factory, exporter):
    """resnet18: the default point is the last block's output, and pruning it removes input features
    of the classifier (its Gemm reads fewer columns), so the classifier sees a different feature set."""
    case = _run(torchvision_path, tmp_path_factory, "resnet18", exporter)
    point = resolve_prune_point(case["model"], None)
    assert point.chain[0] in {n.name for n in case["model"].graph.node if n.op_type == "Add"}
    assert resolve_prune_point(case["model"], "layer4.1") == point  # the torch module path, both exporters

    def gemm_inputs(model: onnx.ModelProto) -> int:
        gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
        weights = {t.name: t for t in model.graph.initializer}
        transposed = any(a.name == "transB" and a.i for a in gemm.attribute)
        return weights[gemm.input[1]].dims[1 if transposed else 0]

    assert gemm_inputs(case["model"]) == point.channels
    assert gemm_inputs(case["pruned"]) == point.channels - len(case["report"]["pruned_channels"])
    x = case["x"][:4]
    assert not np.allclose(_outputs(case["pruned"], x), _outputs(case["model"], x))
    table = CliRunner().invoke(cli, ["layers", str(case["path"])])
    default_row = next(line for line in table.output.splitlines() if line.startswith("*"))
    assert table.exit_code == 0 and "layer4.1" in default_row and "removed" in default_row
    assert "masked: Add" in table.output  # the conv branches inside blocks: their Add keeps the channels


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_default_init_export_with_deduplicated_constants_prunes(torchvision_path, tmp_path_factory, exporter):
    """torchvision's own init: the TorchScript exporter shares equal constants through Identity nodes
    (it used to fail with exit 70, 'input 2 of Conv ... is computed, not a constant')."""
    case = _run(torchvision_path, tmp_path_factory, torchvision_zoo.DEFAULT_INIT, exporter, randomise=False)
    if exporter == "legacy":
        assert any(n.op_type == "Identity" for n in case["model"].graph.node)
    point = resolve_prune_point(case["model"], case["report"]["prune_point"]["tensor"])
    reference = mask_channels(case["model"], point, case["report"]["pruned_channels"])
    x = case["x"][:3]
    assert _relative_error(_outputs(case["pruned"], x), _outputs(reference, x)) <= 1e-5
    assert case["report"]["cost_after"]["parameters"] < case["report"]["cost_before"]["parameters"]


def test_sweep_runs_step_by_step_when_the_tail_reads_batch_dependent_indices(torchvision_path, tmp_path_factory):
    """dynamo's ConvNeXt head flattens the pooled features to 1-D and gathers them with indices computed
    from the batch size: stacking prune steps along the batch axis would read the wrong samples."""
    from fp_onnx.data import ArrayDataset
    from fp_onnx.sweep import PruneSweep

    case = _run(torchvision_path, tmp_path_factory, "convnext_tiny", "dynamo")
    model, x = case["model"], case["x"][:6]
    point = resolve_prune_point(model, None)
    order = np.random.default_rng(1).permutation(point.channels)
    steps = [0, point.channels // 2, point.channels - 1]
    sweep = PruneSweep(model, point, RuntimeOptions(device="cpu"))
    assert not sweep.cut.stackable
    fast = sweep.predictions(ArrayDataset(x), order, steps, batch_size=3)
    for row, k in enumerate(steps):
        reference = mask_channels(model, point, order[:k]) if k else model
        np.testing.assert_array_equal(fast[row], predictions(_outputs(reference, x)))
