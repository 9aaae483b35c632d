"""Never ship a broken model: the guard on the written file, result names, the verdict and exit codes 7 and 8."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from backdoor_fixture import TARGET
from fp_onnx.cli.main import cli
from fp_onnx.data import ArrayDataset, open_dataset
from fp_onnx.errors import BackdoorRemainsError, ModelRejectedError
from fp_onnx.guard import CleanCheck, GuardResult, check_clean, guard_written_model, max_accuracy_drop_for
from fp_onnx.inference import ModelRunner
from fp_onnx.loading import load_model
from fp_onnx.prune import StopRule
from fp_onnx.runtime import RuntimeOptions
from fp_onnx.shipping import retire, ship_guarded, ship_model
from fp_onnx.verdict import VerdictLimits, defense_verdict

CPU = RuntimeOptions(device="cpu")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def with_nan_weight(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with one NaN in the classifier's weights: one logit per sample turns NaN, the others stay finite."""
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    tensor = [t for t in broken.graph.initializer if np.prod(t.dims) > 1][-1]
    values = numpy_helper.to_array(tensor).copy()
    values.flat[0] = np.nan
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    return broken


# ---------------------------------------------------------------- the guard, on written files
def test_guard_rejects_a_written_file_whose_outputs_are_nan(backdoored, tmp_path):
    vendor_model = load_model(backdoored["model"]).model
    clean = open_dataset(backdoored["clean"])
    vendor = check_clean(vendor_model, clean, options=CPU)
    assert vendor.finite and vendor.accuracy > 0.8
    path, guard = ship_guarded(with_nan_weight(vendor_model), tmp_path, "finetuned.onnx", vendor, clean, 1.0,
                               options=CPU)
    assert not guard.passed and guard.written.nonfinite_samples == len(clean)
    assert "not finite" in guard.reasons()[0]  # even with --max-accuracy-drop 1, NaN never ships
    assert path == tmp_path / "finetuned.onnx.rejected" and not (tmp_path / "finetuned.onnx").exists()
    outputs = ModelRunner(load_model(path).model, options=CPU).run(clean.take(np.arange(4)).x)["logits"]
    assert np.isnan(outputs).any(axis=1).all()  # the rejected file is the broken model itself (one NaN logit each)


def test_guard_measures_the_file_not_the_model_in_memory(backdoored, tmp_path):
    vendor_model = load_model(backdoored["model"]).model
    clean = open_dataset(backdoored["clean"])
    vendor = check_clean(vendor_model, clean, options=CPU)
    path, guard = ship_guarded(vendor_model, tmp_path, "pruned.onnx", vendor, clean, 0.0, options=CPU)
    assert guard.passed and guard.accuracy_drop == 0 and path == tmp_path / "pruned.onnx"

    def damaged_then_guarded(written):
        written.write_bytes(written.read_bytes()[:100])  # what reached the disk is not the model in memory
        return guard_written_model(written, vendor, clean, 0.04, name="pruned.onnx", options=CPU)[0]

    with pytest.raises(ModelRejectedError, match="pruned.onnx rejected: the written file does not load back"):
        ship_model(vendor_model, tmp_path, "pruned.onnx", damaged_then_guarded, lambda result: result.passed)
    assert not (tmp_path / "pruned.onnx").exists() and (tmp_path / "pruned.onnx.rejected").exists()


