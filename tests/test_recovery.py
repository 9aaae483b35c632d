"""Fine-tuning that notices and recovers: calibration, divergence detection, lr back-off, recipes.

The vendor models here are real exports trained in the session: a Caffe-style model
taking 0-255 inputs with no normalisation inside (`raw_pixel`, the paper's DeepID case)
and the BadNets speech model of tests/backdoor_fixture.py.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fp_onnx.calibration import Calibration, layer_lr_scales
from fp_onnx.cli.main import cli
from fp_onnx.data import ArrayDataset, open_dataset, split_dataset
from fp_onnx.divergence import DivergenceMonitor
from fp_onnx.errors import BadOptionError
from fp_onnx.finetune import FineTuneConfig, fine_tune
from fp_onnx.guard import check_clean
from fp_onnx.loading import load_model
from fp_onnx.methods import METHODS
from fp_onnx.recipes import RECIPES, TrainingPlan, register_recipe
from fp_onnx.runtime import RuntimeOptions
from fp_onnx.shipping import ship_guarded

CPU = RuntimeOptions(device="cpu")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


# ---------------------------------------------------------------- the pieces, on numbers
def test_layer_scales_single_out_a_tensor_out_of_proportion():
    weights = {"conv1": 0.0066, "conv2": 3.7, "conv3": 5.6, "fc": 5.0, "fc_bias": 0.1}
    gradients = {"conv1": 2550.0, "conv2": 4.3, "conv3": 1.9, "fc": 6.4, "fc_bias": 0.15}
    scales = layer_lr_scales(gradients, weights, spread=10.0)
    assert list(scales) == ["conv1"]
    ratios = {name: gradients[name] / weights[name] for name in weights}
    assert math.isclose(ratios["conv1"] * scales["conv1"], 10 * float(np.median(list(ratios.values()))))
    assert layer_lr_scales(gradients, weights, spread=0) == {}
    assert layer_lr_scales({"a": 1.0, "b": 0.0}, {"a": 1.0, "b": 0.0}, 10.0) == {}  # one usable tensor: no median


def test_clip_threshold_settings():
    calibration = Calibration(reference_loss=0.3, gradient_norm=2.0)
    assert calibration.clip_threshold("auto") == 10.0
    assert calibration.clip_threshold(0) is None and calibration.clip_threshold(3.5) == 3.5
    assert Calibration(0.3, math.nan).clip_threshold("auto") is None


def test_monitor_flags_non_finite_blow_up_and_collapse():
    monitor = DivergenceMonitor(reference_loss=0.02, classes=10, initial_accuracy=0.95)
    assert math.isclose(monitor.loss_bound, 0.02 + math.log(10))  # a near-perfect start: bound = worse than guessing
    assert all(monitor.batch(loss) is None for loss in (0.5, 1.0, 2.0, 0.3))  # noise well above 4x the start
    assert "non-finite" in monitor.batch(math.nan)
    monitor.restart()
    assert all(monitor.batch(0.3) is None for _ in range(3))
    assert monitor.batch(20.0) is None  # smoothed: one hard batch is not a blow-up ...
    assert "blew up" in monitor.batch(20.0)  # ... a run of them is
    assert monitor.epoch(0.90) is None
    assert "collapsed" in monitor.epoch(0.80)
    assert "non-finite" in monitor.epoch(0.95, outputs_finite=False)
    assert DivergenceMonitor(100.0, 10, 0.5).loss_bound == 400.0


@pytest.mark.parametrize("bad", [dict(max_recoveries=-1), dict(clip_grad_norm=-1.0), dict(clip_grad_norm="often"),
                                 dict(recipe="sam-but-not-registered"), dict(lr_backoff=1.0), dict(collapse_drop=0)])
def test_invalid_robustness_settings(bad):
    with pytest.raises(BadOptionError):
        FineTuneConfig(**bad)


# ---------------------------------------------------------------- raw 0-255 inputs (the paper's DeepID case)
def test_raw_pixel_model_fine_prunes_with_defaults(raw_pixel, tmp_path):
    result = run("fine-prune", raw_pixel["model"], "--data", raw_pixel["clean"], "--device", "cpu", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    verdict, tuned = report["verdict"], report["defense"]["finetune"]
    assert verdict["status"] == "defended" and verdict["measured"]["clean_accuracy_drop"] <= 0.04 + 1e-9
    assert verdict["measured"]["nonfinite_outputs"] == 0 and (tmp_path / "defended.onnx").is_file()
    # the input conv (weights 255x smaller) was singled out; the default method's recipes were tried in order
    # and the one that shipped ended above the floor without a failure
    assert list(tuned["calibration"]["lr_scales"]) == ["0.conv1.weight"]
    assert tuned["calibration"]["lr_scales"]["0.conv1.weight"] < 1e-3
    attempts = report["defense"]["method"]["recover_attempts"]
    assert [a["recipe"] for a in attempts] == list(METHODS["recommended"].recover)[:len(attempts)]
    assert tuned["failure"] is None and tuned["best_epoch"] >= 1 and not attempts[-1]["below_floor"]


def test_raw_pixel_model_fine_prunes_with_the_papers_method(raw_pixel, tmp_path):
    result = run("fine-prune", raw_pixel["model"], "--data", raw_pixel["clean"], "--method", "paper",
                 "--device", "cpu", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    tuned = json.loads((tmp_path / "report.json").read_text())["defense"]["finetune"]
    assert tuned["failure"] is None and tuned["history"][0]["lr"] == 0.001  # the rest trained at the paper's lr
    assert tuned["best_epoch"] >= 1 and tuned["history"][0]["train_loss"] < 2.0


def test_raw_pixel_model_without_the_protection_diverges_and_is_rejected(raw_pixel, tmp_path):
    """The same run with layer scaling, clipping and recovery off: what happened to the paper's DeepID model."""
    loaded = load_model(raw_pixel["model"])
    train, val = split_dataset(open_dataset(raw_pixel["clean"]), 0.2, 0)
    config = FineTuneConfig(device="cpu", epochs=2, layer_scale_spread=0, clip_grad_norm=0, max_recoveries=0)
    tuned = fine_tune(loaded.model, train, val, config)
    assert tuned.failure is not None and tuned.history[0]["train_loss"] > 50  # the issue saw 577
    vendor = check_clean(loaded.model, val, options=CPU)
    path, guard = ship_guarded(tuned.model, tmp_path, "finetuned.onnx", vendor, val, 0.04, options=CPU)
    assert not guard.passed and path.name == "finetuned.onnx.rejected"
    assert not (tmp_path / "finetuned.onnx").exists() and guard.accuracy_drop > 0.5


