"""onnx_to_torch, write_back and reexport on the model zoo and on small torch models exported both ways.

Reference for every numerical claim: onnxruntime (CPUExecutionProvider) on the
same ONNX model, or the original torch module for BatchNormalization statistics.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import model_zoo
from fp_onnx.converters import onnx_to_torch, reexport, write_back
from fp_onnx.errors import BadModelError, BadOptionError

ABS_TOL, REL_TOL = 1e-4, 1e-5


def run_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # old converters list initializers as inputs; ORT warns about each
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def run_torch(module: nn.Module, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(*[torch.from_numpy(value) for value in feeds.values()])
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def assert_exact(got: list[np.ndarray], ref: list[np.ndarray], rel: float = REL_TOL) -> None:
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        diff = float(np.abs(g.astype(np.float64) - r).max()) if r.size else 0.0
        scale = float(np.abs(r).max()) if r.size else 1.0
        assert diff <= ABS_TOL and diff <= rel * max(scale, 1e-12), (diff, scale)


def strip_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    stripped = copy.deepcopy(model)
    del stripped.graph.initializer[:]
    return stripped


# --------------------------------------------------------------------------- the zoo
@pytest.mark.parametrize("name,exporter", model_zoo.zoo_cases())
def test_zoo_model_matches_onnxruntime(zoo_model, name, exporter):
    model = zoo_model(name, exporter)
    module = onnx_to_torch(model).eval()
    for batch in (1, 8):
        feeds = model_zoo.random_input(model, batch, seed=batch)
        assert_exact(run_torch(module, feeds), run_onnxruntime(model, feeds))


PRUNED_CASES = [("resnet18", "legacy"), ("mobilenetv2", "dynamo"), ("convbn", "legacy"), ("keras_nhwc", "helper")]


@pytest.mark.parametrize("name,exporter", PRUNED_CASES)
def test_pruned_zoo_model_matches_onnxruntime(zoo_model, name, exporter):
    surgery = pytest.importorskip("fp_onnx.surgery", reason="fp_onnx.surgery (prune_channels) not available")
    from fp_onnx.prune_point import resolve_prune_point

    model = zoo_model(name, exporter)
    result = surgery.prune_channels(model, resolve_prune_point(model, None), [0, 2])
    assert result.channels_removed == [0, 2]
    pruned = onnx.shape_inference.infer_shapes(result.model)
    module = onnx_to_torch(pruned).eval()
    for batch in (1, 8):
        feeds = model_zoo.random_input(pruned, batch, seed=batch)
        assert_exact(run_torch(module, feeds), run_onnxruntime(pruned, feeds))


# --------------------------------------------------------------------------- ops torch emits beyond the zoo
class MixedOps(nn.Module):
    """Ops the zoo does not export: norms, odd activations, ConvTranspose, Resize, pooling modes, two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=2, dilation=2)
        self.prelu = nn.PReLU(8)
        self.bn = nn.BatchNorm2d(8)  # after PReLU, so the legacy exporter cannot fold it into the conv
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.instance_norm = nn.InstanceNorm2d(8, affine=True)
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.layer_norm = nn.LayerNorm(4)
        self.fc = nn.Linear(4 * 4 * 4 + 4, 10)
        self.dropout = nn.Dropout(0.5)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        x = self.bn(self.prelu(self.conv(x)))
        a, b = torch.chunk(x, 2, dim=1)
        x = torch.cat([nn.functional.elu(a), nn.functional.selu(b)], dim=1)
        x = nn.functional.hardswish(self.instance_norm(self.grouped(x)))
        x = nn.functional.max_pool2d(x, 3, 2, ceil_mode=True)  # 16 -> 8
        x = nn.functional.leaky_relu(self.up(x), 0.2)  # 8 -> 16
        x = nn.functional.avg_pool2d(x, 3, 2, padding=1, ceil_mode=True, count_include_pad=False)  # -> 8
        x = nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)  # -> 4
        x = torch.sigmoid(x) * torch.tanh(x) + nn.functional.hardsigmoid(x)
        pooled = nn.functional.gelu(self.layer_norm(x.mean(dim=(2, 3))))
        logits = self.fc(torch.cat([torch.flatten(x, 1), pooled], dim=1))
        return self.dropout(logits), torch.log_softmax(logits, dim=1)