def test_retire_removes_an_earlier_runs_results(tmp_path):
    for name in ("defended.onnx", "defended.onnx.rejected", "defended.onnx.data", "pruned.onnx", "report.json"):
        (tmp_path / name).write_text("old")
    retire(tmp_path, ["defended.onnx", "pruned.onnx"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


# ---------------------------------------------------------------- the verdict
def guard(vendor: float, written: float, nonfinite: int = 0, limit: float = 0.04) -> GuardResult:
    return GuardResult("defended.onnx", CleanCheck(vendor, 200, 0), CleanCheck(written, 200, nonfinite), limit)


@pytest.mark.parametrize(
    "measured,attack,status,code,text",
    [
        ((0.98, 0.99), None, "defended", 0, "defended; backdoor not measured"),
        ((0.98, 0.98), 0.02, "defended", 0, "defended; backdoor gone: attack success 0.0200 <= 0.05"),
        ((0.98, 0.965), 0.02, "defended", 0, "defended at a clean-accuracy cost of 0.0150"),
        ((0.98, 0.90), 0.02, "failed", 7, "failed: clean accuracy 0.9000 is 0.0800 below the vendor's 0.9800"),
        ((0.98, 0.97), 0.75, "failed", 8, "failed: backdoor remains: attack success 0.7500 > 0.05"),
        ((0.98, 0.10), 0.75, "failed", 7, "backdoor remains"),  # both: the unusable model is the headline
    ],
)
def test_verdict(measured, attack, status, code, text):
    verdict = defense_verdict(guard(*measured), attack, VerdictLimits(), kept_as="defended.onnx.rejected",
                              shipped_as="defended.onnx")
    assert (verdict.status, verdict.exit_code) == (status, code)
    assert text in verdict.summary
    assert verdict.model == ("defended.onnx" if code == 0 else "defended.onnx.rejected")
    error = verdict.error()
    assert (error is None) == (code == 0)
    if error is not None:
        assert error.exit_code == code and isinstance(error, (ModelRejectedError, BackdoorRemainsError))
        assert "defended.onnx.rejected" in str(error) and "\n" not in str(error)
    machine = verdict.to_dict()
    assert machine["limits"] == {"max_accuracy_drop": 0.04, "max_attack_success": 0.05, "outputs_finite": True}
    assert machine["measured"]["attack_success"] == attack


def test_non_finite_outputs_fail_whatever_the_accuracy():
    verdict = defense_verdict(guard(0.5, 0.5, nonfinite=3, limit=1.0), None, VerdictLimits(max_accuracy_drop=1.0),
                              kept_as="d.rejected", shipped_as="d")
    assert verdict.exit_code == 7 and "3 of 200 validation outputs are not finite" in verdict.summary


def paired_guard(samples: int, vendor_only: int, written_only: int, limit: float = 0.02) -> GuardResult:
    """The vendor and the written model on the same `samples`: right on the same ones except `vendor_only`
    samples only the vendor gets right and `written_only` only the written model does."""
    vendor = [True] * (samples - written_only) + [False] * written_only
    written = [True] * (samples - written_only - vendor_only) + [False] * vendor_only + [True] * written_only
    check = lambda correct: CleanCheck(sum(correct) / samples, samples, 0, tuple(correct))  # noqa: E731
    return GuardResult("defended.onnx", check(vendor), check(written), limit)


def test_a_cost_that_few_validation_samples_cannot_bound_is_said_with_the_verdict():
    small = defense_verdict(paired_guard(69, vendor_only=3, written_only=2, limit=0.029), 0.01, VerdictLimits(),
                            kept_as="d.rejected", shipped_as="d")
    assert small.status == "defended" and small.exit_code == 0  # the guard still decides on the measured cost
    assert "69 validation samples cannot rule out a clean-accuracy cost of up to" in small.summary
    interval = small.to_dict()["measured"]["clean_accuracy_drop_interval"]
    assert interval["low"] < 1 / 69 < 0.029 < interval["high"] and interval["confidence"] == 0.95

    large = defense_verdict(paired_guard(2000, vendor_only=6, written_only=4), 0.01, VerdictLimits(),
                            kept_as="d.rejected", shipped_as="d")
    assert large.status == "defended" and "cannot rule out" not in large.summary
    assert large.to_dict()["measured"]["clean_accuracy_drop_interval"]["high"] < 0.02


@pytest.mark.parametrize("attack,samples,warned", [(0.04, 300, True), (0.0037, 270, False), (0.04, None, False)])
def test_an_attack_success_that_few_triggered_samples_cannot_bound_is_said_with_the_verdict(attack, samples, warned):
    verdict = defense_verdict(paired_guard(2000, 0, 0), attack, VerdictLimits(), kept_as="d.rejected",
                              shipped_as="d", attack_samples=samples)
    assert verdict.status == "defended" and "backdoor gone" in verdict.summary
    assert ("triggered samples cannot rule out an attack success of up to" in verdict.summary) == warned
    interval = verdict.to_dict()["measured"]["attack_success_interval"]
    if samples is None:  # untargeted: a ratio of accuracies, no share of samples
        assert interval is None
    else:
        assert interval["samples"] == samples and interval["low"] <= attack <= interval["high"]
        assert (interval["high"] > 0.05) == warned


def test_a_guard_without_per_sample_outcomes_reports_no_interval():
    verdict = defense_verdict(guard(0.98, 0.97), None, VerdictLimits(), kept_as="d.rejected", shipped_as="d")
    assert verdict.to_dict()["measured"]["clean_accuracy_drop_interval"] is None
    assert "cannot rule out" not in verdict.summary


def test_check_clean_keeps_which_samples_were_right(backdoored):
    clean = open_dataset(backdoored["clean"])
    check = check_clean(load_model(backdoored["model"]).model, clean, options=CPU)
    assert len(check.correct) == len(clean) and sum(check.correct) == round(check.accuracy * len(clean))
    assert "correct" not in check.to_dict()  # report.json gets the counts, not one flag per sample


# ---------------------------------------------------------------- the commands
def test_fine_prune_forced_to_diverge_ships_nothing(backdoored, tmp_path):
    (tmp_path / "defended.onnx").write_bytes(b"an earlier run's defended model")
    result = run("fine-prune", backdoored["model"], "--data", backdoored["clean"], "--trigger-data",
                 backdoored["triggered"], "--target", TARGET, "--lr", "1e30", "--max-recoveries", "0",
                 "--method", "paper", "--epochs", "2", "--device", "cpu", "--out", tmp_path)
    assert result.exit_code == 7, result.output
    errors = error_lines(result)
    assert len(errors) == 1 and errors[0].startswith("error: defended.onnx rejected: ")
    assert "validation outputs are not finite" in errors[0] and "fine-tuning failed with recovery off" in errors[0]
    assert "kept as defended.onnx.rejected" in errors[0] and "Traceback" not in result.output
    assert not (tmp_path / "defended.onnx").exists()  # the stale one is gone too
    assert "defended.onnx" not in [p.name for p in tmp_path.glob("*.onnx")]
    assert (tmp_path / "defended.onnx.rejected").is_file()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verdict"]["status"] == "failed" and report["verdict"]["exit_code"] == 7
    assert report["verdict"]["measured"]["nonfinite_outputs"] == report["verdict"]["measured"]["validation_samples"]
    assert report["defended"]["shipped"] is False and report["defense"]["finetune"]["failure"]
    assert "failed:" in (tmp_path / "report.html").read_text()


def test_fine_prune_exits_8_when_the_backdoor_remains(backdoored, tmp_path):
    result = run("fine-prune", backdoored["model"], "--data", backdoored["clean"], "--trigger-data",
                 backdoored["triggered"], "--target", TARGET, "--channels", "0", "--lr", "1e-6", "--epochs", "1",
                 "--method", "paper", "--device", "cpu", "--out", tmp_path)
    assert result.exit_code == 8, result.output
    errors = error_lines(result)
    assert len(errors) == 1 and errors[0].startswith("error: backdoor remains: attack success ")
    assert "> 0.05" in errors[0] and "defended.onnx.rejected" in errors[0]
    assert not (tmp_path / "defended.onnx").exists() and (tmp_path / "defended.onnx.rejected").is_file()
    verdict = json.loads((tmp_path / "report.json").read_text())["verdict"]
    assert verdict["status"] == "failed" and verdict["measured"]["attack_success"] > 0.5
    assert verdict["measured"]["clean_accuracy_drop"] <= 0.04  # usable, but still backdoored
    table = result.output.split("wrote")[0]
    assert "Fine-Pruning" in table and "defended" not in table


def test_prune_checks_the_written_file(backdoored, tmp_path):
    good = run("prune", backdoored["model"], "--data", backdoored["clean"], "--device", "cpu", "--out", tmp_path / "a")
    assert good.exit_code == 0, good.output
    report = json.loads((tmp_path / "a" / "prune_curve.json").read_text())
    assert report["guard"]["passed"] and report["pruned_model"] == "pruned.onnx"
    assert report["guard"]["measured"]["accuracy_drop"] <= 0.04  # the threshold rule keeps it within, by construction
    bad = run("prune", backdoored["model"], "--data", backdoored["clean"], "--fraction", "0.95",
              "--max-accuracy-drop", "0.01", "--device", "cpu", "--out", tmp_path / "b")
    assert bad.exit_code == 7, bad.output
    assert len(error_lines(bad)) == 1 and "pruned.onnx rejected: clean accuracy" in error_lines(bad)[0]
    assert not (tmp_path / "b" / "pruned.onnx").exists() and (tmp_path / "b" / "pruned.onnx.rejected").is_file()


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["--clip-grad-norm", "often"], "--clip-grad-norm often"),
        (["--max-accuracy-drop", "2"], "--max-accuracy-drop 2"),
        (["--max-attack-success", "-0.1"], "--max-attack-success -0.1"),
        (["--max-recoveries", "-1"], "--max-recoveries -1"),
    ],
)
def test_bad_guard_flags_are_option_errors(backdoored, tmp_path, args, pattern):
    (tmp_path / "defended.onnx").write_bytes(b"kept: a bad flag changes nothing")
    result = run("fine-prune", backdoored["model"], "--data", backdoored["clean"], "--device", "cpu",
                 "--out", tmp_path, *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and pattern in lines[0]
    assert (tmp_path / "defended.onnx").read_bytes() == b"kept: a bad flag changes nothing"


def test_check_clean_counts_non_finite_samples_as_wrong(backdoored):
    model = with_nan_weight(load_model(backdoored["model"]).model)
    data = ArrayDataset(np.zeros((3, 1, 32, 32), np.float32), np.zeros(3, np.int64))
    check = check_clean(model, data, options=CPU)
    assert check == CleanCheck(0.0, 3, 3)


def test_the_guards_limit_resolves_flag_method_threshold_and_resolution():
    """The flag wins as given; else the method's accepted cost, never stricter than the prune threshold; else the
    threshold; else 0.04; a default is widened to 2 / validation samples where the split cannot resolve it."""
    one_point = StopRule("threshold", 0.01)
    assert max_accuracy_drop_for(0.005, one_point, 34, method_limit=0.02) == 0.005
    assert max_accuracy_drop_for(None, one_point, 1000, method_limit=0.02) == 0.02
    assert max_accuracy_drop_for(None, StopRule("threshold", 0.05), 1000, method_limit=0.02) == 0.05
    assert max_accuracy_drop_for(None, one_point, 1000) == 0.01
    assert max_accuracy_drop_for(None, StopRule("fraction", 0.5), 1000) == 0.04
    assert max_accuracy_drop_for(None, one_point, 34, method_limit=0.02) == pytest.approx(2 / 34)
