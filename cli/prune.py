"""`fp-onnx prune`: the pruning defense (paper §3.1) as graph surgery on the vendor's ONNX file."""
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
from fp_onnx.errors import BadOptionError
from fp_onnx.outputs import prepare_output_dir
from fp_onnx.prune import StopRule, prune_defense
from fp_onnx.prune_point import resolve_prune_point
from fp_onnx.reporting import write_profile_outputs, write_prune_outputs


@click.command("prune")
@model_argument
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help="The defender's clean VALIDATION data (with labels); ranking and stopping use only this.")
@click.option("--threshold", type=float, default=None,
              help="Stop before clean accuracy drops by more than this ABSOLUTE amount (0.04 = 4 points, "
                   "the paper's choice). Default when no other rule is given: 0.04.")
@click.option("--fraction", type=float, default=None, help="Instead: prune this fraction of the channels.")
@click.option("--channels", type=int, default=None, help="Instead: prune this many channels.")
@click.option("--trigger-data", "trigger_path", type=click.Path(path_type=Path), default=None,
              help="Triggered inputs: attack success is measured at every step (never used to decide).")
@layer_option
@attack_options
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("fp-onnx-out"), show_default=True)
@input_options
def command(**params) -> None:
    """Prune the most dormant channels of a conv layer out of the ONNX graph.

    Channels go in increasing order of mean activation on --data until clean accuracy
    has dropped by more than --threshold; the last model within the threshold is kept.
    Writes pruned.onnx (smaller, same inputs/outputs), prune_curve.json,
    prune_curve.png, profile.json and activations.png.
    """
    rule = stop_rule_from(params)
    loaded = load_from(params)
    attack = attack_from(params, params["trigger_path"] is not None)
    point = resolve_prune_point(loaded.model, params["layer"])
    clean = dataset_from(params, params["data_path"])
    triggered = dataset_from(params, params["trigger_path"]) if params["trigger_path"] else None
    out_dir = prepare_output_dir(params["out_dir"])
    outcome = prune_defense(loaded.model, point, clean, rule, triggered=triggered, attack=attack,
                            options=runtime_from(params), batch_size=params["batch_size"], progress=show_progress())
    for note in outcome.profile.notes:
        click.echo(f"note: {note}", err=True)
    written = write_profile_outputs(out_dir, outcome.profile, loaded)
    written += write_prune_outputs(out_dir, outcome, loaded)
    click.echo(prune_summary(outcome))
    click.echo("wrote " + ", ".join(str(path) for path in written))


def stop_rule_from(params: dict) -> StopRule:
    given = {kind: params[kind] for kind in ("threshold", "fraction", "channels") if params.get(kind) is not None}
    if len(given) > 1:
        raise BadOptionError(f"choose one stop rule, not {' and '.join('--' + k for k in given)}")
    kind, value = next(iter(given.items()), ("threshold", 0.04))
    return StopRule(kind, float(value))


def prune_summary(outcome) -> str:
    curve, step = outcome.curve, outcome.step
    line = (f"pruned {outcome.channels_pruned} of {curve.channels} channels ({outcome.rule.describe()}); "
            f"clean accuracy {curve.clean_accuracy[0]:.4f} -> {curve.clean_accuracy[step]:.4f}")
    if curve.attack_success is not None:
        line += f"; attack success {curve.attack_success[0]:.4f} -> {curve.attack_success[step]:.4f}"
    removed = "physically removed" if outcome.surgery.physically_removed else "forced to zero (graph needs them)"
    return line + f"\nchannels {removed}; sweep: {curve.sweep_method}"
