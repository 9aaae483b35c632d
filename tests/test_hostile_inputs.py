"""Regression tests for the failure classes of issue 11: each hostile or unusual input either works
or ends in ONE `error:` line with the documented exit code (never exit 70, a traceback or a foreign line).

Each test builds its own tiny input from the shipped speech model or `onnx.helper` graphs.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from fp_onnx.cli.main import cli
from fp_onnx.data import open_dataset
from fp_onnx.errors import ResourceLimitError
from fp_onnx.loading import load_model
from fp_onnx.models import shipped_demo
from fp_onnx.outputs import write_bytes
from fuzzing.data_mutators import _npy_bytes
from fuzzing.model_mutators import point_to_external, with_function_constant

SHIPPED = shipped_demo()["model"].parent


@pytest.fixture()
def vendor(tmp_path):
    """A copy of the shipped model with 24 clean samples: (folder, model proto, model path, data path)."""
    folder = tmp_path / "vendor"
    folder.mkdir()
    shutil.copy(SHIPPED / "model.onnx", folder / "model.onnx")
    clean = np.load(SHIPPED / "clean_val.npz")
    np.savez(folder / "clean.npz", x=clean["x"][:24], y=clean["y"][:24])
    return folder, onnx.load(str(folder / "model.onnx")), folder / "model.onnx", folder / "clean.npz"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_error(result, code: int, pattern: str) -> None:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], result.output


def _external(model: onnx.ModelProto, folder: Path, location: str) -> onnx.ModelProto:
    """Move the first big initializer to external data at `location` (its bytes go to weights.bin)."""
    tensor = next(t for t in model.graph.initializer if len(t.raw_data) > 1024)
    (folder / "weights.bin").write_bytes(point_to_external(tensor, location))
    return model


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


# 1-4: external data --------------------------------------------------------------------------
def test_1_external_data_symlink_loop_is_unsafe(vendor):
    folder, model, path, _ = vendor
    os.symlink("loop_b.data", folder / "loop_a.data")
    os.symlink("loop_a.data", folder / "loop_b.data")
    assert_error(run("layers", _save(_external(model, folder, "loop_a.data"), path)), 4, "symlink loop")


def test_2_external_data_name_too_long_is_unsafe(vendor):
    folder, model, path, _ = vendor
    assert_error(run("layers", _save(_external(model, folder, "a" * 5000), path)), 4, "File name too long")


def test_3_symlink_inside_the_folder_is_followed(vendor):
    folder, model, path, data = vendor
    tensor = next(t for t in model.graph.initializer if len(t.raw_data) > 1024)
    name, expected = tensor.name, numpy_helper.to_array(tensor)
    os.symlink("weights.bin", folder / "link.bin")
    _save(_external(model, folder, "link.bin"), path)
    loaded = next(t for t in load_model(path).model.graph.initializer if t.name == name)
    np.testing.assert_array_equal(numpy_helper.to_array(loaded), expected)
    result = run("profile", path, "--data", data, "--out", folder / "out", "--device", "cpu")
    assert result.exit_code == 0, result.output


def test_4_external_data_in_a_function_constant_is_vetted(vendor, tmp_path):
    folder, model, path, data = vendor
    (tmp_path / "secret.bin").write_bytes(np.array(0.5, np.float32).tobytes())
    _save(with_function_constant(model, str(tmp_path / "secret.bin")), path)
    assert_error(run("layers", path), 4, "outside the model's folder")
    (folder / "shift.bin").write_bytes(np.array(0.5, np.float32).tobytes())
    _save(with_function_constant(onnx.load(str(SHIPPED / "model.onnx")), "shift.bin"), path)
    result = run("profile", path, "--data", data, "--out", folder / "out", "--device", "cpu")
    assert result.exit_code == 0, result.output


# 5-7: graphs ------------------------------------------------------------------------------------
def test_5_graph_without_outputs_is_a_bad_model(vendor):
    folder, model, path, data = vendor
    del model.graph.output[:]
    _save(model, path)
    assert_error(run("layers", path), 3, "has no outputs")
    assert_error(run("profile", path, "--data", data, "--out", folder / "out"), 3, "has no outputs")


def test_6_output_that_ignores_the_input_batch_is_a_bad_model(vendor):
    folder, model, path, data = vendor
    next(n for n in model.graph.node if n.name == "/pool/MaxPool").input[0] = "onnx::Conv_64"  # a weight
    _save(model, path)
    result = run("profile", path, "--data", data, "--out", folder / "out", "--device", "cpu")
    assert_error(result, 3, "does not follow the input batch")


def test_7_contrib_op_downstream_still_prunes(vendor):
    folder, model, path, data = vendor
    relu = next(n for n in model.graph.node if n.name == "/conv1/conv1.2/Relu")
    relu.op_type, relu.domain = "QuickGelu", "com.microsoft"
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    _save(model, path)
    result = run("prune", path, "--data", data, "--out", folder / "out", "--device", "cpu", "--fraction", "0.25")
    assert result.exit_code == 0, result.output
    assert onnx.load(str(folder / "out" / "pruned.onnx")).graph.node



def test_contrib_op_in_place_of_a_pool_is_not_an_internal_error(vendor):
    """Found by `bench/fuzz.py` (seed 0, case 45): a MaxPool swapped for com.microsoft::Gelu left a feature
    chain ending at a tensor with no known channel axis. The chain now stops before it."""
    folder, model, path, data = vendor
    pool = next(n for n in model.graph.node if n.name == "/pool/MaxPool")
    pool.op_type, pool.domain = "Gelu", "com.microsoft"
    del pool.attribute[:]
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    _save(model, path)
    assert run("layers", path).exit_code == 0
    result = run("profile", path, "--data", data, "--out", folder / "out", "--device", "cpu")
    assert result.exit_code != 70 and "internal error" not in result.output, result.output


def test_a_flatten_of_an_absurd_number_of_features_is_masked_not_mapped(tmp_path):
    """Found by `bench/fuzz.py` (seed 0, case 805): an input dimension of 2**62 made the flatten's feature
    count overflow int64; `layers` now says the channels cannot be removed there, and why."""
    import model_zoo

    model = model_zoo.build_keras_nhwc_model()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 1 << 62
    result = run("layers", _save(model, tmp_path / "model.onnx"))
    assert result.exit_code == 0, result.output
    assert "a classifier head can read" in result.output

# 8-11: data and flags ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind,pattern", [("scalar", "is a scalar"), ("group", "is a group")])
def test_8_hdf5_x_that_is_not_an_array(vendor, kind, pattern):
    h5py = pytest.importorskip("h5py")
    folder, _, path, _ = vendor
    with h5py.File(folder / "data.h5", "w") as file:
        if kind == "scalar":
            file["x"] = 1.0
        else:
            file.create_group("x")
    assert_error(run("profile", path, "--data", folder / "data.h5", "--out", folder / "out"), 6, pattern)


@pytest.mark.parametrize("names", [["0", "1", "9" * 30], ["0", "1", "²"]])
def test_9_image_classes_with_odd_numeric_names(vendor, names):
    folder, _, path, _ = vendor
    from PIL import Image

    for name in names:
        (folder / "images" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((32, 32), 40 * i, np.uint8)).save(folder / "images" / name / f"{i}.png")
    dataset = open_dataset(folder / "images")
    np.testing.assert_array_equal(np.unique(dataset.labels), [0, 1, 2])  # positions: not every name is a class id
    result = run("profile", path, "--data", folder / "images", "--grayscale", "--out", folder / "out", "--device", "cpu")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("container", ["npy", "npz"])
def test_10_header_claiming_10_to_the_12_samples(vendor, container):
    folder, _, path, _ = vendor
    raw = _npy_bytes((10**12, 1, 32, 32), "<f4", b"\0" * 4096)
    data = folder / f"data.{container}"
    if container == "npy":
        data.write_bytes(raw)
    else:
        with zipfile.ZipFile(data, "w") as archive:
            archive.writestr("x.npy", raw)
    assert_error(run("profile", path, "--data", data, "--out", folder / "out"), 6, "claims 4096000000000000 bytes")


def test_10_npz_member_larger_than_the_memory_budget(tmp_path):
    np.savez(tmp_path / "data.npz", x=np.zeros((64, 1, 32, 32), np.float32))
    with pytest.raises(ResourceLimitError, match="more than the memory budget"):
        open_dataset(tmp_path / "data.npz", memory_budget=1000)


@pytest.mark.parametrize("flags,pattern", [
    (["--std", "1,2,3,4,5"], "give 1 value or one per channel (3 for RGB"),
    (["--mean", "0.1,0.2"], "give 1 value or one per channel (3 for RGB"),
    (["--image-size", "0x0"], "each side at least 1"),
    (["--max-model-size", "9" * 400], "too large"),
    (["--max-memory", "lots"], "--max-memory lots: use a number"),
    (["--scale", "nan"], "not a finite number"),
])
def test_11_bad_preprocessing_and_size_flags(vendor, flags, pattern):
    folder, _, path, _ = vendor
    from PIL import Image

    (folder / "images" / "0").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(folder / "images" / "0" / "a.png")
    assert_error(run("profile", path, "--data", folder / "images", "--out", folder / "out", *flags), 2, pattern)


# 12: onnxruntime's own log lines -------------------------------------------------------------------
def test_12_onnxruntime_logs_never_reach_stderr(vendor):
    """A conv weight with more output channels than its bias: onnxruntime fails inside a node and would
    print an `[E:onnxruntime:...]` line before our error (C++ logging, so only a subprocess sees it)."""
    folder, model, path, data = vendor
    weight = next(t for t in model.graph.initializer if t.name == "onnx::Conv_64")
    array = numpy_helper.to_array(weight)
    weight.CopyFrom(numpy_helper.from_array(np.resize(array, (array.shape[0] + 2, *array.shape[1:])), weight.name))
    _save(model, path)
    command = [Path(sys.executable).parent / "fp-onnx", "profile", path, "--data", data, "--out", folder / "out",
               "--device", "cpu"]
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode in (3, 6) and len(lines) == 1 and lines[0].startswith("error: "), result.stderr


# 13: opsets ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version,pattern", [(1000, "knows opsets 1.."), (27, "newer than onnxruntime")])
def test_13_opsets_nobody_implements_are_refused_at_load(vendor, version, pattern):
    _, model, path, _ = vendor
    model.opset_import[0].version = version
    assert_error(run("layers", _save(model, path)), 3, pattern)


# 14: fixed batch 1 -------------------------------------------------------------------------------------
class FixedBatchNet(torch.nn.Module):
    """Concatenates a batch-1 constant to the flattened features (`torch.cat([x.view(1, -1), extra], 1)`):
    exported with batch 1, the graph breaks with any larger batch, so it can only run sample by sample."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(4),
                                            torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
        self.register_buffer("extra", torch.ones(1, 4))
        self.fc = torch.nn.Linear(8 * 4 * 4 + 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([self.features(x).view(1, -1), self.extra], 1))


