"""The universal warp search (fp_onnx.recipes.warp) and the recipe that unlearns it (`adversarial-warp`)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fp_onnx.converters import onnx_to_torch
from fp_onnx.data import open_dataset, split_dataset
from fp_onnx.finetune import FineTuneConfig
from fp_onnx.loading import load_model
from fp_onnx.models.triggers import WARP_GRID, WARP_SEED, WARP_STRENGTH, apply_warp_trigger
from fp_onnx.recipes import RECIPES, TrainingBatch
from fp_onnx.recipes.adversarial import WarpSearch
from fp_onnx.recipes.warp import (SCAN_RADIUS, SUSPECT_ANOMALY, SUSPECT_MIN_CLASSES, SUSPECT_SUCCESS, UNLEARN_RADIUS,
                                  Warp, anomaly_index, spatial_layout, suspect_class, universal_warp, warp_budget,
                                  warp_success)


def zoo_trigger_field() -> torch.Tensor:
    """The zoo's WaNet trigger (models/triggers.py) as control displacements (2, grid, grid), rows then columns."""
    coarse = np.random.default_rng(WARP_SEED).uniform(-1, 1, size=(WARP_GRID, WARP_GRID, 2))
    coarse /= np.mean(np.abs(coarse))
    return torch.tensor(WARP_STRENGTH * coarse, dtype=torch.float32).permute(2, 0, 1).contiguous()


def test_a_warp_reproduces_the_zoo_wanet_trigger_in_either_layout():
    images = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    expected = apply_warp_trigger(images).astype(np.float32)  # the attacker's own code, rounded to uint8
    channels_last = Warp(zoo_trigger_field(), channels_last=True).apply(torch.tensor(images, dtype=torch.float32))
    assert np.abs(channels_last.numpy() - expected).max() <= 0.5 + 1e-3
    channels_first = Warp(zoo_trigger_field(), channels_last=False).apply(
        torch.tensor(images, dtype=torch.float32).permute(0, 3, 1, 2))
    assert torch.allclose(channels_first.permute(0, 2, 3, 1), channels_last, atol=1e-4)


def test_a_zero_warp_leaves_the_images_as_they_are():
    x = torch.rand(3, 1, 20, 17)
    assert torch.allclose(Warp(torch.zeros(2, WARP_GRID, WARP_GRID), False).apply(x), x, atol=1e-5)


@pytest.mark.parametrize("shape, channels_last", [((8, 3, 32, 32), False), ((8, 1, 64, 64), False),
                                                  ((8, 32, 32, 3), True), ((8, 55, 47, 1), True),
                                                  ((8, 16, 32, 32), None), ((8, 40), None), ((8, 3, 40), None)])
def test_the_layout_is_read_from_the_batch_shape(shape, channels_last):
    assert spatial_layout(torch.Size(shape)) is channels_last


@pytest.fixture(scope="module")
def speech(backdoored):
    model = load_model(backdoored["model"]).model
    train, _ = split_dataset(open_dataset(backdoored["clean"]), 0.2, 0)
    batch = train.take(np.arange(48))
    return onnx_to_torch(model).eval(), torch.tensor(batch.x, dtype=torch.float32), torch.tensor(batch.y).long()


def test_a_targeted_warp_stays_within_budget_and_pulls_inputs_towards_its_class(speech):
    module, x, y = speech
    target = int(torch.bincount(y).argmin())
    others = x[y != target]
    goal = torch.full((len(others),), target)
    torch.manual_seed(0)
    warp = universal_warp(module, x, y, "logits", None, target, steps=10)
    assert warp.field.shape == (2, WARP_GRID, WARP_GRID) and warp.channels_last is False
    assert float(warp.field.norm()) <= warp_budget(x.shape, False, UNLEARN_RADIUS) * (1 + 1e-4)
    small = universal_warp(module, x, y, "logits", None, target, steps=3, radius=SCAN_RADIUS)
    assert float(small.field.norm()) <= warp_budget(x.shape, False, SCAN_RADIUS) * (1 + 1e-4) < float(warp.field.norm())
    with torch.no_grad():
        before = torch.nn.functional.cross_entropy(module(others), goal)
        after = torch.nn.functional.cross_entropy(module(warp.apply(others)), goal)
    assert float(after) < float(before)
    assert all(p.grad is None for p in module.parameters())
    assert universal_warp(module, x.reshape(len(x), -1), y, "logits", None, target) is None  # not images
    assert warp_success(module, x.reshape(len(x), -1), y, "logits") == []  # nothing to scan


def test_warp_success_gives_every_class_a_rate(speech):
    module, x, y = speech
    torch.manual_seed(0)
    rates = warp_success(module, x[:16], y[:16], "logits")
    assert len(rates) == 10 and all(0.0 <= rate <= 1.0 for rate in rates)