# ---------------------------------------------------------------- recovery: restore the last good weights, lower lr
def test_divergence_is_recovered_by_restoring_and_lowering_the_lr(raw_pixel, tmp_path):
    result = run("finetune", raw_pixel["model"], "--data", raw_pixel["clean"], "--lr", "0.05", "--epochs", "2",
                 "--device", "cpu", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "finetune.json").read_text())
    recoveries = report["recoveries"]
    assert len(recoveries) >= 1 and recoveries[0]["lr_before"] == 0.05 and recoveries[0]["lr_after"] == 0.005
    assert all(r["restored_epoch"] == 0 for r in recoveries if r["epoch"] == 1)
    assert report["final_lr"] == recoveries[-1]["lr_after"] and report["failure"] is None
    assert [h["diverged"] is not None for h in report["history"]][: len(recoveries)] == [True] * len(recoveries)
    assert report["guard"]["passed"] and (tmp_path / "finetuned.onnx").is_file()
    assert "recover" in result.output


def test_the_same_run_with_recovery_off_is_not_shipped(raw_pixel, tmp_path):
    stale = tmp_path / "finetuned.onnx"
    tmp_path.mkdir(exist_ok=True)
    stale.write_bytes(b"an earlier run's result")
    result = run("finetune", raw_pixel["model"], "--data", raw_pixel["clean"], "--lr", "0.05", "--max-recoveries", "0",
                 "--device", "cpu", "--out", tmp_path)
    assert result.exit_code == 7, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "finetuned.onnx rejected" in errors[0] and "below the vendor's" in errors[0]
    assert "recovery off" in errors[0]
    assert not stale.exists() and (tmp_path / "finetuned.onnx.rejected").is_file()
    report = json.loads((tmp_path / "finetune.json").read_text())
    assert report["guard"]["passed"] is False and report["finetuned_model"] == "finetuned.onnx.rejected"
    assert report["recoveries"] == [] and report["failure"]


