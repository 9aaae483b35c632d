"""Write a step's results as JSON (for machines) and PNG (for people)."""
from __future__ import annotations

from pathlib import Path

from fp_onnx.cost import count_flops, count_parameters
from fp_onnx.data import Dataset
from fp_onnx.evaluate import latency_ms, measure
from fp_onnx.guard import CleanCheck, GuardResult, check_clean, guard_written_model
from fp_onnx.loading import LoadedModel
from fp_onnx.outputs import write_json
from fp_onnx.plots import plot_activations, plot_prune_curve
from fp_onnx.profile import ActivationProfile
from fp_onnx.prune import PruneOutcome
from fp_onnx.runtime import RuntimeOptions
from fp_onnx.shipping import rejected_name, ship_guarded, ship_model
from fp_onnx.verdict import Verdict, VerdictLimits, defense_verdict


def model_identity(loaded: LoadedModel) -> dict:
    return {"path": str(loaded.path), "sha256": loaded.sha256, "external_data_sha256": loaded.data_sha256}


def write_profile_outputs(out_dir: Path, profile: ActivationProfile, loaded: LoadedModel) -> list[Path]:
    """profile.json and activations.png; the plot first, so the JSON never points at a missing figure."""
    point = profile.prune_point
    plot = plot_activations(
        out_dir / "activations.png",
        profile.clean.mean_activation,
        None if profile.triggered is None else profile.triggered.mean_activation,
        title=f"{loaded.path.name}: mean activation of {point.label} ({point.channels} channels)",
    )
    payload = {"model": model_identity(loaded), **profile.to_dict(), "plot": plot.name}
    return [write_json(out_dir / "profile.json", payload), plot]


def plot_outcome_curve(path: Path, outcome: PruneOutcome, title: str) -> Path:
    """The prune curve of a pruning run (paper Fig. 6), with the stop marked."""
    curve = outcome.curve
    return plot_prune_curve(path, [n / curve.channels for n in curve.channels_pruned], curve.clean_accuracy,
                            curve.attack_success, title=title, stop_fraction=outcome.channels_pruned / curve.channels)


def model_cost(model) -> dict:
    return {"parameters": count_parameters(model), "flops": count_flops(model)}


def write_prune_outputs(out_dir: Path, outcome: PruneOutcome, loaded: LoadedModel, clean: Dataset, *,
                        max_accuracy_drop: float, options: RuntimeOptions = RuntimeOptions(),
                        batch_size: int = 64) -> tuple[list[Path], GuardResult]:
    """pruned.onnx (checked on the written file: `fp_onnx.guard`), prune_curve.png and prune_curve.json (last).

    A pruned model that fails the guard is left as pruned.onnx.rejected; the JSON says so.
    """
    curve = outcome.curve
    vendor = check_clean(loaded.model, clean, options=options, batch_size=batch_size)
    model_path, guard = ship_guarded(outcome.surgery.model, out_dir, "pruned.onnx", vendor, clean, max_accuracy_drop,
                                     options=options, batch_size=batch_size)
    plot = plot_outcome_curve(out_dir / "prune_curve.png", outcome,
                              f"{loaded.path.name}: pruning {outcome.profile.prune_point.label}")
    payload = {
        "guard": guard.to_dict(),
        "model": model_identity(loaded),
        "prune_point": outcome.profile.prune_point.to_dict(),
        **outcome.to_dict(),
        **curve.to_dict(),
        "cost_before": model_cost(loaded.model),
        "cost_after": model_cost(outcome.surgery.model),
        "pruned_model": model_path.name,
        "plot": plot.name,
    }
    return [model_path, plot, write_json(out_dir / "prune_curve.json", payload)], guard


def write_defense_outputs(out_dir: Path, result, loaded: LoadedModel, settings: dict, latency_sample, *,
                          limits: VerdictLimits = VerdictLimits(), options: RuntimeOptions = RuntimeOptions(),
                          batch_size: int = 64) -> tuple[list[Path], Verdict]:
    """defended.onnx, pruned.onnx, the two plots, report.html and report.json (last: it names the rest).

    Both models are judged on the files as written (`fp_onnx.shipping`): the defended
    model by the verdict (`fp_onnx.verdict`), the pruned one by the guard alone. The
    results table's fine-pruning row is re-measured from the written defended file.
    """
    from fp_onnx.loading import sha256_of
    from fp_onnx.report import library_versions, write_html

    prune, data = result.prune, result.data
    vendor = data.vendor
    defended, (verdict, guard) = ship_model(
        result.defended, out_dir, "defended.onnx",
        lambda path: _judge_defended(path, result, vendor, limits, options, batch_size), lambda j: j[0].exit_code == 0)
    pruned, pruned_guard = ship_guarded(prune.surgery.model, out_dir, "pruned.onnx", vendor, data.val,
                                        limits.max_accuracy_drop, options=options, batch_size=batch_size)
    profile_paths = write_profile_outputs(out_dir, prune.profile, loaded)
    curve_plot = plot_outcome_curve(out_dir / "prune_curve.png", prune,
                                    f"{loaded.path.name}: pruning {prune.profile.prune_point.label}")
    report = {
        "verdict": verdict.to_dict(),
        "vendor": model_identity(loaded),
        "defended": {"path": str(defended), "sha256": sha256_of(defended), "shipped": verdict.exit_code == 0,
                     "guard": guard.to_dict()},
        "pruned": {"path": str(pruned), "sha256": sha256_of(pruned), "shipped": pruned_guard.passed,
                   "guard": pruned_guard.to_dict()},
        "prune_point": prune.profile.prune_point.to_dict(),
        "settings": settings,
        "defense": result.to_dict(),
        "profile": prune.profile.to_dict(),
        "cost": {
            "vendor": {**model_cost(loaded.model), "latency_ms": latency_ms(loaded.model, latency_sample)},
            "defended": {**model_cost(result.defended), "latency_ms": latency_ms(result.defended, latency_sample)},
        },
        "versions": library_versions(),
    }
    html_path = write_html(out_dir / "report.html", report,
                           {"activations": out_dir / "activations.png", "prune_curve": curve_plot})
    json_path = write_json(out_dir / "report.json", report)
    return [defended, pruned, *profile_paths, curve_plot, html_path, json_path], verdict


def _judge_defended(path: Path, result, vendor: CleanCheck, limits: VerdictLimits, options: RuntimeOptions,
                    batch_size: int) -> tuple[Verdict, GuardResult]:
    """Guard the written defended file, re-measure its table row from disk, and reach the verdict."""
    data = result.data
    guard, written = guard_written_model(path, vendor, data.val, limits.max_accuracy_drop, name="defended.onnx",
                                         options=options, batch_size=batch_size)
    row = measure(written, data.scored, triggered=data.triggered, attack=data.attack, options=options,
                  batch_size=batch_size)
    result.table["fine-pruning"] = row
    verdict = defense_verdict(guard, row.attack_success, limits, kept_as=rejected_name("defended.onnx"),
                              shipped_as="defended.onnx", training_note=training_note(result.finetune),
                              attack_samples=row.attack_samples)
    return verdict, guard


def training_note(tuned) -> str:
    """What fine-tuning went through, for a failure's one line ('' when nothing happened)."""
    if tuned.failure:
        after = f"after {tuned.describe_recoveries()}" if tuned.recoveries else "with recovery off"
        return f"fine-tuning failed {after}: {tuned.failure}"
    return f"fine-tuning needed {tuned.describe_recoveries()}" if tuned.recoveries else ""