def test_14_fixed_batch_graph_that_cannot_batch_prunes_one_sample_at_a_time(vendor):
    folder, _, path, data = vendor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(FixedBatchNet().eval(), (torch.randn(1, 1, 32, 32),), str(path), dynamo=False,
                          input_names=["input"], output_names=["logits"])
    result = run("prune", path, "--data", data, "--out", folder / "out", "--device", "cpu", "--channels", "3")
    assert result.exit_code == 0, result.output
    assert "one sample at a time" in result.output
    pruned = onnx.load(str(folder / "out" / "pruned.onnx"))
    assert pruned.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1  # the vendor's signature stays


# 15: memory (the budget itself: tests/test_memory.py) ------------------------------------------
def test_15_a_model_whose_one_sample_exceeds_the_budget_is_refused(vendor):
    folder, _, path, data = vendor
    assert_error(run("profile", path, "--data", data, "--out", folder / "out", "--max-memory", "100KB"), 4,
                 "of activations for ONE sample")


# 16: permissions -------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_16_outputs_respect_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        written = write_bytes(tmp_path / "model.onnx", b"bytes")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(written.stat().st_mode) == mode


# Found by the fuzz harness (tests/fuzzing) beyond the list --------------------------------
def _relu_as_if(model: onnx.ModelProto, relu_name: str) -> onnx.ModelProto:
    """Replace a Relu by an If on a constant whose branches compute the Relu (valid control flow)."""
    node = next(n for n in model.graph.node if n.name == relu_name)
    source = node.input[0]
    branch = lambda name: helper.make_graph([helper.make_node("Relu", [source], [f"{name}_out"])], name, [],  # noqa: E731
                                            [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)])
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "condition"))
    node.op_type = "If"
    node.input[:] = ["condition"]
    node.attribute.extend([helper.make_attribute("then_branch", branch("then")),
                           helper.make_attribute("else_branch", branch("else"))])
    return model


