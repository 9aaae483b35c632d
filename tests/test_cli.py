"""The command line: output files, exit codes, and one-line errors for bad input."""
from __future__ import annotations

import json
import pickle

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import model_zoo
from fp_onnx.cli.main import INTERNAL_ERROR, cli


@pytest.fixture(scope="module")
def vendor(tmp_path_factory, zoo_path):
    """A vendor folder: the dynamo-exported AlexNet (with its .onnx.data) and clean data."""
    folder = tmp_path_factory.mktemp("vendor")
    model = model_zoo.export_zoo("alexnet", "dynamo", folder)
    rng = np.random.default_rng(0)
    np.savez(folder / "clean.npz", x=rng.standard_normal((24, 3, 32, 32)).astype(np.float32),
             y=rng.integers(0, 10, 24))
    np.savez(folder / "triggered.npz", x=rng.standard_normal((12, 3, 32, 32)).astype(np.float32) + 1,
             y=rng.integers(0, 10, 12))
    return folder, model


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def assert_one_line_error(result, code, pattern):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert pattern in lines[0]
    assert "Traceback" not in result.output


def test_layers_table_and_json(vendor):
    _, model = vendor
    table = invoke("layers", model)
    assert table.exit_code == 0, table.output
    as_json = invoke("layers", model, "--json")
    layers = json.loads(as_json.output)["layers"]
    assert sum(layer["is_default"] for layer in layers) == 1 and len(layers) == 5
    default = next(layer for layer in layers if layer["is_default"])
    assert default["chain"][0] == "node_conv2d_4" and default["removable"]
    assert "* default" in table.output and default["tensor"] in table.output and default["label"] in table.output


def test_profile_writes_json_and_plot(vendor, tmp_path):
    folder, model = vendor
    result = invoke("profile", model, "--data", folder / "clean.npz", "--trigger-data", folder / "triggered.npz",
                    "--untargeted", "--out", tmp_path, "--device", "cpu", "--batch-size", "5")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "profile.json").read_text())
    assert report["prune_point"]["chain"][0] == "node_conv2d_4"
    assert len(report["clean"]["mean_activation"]) == 16 and report["clean"]["samples"] == 24
    assert report["triggered"]["samples"] == 12 and 0 <= report["attack_success_rate"] <= 1
    assert report["model"]["sha256"] and (tmp_path / "activations.png").stat().st_size > 1000
    assert "attack success rate" in result.output
    assert not list(tmp_path.glob(".*tmp"))


def test_profile_by_layer_name(vendor, tmp_path):
    folder, model = vendor
    result = invoke("profile", model, "--data", folder / "clean.npz", "--layer", "node_conv2d_2", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "profile.json").read_text())["prune_point"]["channels"] == 20


@pytest.mark.parametrize(
    "args,code,pattern",
    [
        (["layers", "{tmp}/absent.onnx"], 3, "no such file"),
        (["layers", "{tmp}/garbage.onnx"], 3, "not an ONNX model"),
        (["profile", "{model}", "--data", "{tmp}/absent.npz", "--out", "{tmp}/o"], 6, "no such file"),
        (["profile", "{model}", "--data", "{tmp}/evil.npz", "--out", "{tmp}/o"], 4, "refusing to unpickle"),
        (["profile", "{model}", "--data", "{tmp}/wrong.npz", "--out", "{tmp}/o"], 6, "do not fit model input"),
        (["profile", "{model}", "--data", "{folder}/clean.npz", "--layer", "nope", "--out", "{tmp}/o"], 2, "no layer named 'nope'"),
        (["profile", "{model}", "--data", "{folder}/clean.npz", "--trigger-data", "{folder}/triggered.npz", "--out", "{tmp}/o"], 2, "needs --target"),
        (["profile", "{model}", "--data", "{folder}/clean.npz", "--target", "3", "--out", "{tmp}/o"], 2, "give --trigger-data"),
        (["profile", "{model}", "--data", "{folder}/clean.npz", "--device", "tpu"], 2, "Invalid value for '--device'"),
        (["profile", "{model}"], 2, "Missing option '--data'"),
        (["frobnicate"], 2, "No such command"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(vendor, tmp_path, args, code, pattern):
    folder, model = vendor
    (tmp_path / "garbage.onnx").write_bytes(b"garbage")
    (tmp_path / "evil.npz").write_bytes(pickle.dumps([1, 2, 3]))
    np.savez(tmp_path / "wrong.npz", x=np.zeros((2, 32, 32, 3), np.float32))
    filled = [a.format(tmp=tmp_path, model=model, folder=folder) for a in args]
    result = invoke(*filled)
    assert_one_line_error(result, code, pattern)
    out = tmp_path / "o"
    assert not out.exists() or not any(out.iterdir())


def test_unexpected_exceptions_become_one_line(monkeypatch, vendor):
    _, model = vendor
    import fp_onnx.cli.layers as layers

    def explode(_model):
        raise RuntimeError("boom")

    monkeypatch.setattr(layers, "find_prune_points", explode)
    result = invoke("layers", model)
    assert_one_line_error(result, INTERNAL_ERROR, "internal error: RuntimeError: boom")


def test_help_and_version():
    assert invoke("--help").exit_code == 0
    assert "fp-onnx" in invoke("--version").output


def test_prune_writes_a_smaller_model_curve_and_plot(vendor, tmp_path):
    folder, model = vendor
    result = invoke("prune", model, "--data", folder / "clean.npz", "--fraction", "0.5", "--trigger-data",
                    folder / "triggered.npz", "--untargeted", "--out", tmp_path, "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "prune_curve.json").read_text())
    assert report["channels_pruned"] == 8 and len(report["steps"]) == 16
    assert report["cost_after"]["parameters"] < report["cost_before"]["parameters"]
    pruned = onnx.load(tmp_path / "pruned.onnx")
    onnx.checker.check_model(pruned, full_check=True)
    assert [i.name for i in pruned.graph.input] == ["input"] and [o.name for o in pruned.graph.output] == ["logits"]
    for name in ("prune_curve.png", "activations.png", "profile.json"):
        assert (tmp_path / name).stat().st_size > 0
    guard = report["guard"]  # 24 clean samples bound no cost within the limit: the guard passes, and says so
    assert guard["passed"] and guard["measured"]["accuracy_drop_interval"]["high"] > guard["limits"]["max_accuracy_drop"]
    assert "note: 24 clean samples cannot rule out a clean-accuracy cost of up to" in result.stderr


@pytest.mark.parametrize(
    "extra,pattern",
    [
        (["--threshold", "1.5"], "must lie in [0, 1]"),
        (["--threshold", "0.1", "--fraction", "0.2"], "choose one stop rule"),
        (["--channels", "16"], "at most 15"),
    ],
)
def test_prune_bad_flags(vendor, tmp_path, extra, pattern):
    folder, model = vendor
    result = invoke("prune", model, "--data", folder / "clean.npz", "--out", tmp_path / "o", *extra)
    assert_one_line_error(result, 2, pattern)
    assert not (tmp_path / "o" / "pruned.onnx").exists()
