"""Fine-pruning end to end on a backdoored model trained inside the test (paper §3.3)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from backdoor_fixture import TARGET
from fp_onnx.cli.main import cli
from fp_onnx.data import open_dataset
from fp_onnx.defense import DefenseConfig, fine_prune
from fp_onnx.errors import BadOptionError
from fp_onnx.finetune import FineTuneConfig, add_weight_noise
from fp_onnx.converters import onnx_to_torch
from fp_onnx.loading import load_model
from fp_onnx.metrics import AttackSpec
from fp_onnx.prune import StopRule
from fp_onnx.prune_point import resolve_prune_point
from fp_onnx.runtime import RuntimeOptions
from fp_onnx.signature import signature_of

CPU = RuntimeOptions(device="cpu")
FAST = FineTuneConfig(epochs=8, patience=3, device="cpu", batch_size=64)
THRESHOLD = 0.04


@pytest.fixture(scope="module")
def defended(backdoored):
    model = load_model(backdoored["model"]).model
    config = DefenseConfig(rule=StopRule("threshold", THRESHOLD), finetune=FAST, baselines=True)
    result = fine_prune(model, resolve_prune_point(model, None), open_dataset(backdoored["clean"]),
                        triggered=open_dataset(backdoored["triggered"]), attack=AttackSpec("targeted", TARGET),
                        config=config, options=CPU)
    return model, result


def test_the_default_method_removes_the_shipped_demos_backdoor():
    """The README's promise: fp-onnx's default (`recommended`: prune what costs no clean accuracy, unlearn
    universal perturbations with distillation from the vendor model, gentler recipes where that costs clean
    accuracy) with its own settings removes the backdoor of the shipped model (the zoo's `speech_dormant`, an
    all-to-one noise-burst backdoor in dormant channels built by `models/`, not for this test) and keeps its
    clean accuracy, measured on the held-out clean and triggered test files. The defender holds 10 % of the
    vendor's training data, the benchmark's rule (bench/reproduce_paper.py, same seeded sample). Measured
    0.987 / 0.019 from 0.987 / 1.000 (one torch thread; 0.007-0.022 with the whole clean file, one or two
    threads); the paper's method leaves 0.43."""
    from fp_onnx.methods import DEFAULT_METHOD, METHODS, defense_config
    from fp_onnx.models import shipped_demo

    demo = shipped_demo()
    model = load_model(demo["model"]).model
    clean = open_dataset(demo["clean_val"])
    share = round(0.1 * json.loads(demo["model_card"].read_text())["data"]["train_samples"])
    defender = clean.subset(np.sort(np.random.default_rng(0).permutation(len(clean))[:share]))
    result = fine_prune(model, resolve_prune_point(model, None), defender,
                        test=open_dataset(demo["clean_test"]), triggered=open_dataset(demo["triggered_test"]),
                        attack=AttackSpec("targeted", None),
                        config=defense_config(METHODS[DEFAULT_METHOD], FineTuneConfig(device="cpu")), options=CPU)
    vendor, defended = result.table["none"], result.table["fine-pruning"]
    attempts = result.method["recover_attempts"]
    assert attempts[-1]["recipe"] == result.method["recover"] and not attempts[-1]["below_floor"]
    assert attempts[-1]["kept"] == result.finetune.describe_kept()
    assert defended.attack_success <= 0.1 < 0.9 < vendor.attack_success
    assert defended.clean_accuracy >= vendor.clean_accuracy - 0.02
    check = result.method["warp_check"]  # the default checks for a warp trigger; this backdoor is a noise burst
    assert len(check["reach"]) == 10 and check["suspect_class"] is None
    assert attempts[0]["recipe"] == METHODS[DEFAULT_METHOD].recover[0]


def test_the_fixture_really_is_backdoored(defended):
    _, result = defended
    vendor = result.table["none"]
    assert vendor.clean_accuracy > 0.8 and vendor.attack_success > 0.9


def test_fine_pruning_lowers_attack_success_and_keeps_clean_accuracy(defended):
    _, result = defended
    vendor, fine_pruned = result.table["none"], result.table["fine-pruning"]
    assert fine_pruned.attack_success < vendor.attack_success - 0.3
    assert fine_pruned.clean_accuracy >= vendor.clean_accuracy - THRESHOLD
    assert result.prune.channels_pruned > 0
    assert list(result.table) == ["none", "pruning", "fine-tuning", "fine-pruning"]


def test_defended_model_keeps_the_vendor_signature_and_the_pruned_graph(defended):
    vendor, result = defended
    assert result.signature_problems == []
    assert signature_of(result.defended) == signature_of(vendor)
    pruned = result.prune.surgery.model
    strip = lambda m: [(n.name, n.op_type, list(n.input), list(n.output)) for n in m.graph.node]  # noqa: E731
    assert strip(result.defended) == strip(pruned)
    onnx.checker.check_model(result.defended, full_check=True)


def test_split_is_deterministic_and_disjoint(defended, backdoored):
    _, result = defended
    total = len(open_dataset(backdoored["clean"]))
    assert result.split["fine_tune_samples"] + result.split["validation_samples"] == total
    assert result.split["by_groups"] is False  # the fixture's data names no groups


