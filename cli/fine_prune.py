"""`fp-onnx fine-prune`: the whole defense in one command (paper §3.3)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click
import numpy as np

from fp_onnx.cli.finetune_options import finetune_config_from, finetune_options, recover_option
from fp_onnx.cli.options import (
    attack_options,
    data_option,
    dataset_from,
    input_options,
    layer_option,
    model_argument,
    open_inputs,
    out_option,
    runtime_from,
    show_progress,
    trigger_option,
)
from fp_onnx.cli.prune import stop_rule_from, with_stop_rule
from fp_onnx.cli.verdict_options import limits_from, max_accuracy_drop_option, max_attack_success_option
from fp_onnx.defense import fine_prune
from fp_onnx.methods import DEFAULT_METHOD, METHODS, defense_config, resolve_method
from fp_onnx.ranking import CRITERIA
from fp_onnx.outputs import prepare_output_dir
from fp_onnx.report import TABLE_NAMES
from fp_onnx.reporting import write_defense_outputs
from fp_onnx.shipping import retire
from fp_onnx.warp_check import describe_warp_check

RESULT_MODELS = ["defended.onnx", "pruned.onnx"]


@click.command("fine-prune")
@model_argument
@data_option("The defender's clean labelled data; split into fine-tuning and validation parts.")
@click.option("--val", "val_path", type=click.Path(path_type=Path), default=None,
              help="Separate clean validation data (then all of --data is used for fine-tuning).")
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="Share of --data held out for validation when --val is not given.")
@click.option("--test-data", "test_path", type=click.Path(path_type=Path), default=None,
              help="Clean labelled test data for the results table (never used to decide anything).")
@with_stop_rule
@trigger_option
@attack_options
@layer_option
@click.option("--method", type=click.Choice(list(METHODS)), default=DEFAULT_METHOD, show_default=True,
              help="; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()) + ".")
@click.option("--rank", type=click.Choice(sorted(CRITERIA)), default=None,
              help="Ranking criterion, overriding the method's: activation (the paper's, one layer), rnp "
                   "(unlearn, then recover channel masks), anp (adversarial channel perturbation).")
@recover_option
@finetune_options
@max_accuracy_drop_option
@max_attack_success_option
@click.option("--baselines", is_flag=True, help="Also run pruning-only and fine-tuning-only (paper Table 1).")
@out_option
@input_options
def command(**params) -> None:
    """Profile, prune, fine-tune and evaluate: ship defended.onnx.

    Writes defended.onnx (same inputs and outputs as the vendor's model), pruned.onnx,
    report.json, report.html (self-contained), activations.png and prune_curve.png.
    The written defended.onnx is loaded back and judged before it gets its name: if its
    outputs are not finite or its clean accuracy is more than --max-accuracy-drop below
    the vendor's, it is kept as defended.onnx.rejected and the exit code is 7; if, with
    --trigger-data, attack success stays above --max-attack-success, the same with exit 8.
    """
    method = resolve_method(params["method"], params["rank"], params["recover"])
    rule = stop_rule_from(params, method.threshold)
    limits = limits_from(params, rule)
    config = defense_config(method, finetune_config_from(params), rule=rule, val_fraction=params["val_fraction"],
                            seed=params["seed"], baselines=params["baselines"], batch_size=params["batch_size"],
                            max_accuracy_drop=params["max_accuracy_drop"])
    inputs = open_inputs(params)
    val = dataset_from(params, params["val_path"]) if params["val_path"] else None
    test = dataset_from(params, params["test_path"]) if params["test_path"] else None
    out_dir = prepare_output_dir(params["out_dir"])
    retire(out_dir, RESULT_MODELS)
    options = runtime_from(params)
    result = fine_prune(inputs.loaded.model, inputs.point, inputs.clean, val=val, test=test,
                        triggered=inputs.triggered, attack=inputs.attack, config=config,
                        options=options, progress=show_progress())
    settings = settings_of(params, rule, inputs.attack)
    limits = replace(limits, max_accuracy_drop=result.max_accuracy_drop)  # resolution-aware, as training used
    written, verdict = write_defense_outputs(out_dir, result, inputs.loaded, settings,
                                             inputs.clean.take(np.arange(1)).x, limits=limits, options=options,
                                             batch_size=params["batch_size"])
    click.echo(results_table(result))
    click.echo("wrote " + ", ".join(str(path) for path in written))
    if verdict.error() is not None:
        raise verdict.error()
    click.echo(f"verdict: {verdict.summary}")


def settings_of(params: dict, rule, attack) -> dict:
    settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in sorted(params.items())}
    settings["stop_rule"] = rule.describe()
    settings["attack"] = None if attack is None else attack.describe()
    return settings


def results_table(result) -> str:
    lines = [f"{'defender strategy':<26}{'clean accuracy':>16}{'attack success':>16}"]
    for name, row in result.table.items():
        success = "-" if row.attack_success is None else f"{row.attack_success:.4f}"
        lines.append(f"{TABLE_NAMES[name]:<26}{row.clean_accuracy:>16.4f}{success:>16}")
    prune, tuned = result.prune, result.finetune
    recoveries = f", {tuned.describe_recoveries()}" if tuned.recoveries else ""
    refused = [a["recipe"] for a in result.method.get("recover_attempts", [])[:-1]]
    fallback = f" after {', '.join(refused)} ended below the accuracy floor" if refused else ""
    lines.append(f"(method {result.method.get('name')}: rank {result.method.get('rank')}, recover "
                 f"{result.method.get('recover')}{fallback}; clean accuracy on {result.evaluated_on} data; "
                 f"pruned {prune.channels_pruned} of "
                 f"{prune.curve.channels} channels; fine-tuned, kept the {tuned.describe_kept()}{recoveries}; "
                 f"signature {'matches the vendor' if not result.signature_problems else 'DIFFERS'})")
    warp = describe_warp_check(result.method.get("warp_check"))
    return "\n".join(lines + ([f"({warp})"] if warp else []))
