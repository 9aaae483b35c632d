"""Write a step's results as JSON (for machines) and PNG (for people)."""
from __future__ import annotations

from pathlib import Path

from fp_onnx.loading import LoadedModel
from fp_onnx.cost import count_flops, count_parameters
from fp_onnx.outputs import save_model, write_json
from fp_onnx.plots import plot_activations, plot_prune_curve
from fp_onnx.profile import ActivationProfile
from fp_onnx.prune import PruneOutcome


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


def write_prune_outputs(out_dir: Path, outcome: PruneOutcome, loaded: LoadedModel) -> list[Path]:
    """pruned.onnx, prune_curve.png and prune_curve.json (written last: it names the other two)."""
    curve = outcome.curve
    model_path = save_model(outcome.surgery.model, out_dir / "pruned.onnx")
    plot = plot_outcome_curve(out_dir / "prune_curve.png", outcome,
                              f"{loaded.path.name}: pruning {outcome.profile.prune_point.label}")
    payload = {
        "model": model_identity(loaded),
        "prune_point": outcome.profile.prune_point.to_dict(),
        **outcome.to_dict(),
        **curve.to_dict(),
        "cost_before": model_cost(loaded.model),
        "cost_after": model_cost(outcome.surgery.model),
        "pruned_model": model_path.name,
        "plot": plot.name,
    }
    return [model_path, plot, write_json(out_dir / "prune_curve.json", payload)]


def write_defense_outputs(out_dir: Path, result, loaded: LoadedModel, settings: dict, latency_sample) -> list[Path]:
    """defended.onnx, pruned.onnx, the two plots, report.html and report.json (last: it names the rest)."""
    from fp_onnx.evaluate import latency_ms
    from fp_onnx.loading import sha256_of
    from fp_onnx.report import library_versions, write_html

    prune = result.prune
    defended = save_model(result.defended, out_dir / "defended.onnx")
    pruned = save_model(prune.surgery.model, out_dir / "pruned.onnx")
    profile_paths = write_profile_outputs(out_dir, prune.profile, loaded)
    curve_plot = plot_outcome_curve(out_dir / "prune_curve.png", prune,
                                    f"{loaded.path.name}: pruning {prune.profile.prune_point.label}")
    report = {
        "vendor": model_identity(loaded),
        "defended": {"path": str(defended), "sha256": sha256_of(defended)},
        "pruned": {"path": str(pruned), "sha256": sha256_of(pruned)},
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
    return [defended, pruned, *profile_paths, curve_plot, html_path, json_path]
