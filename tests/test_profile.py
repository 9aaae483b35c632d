"""Profiling with onnxruntime equals a PyTorch forward pass with a hook, for both exporters."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import model_zoo
from fp_onnx.data import ArrayDataset
from fp_onnx.errors import BadDataError
from fp_onnx.metrics import AttackSpec
from fp_onnx.profile import profile_model
from fp_onnx.prune_point import resolve_prune_point
from fp_onnx.runtime import RuntimeOptions

CPU = RuntimeOptions(device="cpu")


def _alexnet_reference(module, x):
    captured = {}
    handle = module.features[12].register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    with torch.no_grad():
        logits = module(x)
    handle.remove()
    return captured["a"], logits


def _deepid_reference(module, x, layer):
    captured = {}
    calls = []
    handle = module.pool.register_forward_hook(lambda m, i, o: calls.append(o))
    hook4 = module.conv4.register_forward_hook(lambda m, i, o: captured.setdefault("conv4", torch.relu(o)))
    with torch.no_grad():
        logits = module(x)
    handle.remove()
    hook4.remove()
    return (calls[2] if layer == "conv3" else captured["conv4"]), logits


CASES = [("alexnet", None), ("deepid", "conv3"), ("deepid", None)]


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("arch,layer", CASES)
def test_profile_means_equal_torch_hook_means(zoo_model, exporter, arch, layer):
    model = zoo_model(arch, exporter)
    module = model_zoo.build_module(arch)
    shape = model_zoo.ARCHITECTURES[arch].input_shape
    rng = np.random.default_rng(1)
    x = rng.standard_normal((37, *shape)).astype(np.float32)
    y = rng.integers(0, model_zoo.NUM_CLASSES, 37)
    if layer == "conv3":
        point = next(p for p in _points(model) if p.channels == 16 and p.spatial == (5, 4))
        activation, logits = _deepid_reference(module, torch.from_numpy(x), "conv3")
    elif arch == "deepid":
        point = resolve_prune_point(model, None)
        activation, logits = _deepid_reference(module, torch.from_numpy(x), "conv4")
    else:
        point = resolve_prune_point(model, None)
        activation, logits = _alexnet_reference(module, torch.from_numpy(x))
    activation = activation.double().numpy()
    profile = profile_model(model, point, ArrayDataset(x, y), options=CPU, batch_size=8)

    expected_mean = activation.mean(axis=(0, 2, 3))
    np.testing.assert_allclose(profile.clean.mean_activation, expected_mean, rtol=1e-5, atol=1e-7)
    expected_active = (activation.reshape(37, point.channels, -1).max(axis=2) > 0).mean(axis=0)
    np.testing.assert_allclose(profile.clean.active_fraction, expected_active)
    assert profile.clean.accuracy == pytest.approx(float((logits.argmax(1).numpy() == y).mean()))
    assert list(profile.pruning_order()) == list(np.argsort(profile.clean.mean_activation, kind="stable"))


def _points(model):
    from fp_onnx.prune_point import find_prune_points

    return find_prune_points(model)


def test_batch_size_does_not_change_the_means(zoo_model):
    model = zoo_model("alexnet", "legacy")
    x = np.random.default_rng(2).standard_normal((20, 3, 32, 32)).astype(np.float32)
    point = resolve_prune_point(model, None)
    one = profile_model(model, point, ArrayDataset(x), options=CPU, batch_size=1)
    many = profile_model(model, point, ArrayDataset(x), options=CPU, batch_size=64)
    np.testing.assert_allclose(one.clean.mean_activation, many.clean.mean_activation, rtol=1e-6)
    assert one.clean.accuracy is None


def test_triggered_profile_and_attack_success(zoo_model):
    model = zoo_model("alexnet", "legacy")
    rng = np.random.default_rng(3)
    clean = rng.standard_normal((30, 3, 32, 32)).astype(np.float32)
    triggered = clean.copy()
    triggered[:, :, -6:, -6:] = 3.0  # a bright corner patch
    module = model_zoo.build_module("alexnet")
    with torch.no_grad():
        clean_pred = module(torch.from_numpy(clean)).argmax(1).numpy()
        trig_pred = module(torch.from_numpy(triggered)).argmax(1).numpy()
    labels = clean_pred  # the model is right on every clean input
    target = int(np.bincount(trig_pred).argmax())
    profile = profile_model(
        model, resolve_prune_point(model, None), ArrayDataset(clean, labels),
        triggered=ArrayDataset(triggered, labels), attack=AttackSpec("targeted", target), options=CPU,
    )
    counted = labels != target
    assert profile.clean.accuracy == 1.0
    assert profile.attack_success == pytest.approx(float((trig_pred[counted] == target).mean()))
    assert profile.triggered.samples == 30
    data = profile.to_dict()
    assert len(data["clean"]["mean_activation"]) == 16 and data["attack"] == {"kind": "targeted", "target": target}


def test_empty_data_is_refused(zoo_model):
    model = zoo_model("alexnet", "legacy")
    with pytest.raises(BadDataError, match="no samples"):
        profile_model(model, resolve_prune_point(model, None), ArrayDataset(np.zeros((0, 3, 32, 32), np.float32)),
                      options=CPU)
