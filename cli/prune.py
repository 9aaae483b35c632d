"""`fp-onnx prune`: the pruning defense (paper §3.1) as graph surgery on the vendor's ONNX file."""
from __future__ import annotations

import click

from fp_onnx.cli.options import (
    FINITE_FLOAT,
    attack_options,
    compose,
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
from fp_onnx.cli.verdict_options import max_accuracy_drop_from, max_accuracy_drop_option
from fp_onnx.guard import max_accuracy_drop_for
from fp_onnx.errors import BadOptionError
from fp_onnx.outputs import prepare_output_dir
from fp_onnx.prune import StopRule, prune_defense
from fp_onnx.reporting import write_profile_outputs, write_prune_outputs
from fp_onnx.shipping import rejected_name, retire

with_stop_rule = compose(
    click.option("--threshold", type=FINITE_FLOAT, default=None,
                 help="Stop before clean validation accuracy drops by more than this ABSOLUTE amount "
                      "(0.04 = 4 points, the paper's choice). Default when no other rule is given: 0.04."),
    click.option("--fraction", type=FINITE_FLOAT, default=None, help="Instead: prune this fraction of the channels."),
    click.option("--channels", type=int, default=None, help="Instead: prune this many channels."),
)
"""The stop rule of the pruning defense: one of --threshold, --fraction, --channels."""


@click.command("prune")
@model_argument
@data_option("The defender's clean VALIDATION data (with labels); ranking and stopping use only this.")
@with_stop_rule
@trigger_option
@layer_option
@attack_options
@max_accuracy_drop_option
@out_option
@input_options
def command(**params) -> None:
    """Prune the most dormant channels of a conv layer out of the ONNX graph.

    Channels go in increasing order of mean activation on --data until clean accuracy
    has dropped by more than --threshold; the last model within the threshold is kept.
    Writes pruned.onnx (smaller, same inputs/outputs), prune_curve.json,
    prune_curve.png, profile.json and activations.png. pruned.onnx is loaded back and
    measured before it gets its name; one that fails --max-accuracy-drop (or has
    non-finite outputs) is kept as pruned.onnx.rejected and the exit code is 7.
    """
    rule = stop_rule_from(params)
    max_accuracy_drop_from(params, rule)  # a bad --max-accuracy-drop fails before any work
    inputs = open_inputs(params)
    max_drop = max_accuracy_drop_for(params.get("max_accuracy_drop"), rule, len(inputs.clean))
    out_dir = prepare_output_dir(params["out_dir"])
    retire(out_dir, ["pruned.onnx"])
    options = runtime_from(params)
    outcome = prune_defense(inputs.loaded.model, inputs.point, inputs.clean, rule, triggered=inputs.triggered,
                            attack=inputs.attack, options=options, batch_size=params["batch_size"],
                            progress=show_progress())
    for note in outcome.profile.notes:
        click.echo(f"note: {note}", err=True)
    written = write_profile_outputs(out_dir, outcome.profile, inputs.loaded)
    model_outputs, guard = write_prune_outputs(out_dir, outcome, inputs.loaded, inputs.clean, max_accuracy_drop=max_drop,
                                               options=options, batch_size=params["batch_size"])
    click.echo(prune_summary(outcome))
    click.echo("wrote " + ", ".join(str(path) for path in written + model_outputs))
    if not guard.passed:
        raise guard.error(rejected_name("pruned.onnx"))
    unbounded = guard.unbounded_cost("more clean data (--data) would bound it", data="clean")
    if unbounded:
        click.echo(f"note: {unbounded}", err=True)


def stop_rule_from(params: dict, default_threshold: float = 0.04) -> StopRule:
    given = {kind: params[kind] for kind in ("threshold", "fraction", "channels") if params.get(kind) is not None}
    if len(given) > 1:
        raise BadOptionError(f"choose one stop rule, not {' and '.join('--' + k for k in given)}")
    kind, value = next(iter(given.items()), ("threshold", default_threshold))
    return StopRule(kind, float(value))


def prune_summary(outcome) -> str:
    curve, step = outcome.curve, outcome.step
    line = (f"pruned {outcome.channels_pruned} of {curve.channels} channels ({outcome.rule.describe()}); "
            f"clean accuracy {curve.clean_accuracy[0]:.4f} -> {curve.clean_accuracy[step]:.4f}")
    if curve.attack_success is not None:
        line += f"; attack success {curve.attack_success[0]:.4f} -> {curve.attack_success[step]:.4f}"
    surgery = outcome.surgery
    removed = "physically removed" if surgery.physically_removed else f"forced to zero ({surgery.mask_reason})"
    return line + f"\nchannels {removed}; sweep: {curve.sweep_method}"
