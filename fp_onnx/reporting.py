"""Write a step's results as JSON (for machines) and PNG (for people)."""
from __future__ import annotations

from pathlib import Path

from fp_onnx.loading import LoadedModel
from fp_onnx.outputs import write_json
from fp_onnx.plots import plot_activations
from fp_onnx.profile import ActivationProfile


def model_identity(loaded: LoadedModel) -> dict:
    return {"path": str(loaded.path), "sha256": loaded.sha256, "external_data_sha256": loaded.data_sha256}


def write_profile_outputs(out_dir: Path, profile: ActivationProfile, loaded: LoadedModel) -> list[Path]:
    """profile.json and activations.png; the plot first, so the JSON never points at a missing figure."""
    point = profile.prune_point
    plot = plot_activations(
        out_dir / "activations.png",
        profile.clean.mean_activation,
        None if profile.triggered is None else profile.triggered.mean_activation,
        title=f"{loaded.path.name}: mean activation of {point.conv} ({point.channels} channels)",
    )
    payload = {"model": model_identity(loaded), **profile.to_dict(), "plot": plot.name}
    return [write_json(out_dir / "profile.json", payload), plot]
