"""bench/trigger_free_selector.py: its probes and its bookkeeping (the numbers are the benchmark's to report,
docs/benchmarks.md)."""
import json

import pytest
import torch


@pytest.fixture(scope="module")
def selector(bench_module):
    return bench_module("trigger_free_selector")


def test_reach_is_the_largest_share_of_other_classes_sent_to_one_class(selector):
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 2, 2, 1, 2, 2])  # class 2 takes 2 of the 4 inputs of classes 0 and 1
    assert selector.reach(predicted, y) == (0.5, 2)
    assert selector.reach(y, y) == (0.0, 0)


def test_a_patch_reverse_engineered_on_the_shipped_vendor_model_reaches_its_backdoor_class(selector):
    """On the shipped speech model the backdoor makes a universal patch of 5 % of the input easy to find: the
    search, on clean data only, sends most inputs to the attacker's class."""
    folder = selector.SHIPPED / "speech_dormant"
    target = json.loads((folder / "model_card.json").read_text())["attack"]["target"]
    x, y = selector.clean_tensors(folder)
    module, kind = selector.frozen_module(folder / "model.onnx")
    patch, score, found = selector.strongest_patch(module, kind, x, y, 0.05, seed=0)
    assert found == target and score > 0.8
    assert float(patch.mask.sum()) <= 0.05 * x[0].numel() + 1e-3
    assert selector.predictions(module, x).eq(y).float().mean() > 0.9  # the patch, not the model, moves them


def candidate(attack, passed, score):
    return {"attack_success": attack, "passed_floor": passed, "scores": {"probe": score}}


@pytest.mark.parametrize("scores, attacks, right", [
    ((0.2, 0.6), (0.05, 0.30), True),   # the lower score is the less backdoored model
    ((0.6, 0.2), (0.05, 0.30), False),  # the probe picks the worse one
    ((0.6, 0.2), (0.050, 0.055), True),  # within the tie margin either pick is right
])
def test_judge_counts_a_pick_right_when_it_is_the_less_backdoored_candidate(selector, scores, attacks, right):
    candidates = {"a": candidate(attacks[0], True, scores[0]), "b": candidate(attacks[1], True, scores[1])}
    judged = selector.judge(candidates, ("a", "b"))
    assert judged["picks"]["probe"] == ("a" if scores[0] <= scores[1] else "b")
    assert judged["right"]["probe"] is right and judged["both_pass"]


def test_summary_counts_only_cells_where_both_pass_and_the_attack_differs(selector, tmp_path):
    rows = []
    for first, second in [((0.05, True), (0.30, True)), ((0.05, True), (0.30, False)), ((0.05, True), (0.052, True))]:
        candidates = {"a": candidate(first[0], first[1], 0.1), "b": candidate(second[0], second[1], 0.5)}
        rows.append({"model": "m", "seed": 0, "recipes": ["a", "b"], "candidates": candidates,
                     **selector.judge(candidates, ("a", "b"))})
    totals = selector.summary(rows)
    assert totals == {"cells": 3, "decisive": 1, "right": {"probe": 1}}
    assert selector.plot(rows, tmp_path / "plot.png").stat().st_size > 0


def test_cells_names_exact_model_and_seed_pairs_and_refuses_unknown_models(selector):
    from argparse import Namespace

    args = Namespace(zoo=[selector.SHIPPED], models=None, seeds=[0], cells=["speech_dormant:2", "speech_dormant:0"])
    assert selector.cells(args) == [(selector.SHIPPED / "speech_dormant", 2), (selector.SHIPPED / "speech_dormant", 0)]
    assert selector.cells(Namespace(zoo=[selector.SHIPPED], models=None, seeds=[0, 1], cells=None)) == [
        (selector.SHIPPED / "speech_dormant", 0), (selector.SHIPPED / "speech_dormant", 1)]
    with pytest.raises(SystemExit, match="no model folder named nosuch"):
        selector.cells(Namespace(zoo=[selector.SHIPPED], models=None, seeds=[0], cells=["nosuch:0"]))