def test_control_flow_before_the_prune_point_of_a_fixed_batch_graph(tmp_path):
    """Batch-symbolic copies forget stale batch-1 shapes inside subgraphs too."""
    import model_zoo

    path = _save(_relu_as_if(model_zoo.build_caffe_style_model(), "relu1"), tmp_path / "model.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "clean.npz", x=rng.standard_normal((12, 3, 32, 32)).astype(np.float32), y=rng.integers(0, 10, 12))
    result = run("prune", path, "--data", tmp_path / "clean.npz", "--out", tmp_path / "out", "--device", "cpu",
                 "--fraction", "0.25")
    assert result.exit_code == 0, result.output


def test_control_flow_after_the_prune_point_is_unsupported(vendor):
    folder, model, path, data = vendor
    _save(_relu_as_if(model, "/Relu_1"), path)
    assert_error(run("prune", path, "--data", data, "--out", folder / "out", "--device", "cpu"), 5,
                 "cannot cut through control flow")


def test_the_vendors_shape_claims_are_not_trusted(vendor):
    folder, model, path, data = vendor
    model = onnx.shape_inference.infer_shapes(model)
    for value in model.graph.value_info:
        value.type.tensor_type.shape.dim[-1].dim_value = 0
    _save(model, path)
    result = run("prune", path, "--data", data, "--out", folder / "out", "--device", "cpu", "--fraction", "0.25")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("change,code,pattern", [
    (lambda x, y: (x, y + 10), 6, "is not a class id of the model (0..9)"),
    (lambda x, y: (x, -y - 1), 6, "is not a class id"),
    (lambda x, y: (np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x), y), 6, "NaN or infinite"),
])
def test_labels_and_inputs_that_no_model_can_use(vendor, change, code, pattern):
    folder, _, path, data = vendor
    arrays = np.load(data)
    x, y = change(arrays["x"].astype(np.float32), arrays["y"])
    np.savez(folder / "odd.npz", x=x, y=y)
    assert_error(run("profile", path, "--data", folder / "odd.npz", "--out", folder / "out"), code, pattern)