def test_weight_noise_is_relative_and_seeded(backdoored):
    model = load_model(backdoored["model"]).model
    first, second, again = onnx_to_torch(model), onnx_to_torch(model), onnx_to_torch(model)
    add_weight_noise(second, 0.1, seed=1)
    add_weight_noise(again, 0.1, seed=1)
    for (name, a), b, c in zip(first.named_parameters(), second.parameters(), again.parameters()):
        assert (b == c).all(), name
        if a.numel() > 1:
            ratio = float((b - a).detach().std() / a.detach().std())
            assert 0.05 < ratio < 0.2, name


def test_invalid_fine_tune_settings():
    with pytest.raises(BadOptionError):
        FineTuneConfig(optimizer="lbfgs")
    with pytest.raises(BadOptionError):
        FineTuneConfig(lr=0)
    with pytest.raises(BadOptionError):
        FineTuneConfig(noise=-1)


def test_fine_prune_cli_writes_the_report(backdoored, tmp_path):
    result = CliRunner().invoke(cli, [
        "fine-prune", str(backdoored["model"]), "--data", str(backdoored["clean"]), "--test-data",
        str(backdoored["clean_test"]), "--trigger-data", str(backdoored["triggered"]), "--target", str(TARGET),
        "--method", "paper", "--epochs", "2", "--device", "cpu", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "Fine-Pruning " in result.output and "(defended)" not in result.output  # neutral row names
    assert "fine-tuned, kept the best epoch " in result.output  # the paper's early stopping keeps its best epoch
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report)[0] == "verdict" and report["verdict"]["status"] == "defended"
    assert report["verdict"]["measured"]["attack_success"] <= 0.05 and report["verdict"]["exit_code"] == 0
    assert result.output.strip().splitlines()[-1] == f"verdict: {report['verdict']['summary']}"
    assert "backdoor gone" in report["verdict"]["summary"] and report["defended"]["shipped"] is True
    assert not (tmp_path / "defended.onnx.rejected").exists()
    assert report["defense"]["evaluated_on"] == "test"
    assert report["defense"]["method"]["name"] == "paper" and report["defense"]["prune"]["criterion"] == "activation"
    assert report["defense"]["signature_check"]["matches_vendor"] is True
    assert report["vendor"]["sha256"] != report["defended"]["sha256"]
    assert report["cost"]["defended"]["parameters"] < report["cost"]["vendor"]["parameters"]
    assert set(report["versions"]) >= {"onnx", "onnxruntime", "torch", "numpy", "fp_onnx"}
    assert report["defense"]["seconds"]["prune"] > 0 and len(report["defense"]["prune_curve"]["steps"]) == 32
    measured = report["verdict"]["measured"]
    interval = measured["clean_accuracy_drop_interval"]  # of the written file against the vendor, paired
    assert measured["clean_accuracy_drop"] == pytest.approx(interval["estimate"])
    assert interval["low"] <= interval["estimate"] <= interval["high"]
    attack = measured["attack_success_interval"]  # targeted: a share of the triggered samples not of the target
    assert 0 < attack["samples"] <= report["defense"]["table"]["fine-pruning"]["triggered_samples"]
    assert attack["low"] <= measured["attack_success"] <= attack["high"]
    limit = report["defended"]["guard"]["limits"]["max_accuracy_drop"]
    assert ("cannot rule out" in report["verdict"]["summary"]) == (interval["high"] > limit + 1e-12)
    page = (tmp_path / "report.html").read_text()
    assert "clean-accuracy cost, 95 % interval" in page
    assert "kept (best epoch " in page  # the recipes tried, with the weights each one kept
    assert page.count("data:image/png;base64,") == 2 and "http" not in page.replace("http-equiv", "")
    for name in ("defended.onnx", "pruned.onnx", "activations.png", "prune_curve.png"):
        assert (tmp_path / name).stat().st_size > 0
    defended = onnx.load(tmp_path / "defended.onnx")
    assert signature_of(defended) == signature_of(onnx.load(backdoored["model"]))


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["--threshold", "-0.5"], "must lie in [0, 1]"),
        (["--target", "3"], "give --trigger-data"),
        (["--lr", "0"], "must be positive"),
        (["--val-fraction", "1.5"], "strictly between 0 and 1"),
    ],
)
def test_fine_prune_bad_flags_leave_no_output(backdoored, tmp_path, args, pattern):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["fine-prune", str(backdoored["model"]), "--data", str(backdoored["clean"]),
                                      "--epochs", "1", "--device", "cpu", "--out", str(out), *args])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], result.output
    assert not out.exists() or not any(out.iterdir())


def test_finetune_under_torchrun_with_two_gloo_processes(backdoored, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    fp_onnx = Path(sys.executable).with_name("fp-onnx")
    if not torchrun.exists() or not fp_onnx.exists():
        pytest.skip("torchrun / fp-onnx console scripts not installed next to this Python")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", str(fp_onnx), "finetune", str(backdoored["model"]),
         "--data", str(backdoored["clean"]), "--epochs", "1", "--device", "cpu", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = json.loads((tmp_path / "finetune.json").read_text())
    assert report["world_size"] == 2 and len(report["history"]) == 1
    assert report["signature_check"]["matches_vendor"] is True
    onnx.checker.check_model(onnx.load(tmp_path / "finetuned.onnx"), full_check=True)
