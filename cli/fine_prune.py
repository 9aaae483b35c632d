"""`fp-onnx fine-prune`: the whole defense in one command (paper §3.3)."""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from fp_onnx.cli.finetune_options import finetune_config_from, finetune_options
from fp_onnx.cli.options import (
    attack_from,
    attack_options,
    dataset_from,
    input_options,
    layer_option,
    load_from,
    model_argument,
    runtime_from,
    show_progress,
)
from fp_onnx.cli.prune import stop_rule_from
from fp_onnx.defense import DefenseConfig, fine_prune
from fp_onnx.outputs import prepare_output_dir
from fp_onnx.prune_point import resolve_prune_point
from fp_onnx.report import TABLE_NAMES
from fp_onnx.reporting import write_defense_outputs


@click.command("fine-prune")
@model_argument
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help="The defender's clean labelled data; split into fine-tuning and validation parts.")
@click.option("--val", "val_path", type=click.Path(path_type=Path), default=None,
              help="Separate clean validation data (then all of --data is used for fine-tuning).")
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="Share of --data held out for validation when --val is not given.")
@click.option("--test-data", "test_path", type=click.Path(path_type=Path), default=None,
              help="Clean labelled test data for the results table (never used to decide anything).")
@click.option("--threshold", type=float, default=None,
              help="Prune until clean validation accuracy drops by more than this ABSOLUTE amount (default 0.04).")
@click.option("--fraction", type=float, default=None, help="Instead: prune this fraction of the channels.")
@click.option("--channels", type=int, default=None, help="Instead: prune this many channels.")
@click.option("--trigger-data", "trigger_path", type=click.Path(path_type=Path), default=None,
              help="Triggered test inputs: attack success is measured before and after each step.")
@attack_options
@layer_option
@finetune_options
@click.option("--baselines", is_flag=True, help="Also run pruning-only and fine-tuning-only (paper Table 1).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("fp-onnx-out"), show_default=True)
@input_options
def command(**params) -> None:
    """Profile, prune, fine-tune and evaluate: ship defended.onnx.

    Writes defended.onnx (same inputs and outputs as the vendor's model), pruned.onnx,
    report.json, report.html (self-contained), activations.png and prune_curve.png.
    """
    rule = stop_rule_from(params)
    finetune = finetune_config_from(params)
    loaded = load_from(params)
    attack = attack_from(params, params["trigger_path"] is not None)
    point = resolve_prune_point(loaded.model, params["layer"])
    clean = dataset_from(params, params["data_path"])
    open_optional = lambda key: dataset_from(params, params[key]) if params[key] else None  # noqa: E731
    val, test, triggered = open_optional("val_path"), open_optional("test_path"), open_optional("trigger_path")
    out_dir = prepare_output_dir(params["out_dir"])
    config = DefenseConfig(rule=rule, finetune=finetune, val_fraction=params["val_fraction"], seed=params["seed"],
                           baselines=params["baselines"], batch_size=params["batch_size"])
    result = fine_prune(loaded.model, point, clean, val=val, test=test, triggered=triggered, attack=attack,
                        config=config, options=runtime_from(params), progress=show_progress())
    settings = settings_of(params, rule, attack)
    written = write_defense_outputs(out_dir, result, loaded, settings, clean.take(np.arange(1)).x)
    click.echo(results_table(result))
    click.echo("wrote " + ", ".join(str(path) for path in written))


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
    prune = result.prune
    lines.append(f"(clean accuracy on {result.evaluated_on} data; pruned {prune.channels_pruned} of "
                 f"{prune.curve.channels} channels; fine-tuned {result.finetune.best_epoch} epoch(s); "
                 f"signature {'matches the vendor' if not result.signature_problems else 'DIFFERS'})")
    return "\n".join(lines)