@pytest.mark.parametrize("flags,pattern", [
    (["--target", "10"], "the model scores 10 classes"),
    (["--target", str(10**30)], "a class id is a whole number"),
])
def test_targets_must_be_class_ids(vendor, flags, pattern):
    folder, _, path, data = vendor
    result = run("profile", path, "--data", data, "--trigger-data", data, "--out", folder / "out", *flags)
    assert_error(result, 2, pattern)


def test_a_node_that_fails_on_the_vendors_weights_is_a_bad_model(vendor):
    """A conv weight resized without its bias passes onnx's checks; onnxruntime's and torch's convs refuse it."""
    from fp_onnx.converters import onnx_to_torch
    from fp_onnx.errors import BadModelError

    folder, model, path, data = vendor
    weight = next(t for t in model.graph.initializer if t.name == "onnx::Conv_64")
    array = numpy_helper.to_array(weight)
    weight.CopyFrom(numpy_helper.from_array(np.resize(array, (array.shape[0] + 2, *array.shape[1:])), weight.name))
    _save(model, path)
    result = run("finetune", path, "--data", data, "--out", folder / "out", "--device", "cpu", "--epochs", "1")
    assert_error(result, 3, "onnxruntime failed running the model")
    with pytest.raises(BadModelError, match=r"node '/conv2/conv2.0/Conv' .* fails in PyTorch"):
        onnx_to_torch(load_model(path).model)(torch.zeros(1, 1, 32, 32))


def test_an_unknown_tensor_data_type_is_a_bad_model(vendor):
    _, model, path, _ = vendor
    model.graph.initializer[0].data_type = 999  # onnx's checker raises ValueError, not ValidationError
    assert_error(run("layers", _save(model, path)), 3, "Invalid tensor data type 999")


def test_library_warnings_on_extreme_weights_never_reach_stderr(vendor):
    """The last conv's weights scaled by 1e38 overflow to inf: numpy warns in the prune sweep (a subprocess,
    since pytest would capture Python warnings itself); stderr must still hold only fp-onnx's own lines."""
    folder, model, path, data = vendor
    weight = next(t for t in model.graph.initializer if t.name == "conv5.0.weight")
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(1e38), weight.name))
    _save(model, path)
    command = [Path(sys.executable).parent / "fp-onnx", "prune", path, "--data", data, "--out", folder / "out",
               "--device", "cpu", "--fraction", "0.25"]
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert all(line.startswith(("note: ", "error: ")) for line in lines), result.stderr