def test_the_suspect_is_the_class_whose_rate_is_an_outlier_among_the_classes():
    wanet = [0.0] * 43
    wanet[0], wanet[28], wanet[24] = 0.70, 0.065, 0.063  # the zoo's WaNet model scanned on 64 images
    assert suspect_class(wanet) == 0 and anomaly_index(wanet, 0) > 10
    clean_speech = [0.51, 0.3, 0.49, 0.2, 0.31, 0.23, 0.19, 0.44, 0.19, 0.17]  # a clean-trained spectrogram net
    assert suspect_class(clean_speech) is None and anomaly_index(clean_speech, 0) < SUSPECT_ANOMALY
    assert suspect_class([0.9, 0.85, 0.8, 0.1, 0.1]) is None  # several easy classes: no outlier
    assert suspect_class([0.0] * 9 + [SUSPECT_SUCCESS - 0.01]) is None  # an outlier, but not reached often enough
    assert suspect_class([0.0] * 9 + [SUSPECT_SUCCESS]) == 9
    assert suspect_class([0.62, 0.24, 0.0]) is None  # three classes (traffic_badnets): no spread to judge by
    assert suspect_class([0.087, 0.679, 0.0]) is None  # traffic_pruning_aware: index 4.6, but of three rates
    assert suspect_class([0.0] * (SUSPECT_MIN_CLASSES - 1) + [0.9]) == SUSPECT_MIN_CLASSES - 1


def warp_plan(module, monkeypatch, rates):
    """The adversarial-warp recipe's plan on `module`, with the per-class scan answering `rates`."""
    import fp_onnx.recipes.adversarial as adversarial

    monkeypatch.setattr(adversarial, "warp_success", lambda *args: list(rates))
    config = FineTuneConfig(recipe="adversarial-warp").resolved()
    state = RECIPES["adversarial-warp"].prepare(module, config, None)
    plan = RECIPES["adversarial-warp"].build(module, [{"params": list(module.parameters())}], config, 10, state)
    return plan, state


def test_the_warp_recipe_unlearns_warps_towards_the_suspect_class(speech, monkeypatch):
    module, x, y = speech
    module = module.train()
    plan, state = warp_plan(module, monkeypatch, [0.0] * 9 + [0.9])
    assert len(plan.loss_terms) == 4  # additive, warp, distillation, distillation on mixed inputs
    batch = TrainingBatch(x, y, module(x), module, "logits")
    warp_term = float(plan.loss_terms[1](batch).detach())
    search = state.perturbations["warp"]
    assert isinstance(search, WarpSearch) and search.target == 9 and isinstance(search.warp, Warp)
    assert warp_term > 0.0 and module.training


def test_the_warp_term_is_zero_without_a_suspect_class(speech, monkeypatch):
    module, x, y = speech
    plan, state = warp_plan(module.train(), monkeypatch, [0.3] * 10)
    batch = TrainingBatch(x, y, module(x), module, "logits")
    assert float(plan.loss_terms[1](batch).detach()) == 0.0
    assert state.perturbations["warp"].target is None and state.perturbations["warp"].warp is None


def test_a_scan_that_finds_no_suspect_leaves_the_run_as_the_recipe_without_warps(backdoored, monkeypatch):
    import fp_onnx.recipes.adversarial as adversarial
    from fp_onnx.finetune import fine_tune

    def scan_drawing_random_numbers(module, x, y, kind):
        torch.randn(1000)  # a real scan starts its searches from random fields
        return [0.1] * 10

    monkeypatch.setattr(adversarial, "warp_success", scan_drawing_random_numbers)
    model = load_model(backdoored["model"]).model
    train, val = split_dataset(open_dataset(backdoored["clean"]), 0.2, 0)
    runs = {recipe: fine_tune(model, train, val, FineTuneConfig(device="cpu", recipe=recipe, epochs=2, seed=3))
            for recipe in ("adversarial-warp", "adversarial-gentle")}
    warp, gentle = ({t.name: onnx_numpy(t) for t in runs[r].model.graph.initializer} for r in runs)
    assert warp.keys() == gentle.keys() and all(np.array_equal(warp[name], gentle[name]) for name in warp)


def onnx_numpy(tensor):
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)


def test_the_scan_verdict_is_reported_with_the_run(backdoored, monkeypatch):
    import fp_onnx.recipes.adversarial as adversarial
    from fp_onnx.finetune import fine_tune

    monkeypatch.setattr(adversarial, "warp_success", lambda *args: [0.0] * 9 + [0.9])
    model = load_model(backdoored["model"]).model
    train, val = split_dataset(open_dataset(backdoored["clean"]), 0.2, 0)
    result = fine_tune(model, train, val, FineTuneConfig(device="cpu", recipe="adversarial-warp", epochs=1))
    scan = result.to_dict()["findings"]["warp_scan"]
    assert scan["suspect_class"] == 9 == scan["most_reached_class"] and scan["anomaly_index"] > SUSPECT_ANOMALY
    assert scan["reach"] == [0.0] * 9 + [0.9]
    assert fine_tune(model, train, val, FineTuneConfig(device="cpu", recipe="cosine", epochs=1)).findings == {}


def test_the_search_step_moves_a_fixed_share_of_the_ball_and_stays_inside_it():
    from fp_onnx.recipes.search_step import step_within_ball

    direction = torch.tensor([3.0, 4.0])
    inside = step_within_ball(torch.zeros(2), direction, radius=2.0, fraction=0.5)
    torch.testing.assert_close(inside, torch.tensor([0.6, 0.8]))  # 0.5 * 2 along the unit direction
    torch.testing.assert_close(step_within_ball(inside, -1e6 * direction, 2.0, 0.5), torch.zeros(2))  # scale-free
    outside = step_within_ball(torch.tensor([1.2, 1.6]), direction, radius=2.0, fraction=0.5)
    torch.testing.assert_close(outside, torch.tensor([1.2, 1.6]))  # 3.0 long, projected back onto the sphere
