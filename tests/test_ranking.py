"""Ranking criteria (fp_onnx.ranking) and pruning by a ranking over several prune points."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fp_onnx.data import open_dataset, split_dataset
from fp_onnx.errors import BadOptionError
from fp_onnx.inference import ModelRunner
from fp_onnx.loading import load_model
from fp_onnx.masked_sweep import REFINE_STEPS, refine_between, steps_to_measure
from fp_onnx.profile import profile_model
from fp_onnx.prune import StopRule, channels_to_prune
from fp_onnx.prune_point import find_prune_points, resolve_prune_point
from fp_onnx.ranked_prune import measure_ranked_curve, prune_ranked
from fp_onnx.ranking import CRITERIA, ChannelRanking, RankingInputs, global_order, rank_channels, register_criterion
from fp_onnx.runtime import RuntimeOptions
from fp_onnx.surgery import mask_points

CPU = RuntimeOptions(device="cpu")


@pytest.fixture(scope="module")
def inputs(backdoored):
    model = load_model(backdoored["model"]).model
    train, val = split_dataset(open_dataset(backdoored["clean"]), 0.2, 0)
    return RankingInputs(model, tuple(find_prune_points(model)), resolve_prune_point(model, None), train,
                         options=CPU, device="cpu"), val


def test_activation_is_the_papers_order_exactly(inputs):
    ranking_inputs, _ = inputs
    ranking = rank_channels("activation", ranking_inputs)
    profile = profile_model(ranking_inputs.model, ranking_inputs.default, ranking_inputs.clean, options=CPU)
    assert ranking.single_point and [c for _, c in ranking.order] == profile.pruning_order().tolist()
    np.testing.assert_array_equal(ranking.scores[0], profile.clean.mean_activation)


@pytest.mark.parametrize("criterion", ["rnp", "anp"])
def test_learned_criteria_rank_every_removable_point_with_masks_in_unit_range(inputs, criterion, monkeypatch):
    ranking_inputs, _ = inputs
    module = __import__(f"fp_onnx.ranking.{'unlearning' if criterion == 'rnp' else 'perturbation'}",
                        fromlist=["x"])
    for name, value in {"UNLEARN_EPOCHS": 3, "MASK_EPOCHS": 2, "ANP_STEPS": 20}.items():
        if hasattr(module, name):
            monkeypatch.setattr(module, name, value)
    ranking = rank_channels(criterion, ranking_inputs)
    assert len(ranking.points) >= 2 and not ranking.single_point
    for point, scores in zip(ranking.points, ranking.scores):
        assert scores.shape == (point.channels,) and np.all((0 <= scores) & (scores <= 1))
    # every point keeps at least one channel out of the order, the order follows the scores
    for index, point in enumerate(ranking.points):
        assert sum(1 for i, _ in ranking.order if i == index) <= point.channels - 1
    ordered = [ranking.scores[i][c] for i, c in ranking.order]
    assert ordered == sorted(ordered)


def test_global_order_keeps_a_channel_per_point_and_breaks_ties_by_point_then_channel():
    points = [type("P", (), {"channels": 3})(), type("P", (), {"channels": 2})()]
    order = global_order([np.array([0.5, 0.1, 0.1]), np.array([0.1, 0.0])], points)
    assert order == [(1, 1), (0, 1), (0, 2)]  # point 1 keeps one channel, point 0 keeps its highest


def test_registry_refuses_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="already registered"):
        register_criterion("rnp")(lambda inputs: None)
    with pytest.raises(BadOptionError, match="--rank"):
        rank_channels("oracle", None)
    assert {"activation", "rnp", "anp"} <= set(CRITERIA)


def test_multi_point_surgery_equals_the_masked_reference(inputs):
    """Removing channels in several layers computes exactly what forcing them to zero does."""
    ranking_inputs, val = inputs
    points = [p for p in ranking_inputs.points if p.channels >= 4][:3]
    scores = [np.random.default_rng(i).random(p.channels) for i, p in enumerate(points)]
    ranking = ChannelRanking("test", points, global_order(scores, points), scores)
    count = len(ranking.order) // 2
    pruned = prune_ranked(ranking_inputs.model, ranking, count)
    reference = mask_points(ranking_inputs.model, {points[i]: c for i, c in ranking.channels_by_point(count).items()})
    x = np.asarray(val.take(np.arange(len(val))).x, dtype=np.float32)
    out_pruned = ModelRunner(pruned.model, options=CPU).run(x)["logits"]
    out_reference = ModelRunner(reference, options=CPU).run(x)["logits"]
    np.testing.assert_allclose(out_pruned, out_reference, rtol=1e-5, atol=1e-5 * np.abs(out_reference).max())
    assert len(pruned.channels_removed) == count
    assert sum(init.dims[0] for init in pruned.model.graph.initializer if init.name.endswith("weight")) < \
        sum(init.dims[0] for init in ranking_inputs.model.graph.initializer if init.name.endswith("weight"))


def test_ranked_curve_stops_at_the_last_count_within_the_threshold(inputs):
    ranking_inputs, val = inputs
    points = list(ranking_inputs.points)
    scores = [np.random.default_rng(7 + i).random(p.channels) for i, p in enumerate(points)]
    ranking = ChannelRanking("test", points, global_order(scores, points), scores)
    curve = measure_ranked_curve(ranking_inputs.model, ranking, val, StopRule("threshold", 0.04), options=CPU)
    count = channels_to_prune(curve, StopRule("threshold", 0.04))
    baseline = curve.clean_accuracy[0]
    measured = dict(zip(curve.channels_pruned, curve.clean_accuracy))
    assert baseline - measured[count] <= 0.04 + 1e-12
    beyond = [n for n in curve.channels_pruned if n > count]
    if beyond:  # the next measured count is beyond the threshold and, after bisection, right after the stop
        cell = len(ranking.order) / (len(steps_to_measure(len(ranking.order))) - 1)
        assert baseline - measured[beyond[0]] > 0.04
        assert beyond[0] - count <= max(1, math.ceil(cell / 2 ** REFINE_STEPS))


def test_refine_between_bisects_to_the_last_good_count():
    good, tried = refine_between(0, 64, lambda k: k <= 37)
    assert good == 37 and len(tried) == 6
