"""The defense's warp check (fp_onnx.warp_check), and how its verdict reaches the cascade, the recipe and the report."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import fp_onnx.defense as defense
import fp_onnx.recipes.adversarial as adversarial
from fp_onnx.converters import onnx_to_torch
from fp_onnx.data import open_dataset, split_dataset
from fp_onnx.defense import DefenseConfig, fine_prune
from fp_onnx.finetune import FineTuneConfig
from fp_onnx.loading import load_model
from fp_onnx.prune import StopRule
from fp_onnx.prune_point import resolve_prune_point
from fp_onnx.recipes import RECIPES, TrainingBatch
from fp_onnx.recipes.warp import suspect_class
from fp_onnx.cli.fine_prune import results_table
from fp_onnx.warp_check import WarpCheck, check_for_warp_backdoor, describe_warp_check

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def vendor(backdoored):
    model = load_model(backdoored["model"]).model
    return model, open_dataset(backdoored["clean"])


def test_the_check_rates_every_class_on_a_seeded_selection_and_leaves_the_run_random_numbers_alone(vendor):
    model, clean = vendor
    train, _ = split_dataset(clean, 0.2, 0)
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    first = check_for_warp_backdoor(model, train, seed=0, device=CPU, samples=32)
    assert torch.equal(torch.random.get_rng_state(), before)  # the run after it draws what it would have drawn
    torch.manual_seed(6)
    again = check_for_warp_backdoor(model, train, seed=0, device=CPU, samples=32)
    assert again.reach == first.reach  # the verdict depends on the seed, not on the caller's generator
    assert len(first.reach) == 10 and all(0.0 <= rate <= 1.0 for rate in first.reach) and first.samples == 32
    assert first.suspect_class == suspect_class(first.reach)
    report = first.to_dict()
    assert report["suspect_class"] == first.suspect_class and len(report["reach"]) == 10
    assert report["most_reached_class"] == int(np.argmax(first.reach)) and report["samples"] == 32
    assert check_for_warp_backdoor(model, train, seed=0, device=CPU, samples=10 ** 6).samples == len(train)


def test_a_recipe_aimed_by_the_check_unlearns_towards_its_class_without_scanning_again(vendor, monkeypatch):
    def no_scan(*args):
        raise AssertionError("the recipe scanned although the defense's check had chosen its class")

    monkeypatch.setattr(adversarial, "warp_success", no_scan)
    model, clean = vendor
    module = onnx_to_torch(model).train()
    batch = clean.take(np.arange(32))
    x, y = torch.tensor(batch.x, dtype=torch.float32), torch.tensor(batch.y).long()
    config = FineTuneConfig(recipe="adversarial-warp", warp_target=3).resolved()
    state = RECIPES["adversarial-warp"].prepare(module, config, None)
    plan = RECIPES["adversarial-warp"].build(module, [{"params": list(module.parameters())}], config, 10, state)
    assert float(plan.loss_terms[1](TrainingBatch(x, y, module(x), module, "logits")).detach()) > 0.0
    assert state.perturbations["warp"].target == 3 and state.perturbations["warp"].warp is not None
    assert state.findings()["warp_scan"]["suspect_class"] == 3


def test_a_flagged_class_puts_the_warp_recipe_first_aimed_at_it_and_the_report_says_so(vendor, monkeypatch):
    flagged = WarpCheck(9, [0.0] * 9 + [0.9], samples=32, seconds=0.0)
    monkeypatch.setattr(defense, "check_for_warp_backdoor", lambda *args, **kwargs: flagged)
    model, clean = vendor
    config = DefenseConfig(rule=StopRule("channels", 2), max_accuracy_drop=1.0, warp_recipes=("adversarial-warp",),
                           finetune=FineTuneConfig(device="cpu", recipe="cosine", epochs=1))
    result = fine_prune(model, resolve_prune_point(model, None), clean, config=config)
    assert [a["recipe"] for a in result.method["recover_attempts"]] == ["adversarial-warp"]
    assert result.finetune.config["warp_target"] == 9
    assert result.finetune.findings["warp_scan"]["suspect_class"] == 9
    assert result.to_dict()["method"]["warp_check"] == flagged.to_dict()
    assert "(warp check: class 9, reached from 90% of the other classes' inputs" in results_table(result)


def test_the_check_is_described_in_one_sentence():
    assert describe_warp_check(None) is None
    assert describe_warp_check(WarpCheck(None, [], 64, 0.0).to_dict()) == \
        "warp check: the inputs are not images, nothing to check"
    quiet = describe_warp_check(WarpCheck(None, [0.1, 0.3, 0.0, 0.0, 0.0], 64, 0.0).to_dict())
    assert quiet.startswith("warp check: no class stands out (most reached: class 1, reached from 30%")
    flagged = describe_warp_check(WarpCheck(0, [0.97] + [0.0] * 42, 64, 0.0).to_dict())
    assert flagged.startswith("warp check: class 0, reached from 97%") and "adversarial-warp was tried first" in flagged


def test_without_a_suspect_the_cascade_is_the_methods_and_the_check_is_reported(vendor, monkeypatch):
    """The real check runs; its verdict is forced to "nothing stands out", because on this small spectrogram net the
    most reached class sits near the anomaly bound (index 2.8-3.3 on one thread) and thread counts move it."""
    real_check = defense.check_for_warp_backdoor
    monkeypatch.setattr(defense, "check_for_warp_backdoor",
                        lambda *args, **kwargs: dataclasses.replace(real_check(*args, **kwargs), suspect_class=None))
    model, clean = vendor
    config = DefenseConfig(rule=StopRule("channels", 2), max_accuracy_drop=1.0, warp_recipes=("adversarial-warp",),
                           finetune=FineTuneConfig(device="cpu", recipe="cosine", epochs=1))
    result = fine_prune(model, resolve_prune_point(model, None), clean, config=config)
    check = result.to_dict()["method"]["warp_check"]
    assert len(check["reach"]) == 10 and check["samples"] == min(128, result.split["fine_tune_samples"])
    assert check["suspect_class"] is None and check["seconds"] > 0
    assert [a["recipe"] for a in result.method["recover_attempts"]] == ["cosine"]
    unchecked = fine_prune(model, resolve_prune_point(model, None), clean, config=DefenseConfig(
        rule=StopRule("channels", 2), max_accuracy_drop=1.0, finetune=FineTuneConfig(device="cpu", recipe="cosine",
                                                                                      epochs=1)))
    assert unchecked.method["warp_check"] is None  # a method without warp recipes does not check


def test_the_demo_table_says_what_the_check_found():
    from types import SimpleNamespace

    from fp_onnx.cli.demo import comparison_table

    row = SimpleNamespace(clean_accuracy=0.98, attack_success=0.01)
    prune = SimpleNamespace(channels_pruned=3, curve=SimpleNamespace(channels=8))
    paper = SimpleNamespace(table={"none": row, "fine-pruning": row}, prune=prune, method={})
    quiet = WarpCheck(None, [0.1, 0.3, 0.0, 0.0, 0.0], 64, 0.0).to_dict()
    default = SimpleNamespace(table={"fine-pruning": row}, prune=prune,
                              method={"recover": "adversarial", "warp_check": quiet})
    assert comparison_table(paper, default).splitlines()[-1] == f"({describe_warp_check(quiet)})"
    assert "warp check" not in comparison_table(paper, SimpleNamespace(**{**vars(default), "method": {}}))
