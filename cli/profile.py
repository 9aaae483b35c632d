"""`fp-onnx profile`: per-channel activations at the prune point (paper Fig. 4)."""
from __future__ import annotations

from pathlib import Path

import click

from fp_onnx.cli.options import (
    show_progress,
    attack_from,
    attack_options,
    dataset_from,
    input_options,
    layer_option,
    load_from,
    model_argument,
    runtime_from,
)
from fp_onnx.outputs import prepare_output_dir
from fp_onnx.profile import profile_model
from fp_onnx.prune_point import resolve_prune_point
from fp_onnx.reporting import write_profile_outputs


@click.command("profile")
@model_argument
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help="Clean validation data: .npz/.npy, .h5, or a folder of class folders.")
@click.option("--trigger-data", "trigger_path", type=click.Path(path_type=Path), default=None,
              help="Triggered inputs, to compare activations (paper Fig. 4b).")
@layer_option
@attack_options
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("fp-onnx-out"), show_default=True)
@input_options
def command(**params) -> None:
    """Record the mean activation of every channel of a conv layer on clean data.

    Writes profile.json (per-channel mean activation, fraction of inputs on which
    the channel is active, accuracy when labels are given) and activations.png.
    """
    loaded = load_from(params)
    attack = attack_from(params, params["trigger_path"] is not None)
    point = resolve_prune_point(loaded.model, params["layer"])
    clean = dataset_from(params, params["data_path"])
    triggered = dataset_from(params, params["trigger_path"]) if params["trigger_path"] else None
    out_dir = prepare_output_dir(params["out_dir"])
    profile = profile_model(
        loaded.model, point, clean, triggered=triggered, attack=attack,
        options=runtime_from(params), batch_size=params["batch_size"], progress=show_progress(),
    )
    for note in profile.notes:
        click.echo(f"note: {note}", err=True)
    written = write_profile_outputs(out_dir, profile, loaded)
    click.echo(profile_summary(profile))
    click.echo("wrote " + ", ".join(str(path) for path in written))


def profile_summary(profile) -> str:
    point, clean = profile.prune_point, profile.clean
    dormant = int((clean.active_fraction == 0).sum())
    lines = [
        f"prune point: {point.conv} -> {point.tensor} ({point.channels} channels), device {profile.device}",
        f"clean: {clean.samples} samples, {dormant} channels never active"
        + (f", accuracy {clean.accuracy:.4f}" if clean.accuracy is not None else ""),
    ]
    if profile.triggered is not None:
        line = f"triggered: {profile.triggered.samples} samples"
        if profile.attack_success is not None:
            line += f", attack success rate {profile.attack_success:.4f} ({profile.attack.describe()})"
        lines.append(line)
    return "\n".join(lines)