@pytest.fixture(scope="session")
def mixed_ops_models(tmp_path_factory):
    """MixedOps exported once per exporter (dynamic batch): {exporter: (torch module, loaded ONNX model)}."""
    folder = tmp_path_factory.mktemp("mixed_ops")
    torch.manual_seed(0)
    module = MixedOps().eval()
    models = {}
    for exporter in ("legacy", "dynamo"):
        path = folder / f"mixed_{exporter}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            example = (torch.randn(2, 3, 16, 16),)
            if exporter == "legacy":
                torch.onnx.export(module, example, str(path), dynamo=False, input_names=["input"],
                                  output_names=["logits", "log_probs"],
                                  dynamic_axes={n: {0: "batch"} for n in ("input", "logits", "log_probs")})
            else:
                torch.onnx.export(module, example, str(path), dynamo=True, input_names=["input"],
                                  output_names=["logits", "log_probs"],
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
        models[exporter] = model_zoo.load_for_tests(path)
    return module, models


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_mixed_ops_match_onnxruntime(mixed_ops_models, exporter):
    _, models = mixed_ops_models
    model = models[exporter]
    assert "BatchNormalization" in {node.op_type for node in model.graph.node}
    module = onnx_to_torch(model).eval()
    for batch in (1, 8):
        feeds = model_zoo.random_input(model, batch, seed=batch)
        assert_exact(run_torch(module, feeds), run_onnxruntime(model, feeds))


# --------------------------------------------------------------------------- training behaviour
def test_parameters_buffers_and_constants(zoo_model):
    model = zoo_model("convbn", "legacy")
    module = onnx_to_torch(model)
    parameters = {module.onnx_names[name] for name, _ in module.named_parameters()}
    buffers = {module.onnx_names[name] for name in module.state_dict() if name not in dict(module.named_parameters())}
    assert "features.0.weight" in parameters and "features.1.weight" in parameters and "fc.bias" in parameters
    assert buffers == {f"features.{i}.running_{s}" for i in (1, 5) for s in ("mean", "var")}
    assert all(p.requires_grad for p in module.parameters())


def test_batchnorm_updates_running_stats_like_torch(zoo_model):
    model = zoo_model("convbn", "legacy")
    module = onnx_to_torch(model).train()
    reference = model_zoo.build_module("convbn").train()
    x = torch.randn(8, 3, 32, 32)
    module(x)
    reference(x)
    state = reference.state_dict()
    for torch_name, onnx_name in module.onnx_names.items():
        if "running" in onnx_name:
            assert torch.allclose(getattr(module, torch_name), state[onnx_name], atol=1e-6), onnx_name
    module.eval()
    before = {name: t.clone() for name, t in module.state_dict().items()}
    module(x)
    assert all(torch.equal(before[name], t) for name, t in module.state_dict().items())


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_batchnorm_train_mode_matches_torch_for_both_exporters(mixed_ops_models, exporter):
    torch_module, models = mixed_ops_models
    module = onnx_to_torch(models[exporter]).train()
    reference = copy.deepcopy(torch_module).train()
    x = torch.randn(8, 3, 16, 16)
    module(x)
    reference(x)
    by_onnx_name = {onnx_name: getattr(module, name) for name, onnx_name in module.onnx_names.items()}
    for stat in ("running_mean", "running_var"):
        assert not torch.allclose(by_onnx_name[f"bn.{stat}"], getattr(torch_module.bn, stat))  # it moved
        assert torch.allclose(by_onnx_name[f"bn.{stat}"], getattr(reference.bn, stat), atol=1e-5)


def _dropout_model(opset: int) -> onnx.ModelProto:
    """x -> MatMul(w) -> Dropout -> y; torch's exporters drop Dropout from inference graphs, old converters keep it."""
    h = onnx.helper
    weight = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32), "w")
    if opset >= 12:
        ratio = onnx.numpy_helper.from_array(np.array(0.5, np.float32), "ratio")
        dropout = h.make_node("Dropout", ["h", "ratio"], ["y"], "drop")
        inits = [weight, ratio]
    else:
        dropout, inits = h.make_node("Dropout", ["h"], ["y"], "drop", ratio=0.5), [weight]
    graph = h.make_graph([h.make_node("MatMul", ["x", "w"], ["h"], "mm"), dropout], "g",
                         [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 16])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 16])], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], ir_version=8)