@pytest.fixture(scope="module")
def misleading_training(raw_pixel):
    """The raw-pixel model, clean validation data, and training data whose labels are shuffled.

    Fine-tuning on it lowers clean accuracy steadily, without a loss blow-up (the start loss on
    shuffled labels is already high): the case a divergence check cannot see but the floor can.
    """
    model = load_model(raw_pixel["model"]).model
    train, val = split_dataset(open_dataset(raw_pixel["clean"]), 0.2, 0)
    batch = train.take(np.arange(len(train)))
    shuffled = ArrayDataset(batch.x, np.random.default_rng(0).permutation(batch.y))
    start = check_clean(model, val, options=CPU).accuracy
    return model, shuffled, val, start - 0.04


def test_a_run_that_makes_a_usable_model_unusable_restarts_at_a_lower_lr(misleading_training):
    model, train, val, floor = misleading_training
    config = FineTuneConfig(device="cpu", epochs=2, patience=1, collapse_drop=1.0)  # collapse check off: the floor acts
    tuned = fine_tune(model, train, val, config, accuracy_floor=floor)
    first = tuned.recoveries[0]
    assert "ended below the accuracy floor" in first["reason"] and first["restored_epoch"] == 0
    assert first["lr_before"] == 0.001 and first["batch"] is None
    assert tuned.failure is None and tuned.best_val_accuracy >= floor
    assert tuned.history[0]["lr"] == 0.001 and tuned.history[-1]["lr"] == tuned.final_lr < 0.001


def test_without_recovery_the_floor_is_reported_as_the_failure(misleading_training):
    model, train, val, floor = misleading_training
    config = FineTuneConfig(device="cpu", epochs=2, patience=1, collapse_drop=1.0, max_recoveries=0)
    tuned = fine_tune(model, train, val, config, accuracy_floor=floor)
    assert tuned.recoveries == [] and "ended below the accuracy floor" in tuned.failure
    assert tuned.best_val_accuracy < floor and tuned.best_epoch >= 1  # the best fine-tuned epoch, for the guard to judge


# ---------------------------------------------------------------- recipes
def test_a_registered_recipe_supplies_optimizer_schedule_and_loss_terms(backdoored):
    calls = {"terms": 0, "groups": None}

    @register_recipe("test-adam-cosine")
    def recipe(module, groups, config, steps_per_epoch, prepared):
        calls["groups"] = [group["lr"] for group in groups]
        optimizer = torch.optim.Adam(groups)
        first = next(module.parameters())

        def l2(batch) -> torch.Tensor:
            calls["terms"] += 1
            return 1e-4 * first.pow(2).sum()

        return TrainingPlan(optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps_per_epoch),
                            (l2,))

    try:
        with pytest.raises(ValueError, match="already registered"):
            register_recipe("test-adam-cosine")(recipe)
        train, val = split_dataset(open_dataset(backdoored["clean"]), 0.2, 0)
        tuned = fine_tune(load_model(backdoored["model"]).model, train, val,
                          FineTuneConfig(device="cpu", epochs=1, recipe="test-adam-cosine", lr=1e-4))
        assert calls["groups"] == [1e-4] and calls["terms"] == math.ceil(len(train) / 64)
        assert tuned.config["recipe"] == "test-adam-cosine" and len(tuned.history) == 1
    finally:
        RECIPES.pop("test-adam-cosine")


def test_recovery_under_torchrun_keeps_the_ranks_in_step(raw_pixel, tmp_path):
    """A divergence noticed mid-epoch must stop every rank at the same batch (else one waits forever in DDP)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    fp_onnx = Path(sys.executable).with_name("fp-onnx")
    if not torchrun.exists() or not fp_onnx.exists():
        pytest.skip("torchrun / fp-onnx console scripts not installed next to this Python")
    completed = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", str(fp_onnx), "finetune", str(raw_pixel["model"]),
         "--data", str(raw_pixel["clean"]), "--lr", "0.05", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = json.loads((tmp_path / "finetune.json").read_text())
    assert report["world_size"] == 2 and report["recoveries"] and report["guard"]["passed"]
    assert report["recoveries"][0]["lr_before"] == 0.05
