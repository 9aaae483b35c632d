"""The whole defense on vendor files in styles torch does not export: Caffe-era and tf2onnx/Keras NHWC graphs.

Caffe style: fixed batch 1, initializers listed as graph inputs, Pad before MaxPool, Softmax output.
Keras style: NHWC input, layout Transposes, Reshape -> MatMul + Add, Softmax output.
The defended model must keep each vendor's own signature (the fixed batch of 1 included).
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import model_zoo
from fp_onnx.cli.main import cli
from fp_onnx.inference import ModelRunner, predictions
from fp_onnx.runtime import RuntimeOptions
from fp_onnx.signature import signature_of

STYLES = {"caffe": model_zoo.build_caffe_style_model, "keras_nhwc": model_zoo.build_keras_nhwc_model}


@pytest.fixture(scope="module", params=sorted(STYLES))
def vendor(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    model = STYLES[request.param]()
    path = folder / "model.onnx"
    onnx.save(model, path)
    shape = [d.dim_value or 96 for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(4).standard_normal((96, *shape[1:])).astype(np.float32)
    labels = predictions(ModelRunner(model, options=RuntimeOptions(device="cpu")).run(x)[model.graph.output[0].name])
    np.savez(folder / "clean.npz", x=x, y=labels)
    return path, folder / "clean.npz"


def test_fine_prune_keeps_the_vendor_signature(vendor, tmp_path):
    model, data = vendor
    # Random weights and one epoch: accuracy is not the point here, so the guard may accept any finite model.
    result = CliRunner().invoke(cli, ["fine-prune", str(model), "--data", str(data), "--fraction", "0.25",
                                      "--epochs", "1", "--device", "cpu", "--out", str(tmp_path),
                                      "--max-accuracy-drop", "1"])
    assert result.exit_code == 0, result.output
    defended = onnx.load(tmp_path / "defended.onnx")
    onnx.checker.check_model(defended, full_check=True)
    assert signature_of(defended) == signature_of(onnx.load(model))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["defense"]["prune"]["channels_pruned"] > 0
    assert report["cost"]["defended"]["parameters"] < report["cost"]["vendor"]["parameters"]


def test_profile_reports_fixed_batch_handling(vendor, tmp_path):
    model, data = vendor
    result = CliRunner().invoke(cli, ["profile", str(model), "--data", str(data), "--device", "cpu",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    profile = json.loads((tmp_path / "profile.json").read_text())
    assert profile["clean"]["accuracy"] == 1.0 and profile["clean"]["samples"] == 96
    fixed = signature_of(onnx.load(model)).inputs[0].shape[0] == 1
    assert any("batch size at 1" in note for note in profile["notes"]) == fixed