@pytest.mark.parametrize("opset", [9, 13])
def test_dropout_active_only_in_train_mode(opset):
    model = _dropout_model(opset)
    module = onnx_to_torch(model)
    x = torch.randn(64, 16)
    with torch.no_grad():
        module.eval()
        evaluated = module(x)
        assert_exact([evaluated.numpy()], run_onnxruntime(model, {"x": x.numpy()}))
        module.train()
        dropped = module(x)
    zeros = (dropped == 0).float().mean().item()
    assert 0.35 < zeros < 0.65
    kept = dropped != 0
    assert torch.allclose(dropped[kept], 2 * evaluated[kept])


@pytest.mark.parametrize("name,exporter", [("resnet18", "dynamo"), ("convbn", "legacy"), ("keras_nhwc", "helper")])
def test_gradients_reach_every_parameter_and_sgd_changes_outputs(zoo_model, name, exporter):
    model = zoo_model(name, exporter)
    module = onnx_to_torch(model)
    feeds = model_zoo.random_input(model, 8)
    x = torch.from_numpy(next(iter(feeds.values())))
    module.eval()
    with torch.no_grad():
        before = module(x).clone()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    labels = torch.arange(8) % 10
    module.train()
    for step in range(3):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(module(x), labels)
        loss.backward()
        if step == 0:
            missing = [n for n, p in module.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
            assert not missing
        optimizer.step()
    module.eval()
    with torch.no_grad():
        assert (module(x) - before).abs().max() > 1e-3


# --------------------------------------------------------------------------- write_back
def _fine_tune(module: nn.Module, x: torch.Tensor, steps: int = 2) -> None:
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    module.train()
    for _ in range(steps):
        optimizer.zero_grad()
        out = module(x)
        (out[0] if isinstance(out, tuple) else out).square().mean().backward()
        optimizer.step()
    module.eval()


@pytest.mark.parametrize("name,exporter", [("convbn", "legacy"), ("resnet18", "dynamo"), ("caffe", "helper")])
def test_write_back_changes_only_weights(zoo_model, name, exporter):
    model = copy.deepcopy(zoo_model(name, exporter))
    onnx.helper.set_model_props(model, {"vendor": "acme", "license": "proprietary"})
    original = copy.deepcopy(model)
    module = onnx_to_torch(model)
    feeds = model_zoo.random_input(model, 1 if name == "caffe" else 4)
    _fine_tune(module, torch.from_numpy(next(iter(feeds.values()))))
    written = write_back(model, module)
    assert model == original  # input not mutated
    assert strip_initializers(written) == strip_initializers(model)
    old = {init.name: init for init in model.graph.initializer}
    changed = 0
    assert [init.name for init in written.graph.initializer] == list(old)
    for init in written.graph.initializer:
        assert (init.data_type, list(init.dims)) == (old[init.name].data_type, list(old[init.name].dims))
        assert init.HasField("raw_data") == old[init.name].HasField("raw_data")
        changed += not np.array_equal(onnx.numpy_helper.to_array(init), onnx.numpy_helper.to_array(old[init.name]))
    assert changed >= len(list(module.parameters()))
    onnx.checker.check_model(written)
    assert_exact(run_onnxruntime(written, feeds), run_torch(module, feeds))


def test_write_back_keeps_typed_float_data():
    weight = onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT, [2, 3], np.arange(6, dtype=np.float32).tolist())
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"], "mm")], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 3])], [weight])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8)
    module = onnx_to_torch(model)
    with torch.no_grad():
        module.w.add_(1.0)
    written = write_back(model, module)
    init = written.graph.initializer[0]
    assert not init.HasField("raw_data") and list(init.float_data) == [float(v) for v in range(1, 7)]


