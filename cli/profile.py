"""`fp-onnx profile`: per-channel activations at the prune point (paper Fig. 4)."""
from __future__ import annotations

import click

from fp_onnx.cli.options import (
    attack_options,
    data_option,
    input_options,
    layer_option,
    model_argument,
    open_inputs,
    out_option,
    runtime_from,
    show_progress,
    trigger_option,
)
from fp_onnx.outputs import prepare_output_dir
from fp_onnx.profile import profile_model
from fp_onnx.reporting import write_profile_outputs


@click.command("profile")
@model_argument
@data_option("Clean validation data: .npz/.npy, .h5, or a folder of class folders.")
@trigger_option
@layer_option
@attack_options
@out_option
@input_options
def command(**params) -> None:
    """Record the mean activation of every channel of a conv layer on clean data.

    Writes profile.json (per-channel mean activation, fraction of inputs on which
    the channel is active, accuracy when labels are given) and activations.png.
    """
    inputs = open_inputs(params)
    out_dir = prepare_output_dir(params["out_dir"])
    profile = profile_model(
        inputs.loaded.model, inputs.point, inputs.clean, triggered=inputs.triggered, attack=inputs.attack,
        options=runtime_from(params), batch_size=params["batch_size"], progress=show_progress(),
    )
    for note in profile.notes:
        click.echo(f"note: {note}", err=True)
    written = write_profile_outputs(out_dir, profile, inputs.loaded)
    click.echo(profile_summary(profile))
    click.echo("wrote " + ", ".join(str(path) for path in written))


def profile_summary(profile) -> str:
    point, clean = profile.prune_point, profile.clean
    dormant = int((clean.active_fraction == 0).sum())
    lines = [
        f"prune point: {point.label} -> {point.tensor} ({point.channels} channels), device {profile.device}",
        f"clean: {clean.samples} samples, {dormant} channels never active"
        + (f", accuracy {clean.accuracy:.4f}" if clean.accuracy is not None else ""),
    ]
    if profile.triggered is not None:
        line = f"triggered: {profile.triggered.samples} samples"
        if profile.attack_success is not None:
            line += f", attack success rate {profile.attack_success:.4f} ({profile.attack.describe()})"
        lines.append(line)
    return "\n".join(lines)