def test_write_back_refuses_foreign_modules(zoo_model):
    model = zoo_model("convbn", "legacy")
    with pytest.raises(BadModelError, match="missing"):
        write_back(model, onnx_to_torch(zoo_model("alexnet", "legacy")))
    module = onnx_to_torch(model)
    name = next(iter(dict(module.named_parameters())))
    setattr(module, name, nn.Parameter(torch.zeros(1)))
    with pytest.raises(BadModelError, match="shape"):
        write_back(model, module)


# --------------------------------------------------------------------------- reexport
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_reexport_keeps_names_and_dynamic_batch(zoo_model, tmp_path, exporter):
    model = zoo_model("keras_nhwc")  # NHWC Transposes and a constant-shape Reshape
    module = onnx_to_torch(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = reexport(module, torch.randn(2, 32, 32, 3), tmp_path / "re.onnx", input_names=["pixels"],
                        output_names=["scores"], exporter=exporter)
    exported = onnx.load(str(path))
    assert [v.name for v in exported.graph.input] == ["pixels"]
    assert [v.name for v in exported.graph.output] == ["scores"]
    for value in (exported.graph.input[0], exported.graph.output[0]):
        assert value.type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert module.training is False
    for batch in (1, 8):
        feeds = model_zoo.random_input(model, batch, seed=batch)
        assert_exact(run_onnxruntime(exported, {"pixels": feeds["input_1"]}), run_torch(module, feeds))


def test_reexport_restores_train_mode_and_checks_exporter(zoo_model, tmp_path):
    module = onnx_to_torch(zoo_model("caffe")).train()
    with pytest.raises(BadOptionError, match="exporter"):
        reexport(module, torch.randn(1, 3, 32, 32), tmp_path / "x.onnx", input_names=["data"],
                 output_names=["prob"], exporter="tflite")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reexport(module, torch.randn(1, 3, 32, 32), tmp_path / "x.onnx", input_names=["data"],
                 output_names=["prob"], dynamic_batch=False)
    assert module.training is True
    assert onnx.load(str(tmp_path / "x.onnx")).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


def test_weights_reached_through_identity_and_cast_train_and_write_back():
    """Legacy exporters share weights via Identity; float16 models Cast their stored weights."""
    h = onnx.helper
    rng = np.random.default_rng(0)
    conv_w = onnx.numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "conv.weight")
    fc_w = onnx.numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float16), "fc.weight")
    nodes = [h.make_node("Identity", ["conv.weight"], ["shared_w"], "share"),
             h.make_node("Conv", ["x", "shared_w"], ["c"], "conv", pads=[1, 1, 1, 1]),
             h.make_node("GlobalAveragePool", ["c"], ["g"], "gap"),
             h.make_node("Flatten", ["g"], ["f"], "flat"),
             h.make_node("Cast", ["fc.weight"], ["fc_w32"], "cast", to=onnx.TensorProto.FLOAT),
             h.make_node("MatMul", ["f", "fc_w32"], ["y"], "fc")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3, 8, 8])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 5])], [conv_w, fc_w])
    model = onnx.shape_inference.infer_shapes(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)],
                                                           ir_version=8))
    module = onnx_to_torch(model)
    assert sorted(module.onnx_names.values()) == ["conv.weight", "fc.weight"]
    assert module.fc__weight.dtype == torch.float16 and module.fc__weight.requires_grad
    _fine_tune(module, torch.randn(4, 3, 8, 8))
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    written = write_back(model, module)
    assert written.graph.initializer[1].data_type == onnx.TensorProto.FLOAT16
    assert_exact(run_onnxruntime(written, feeds), run_torch(module, feeds))
