"""`fp-onnx demo`: the whole defense on the small backdoored model shipped in the repository."""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from fp_onnx.cli.fine_prune import RESULT_MODELS
from fp_onnx.cli.layers import format_table
from fp_onnx.cli.options import show_progress
from fp_onnx.data import open_dataset
from fp_onnx.defense import fine_prune
from fp_onnx.finetune import FineTuneConfig
from fp_onnx.methods import DEFAULT_METHOD, METHODS, defense_config
from fp_onnx.loading import load_model
from fp_onnx.metrics import AttackSpec
from fp_onnx.outputs import prepare_output_dir
from fp_onnx.report import TABLE_NAMES
from fp_onnx.prune_point import find_prune_points, resolve_prune_point
from fp_onnx.reporting import write_defense_outputs
from fp_onnx.shipping import retire
from fp_onnx.verdict import VerdictLimits
from fp_onnx.warp_check import describe_warp_check


@click.command("demo")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("fp-onnx-out/demo"), show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def command(out_dir: Path, device: str) -> None:
    """Defend the shipped backdoored FSDD speech model (CC BY-SA 4.0 data), two ways.

    The paper's fine-pruning (with its pruning-only and fine-tuning-only baselines) and
    fp-onnx's default method run on the same clean data; the default's model is written
    and judged as `fine-prune` would. The triggered test set only measures the attack.

    Prints the verdict as `fine-prune` reaches it, but exits 0 whenever the demo ran: it
    demonstrates the tool, and a backdoor that survives is one of the outcomes it shows.
    """
    from fp_onnx.models import shipped_demo

    demo = shipped_demo()
    card = json.loads(demo["model_card"].read_text())
    loaded = load_model(demo["model"])
    out_dir = prepare_output_dir(out_dir)
    retire(out_dir, RESULT_MODELS)
    click.echo(f"vendor model: {demo['model']}")
    metrics = card.get("metrics", {})
    click.echo(f"model card: clean accuracy {metrics.get('clean_accuracy', float('nan')):.4f}, "
               f"attack success {metrics.get('attack_success', float('nan')):.4f} ({card.get('warning', '')})\n")
    click.echo(format_table(find_prune_points(loaded.model)) + "\n")
    clean, point, attack = open_dataset(demo["clean_val"]), resolve_prune_point(loaded.model, None), attack_of(card)
    data = dict(test=open_dataset(demo["clean_test"]), triggered=open_dataset(demo["triggered_test"]), attack=attack)
    finetune = FineTuneConfig(device=device)
    runs = {}
    for name in ("paper", DEFAULT_METHOD):
        click.echo(f"defending with method '{name}': {METHODS[name].summary}", err=True)
        config = defense_config(METHODS[name], finetune, baselines=name == "paper")
        runs[name] = fine_prune(loaded.model, point, clean, config=config, progress=show_progress(), **data)
    result = runs[DEFAULT_METHOD]
    settings = {"demo": True, "data": str(demo["clean_val"]), "test_data": str(demo["clean_test"]),
                "trigger_data": str(demo["triggered_test"]), "method": DEFAULT_METHOD,
                "stop_rule": result.prune.rule.describe(), "attack": attack.describe(), "device": device}
    limits = VerdictLimits(max_accuracy_drop=result.max_accuracy_drop)
    written, verdict = write_defense_outputs(out_dir, result, loaded, settings, clean.take(np.arange(1)).x,
                                             limits=limits)
    click.echo(comparison_table(runs["paper"], result))
    click.echo("wrote " + ", ".join(str(path) for path in written))
    click.echo(f"verdict ({DEFAULT_METHOD}): {verdict.summary}")
    if verdict.exit_code:
        click.echo(f"(`fp-onnx fine-prune` would exit {verdict.exit_code} and keep the model only as "
                   f"{verdict.model}; the demo exits 0)")


def attack_of(card: dict) -> AttackSpec:
    """The attack the model card describes (all-to-all attacks carry per-sample targets in the data)."""
    attack = card.get("attack", {})
    if attack.get("kind") == "untargeted":
        return AttackSpec("untargeted")
    return AttackSpec("targeted", attack.get("target") if attack.get("kind") == "all_to_one" else None)


def comparison_table(paper, default) -> str:
    """The paper's Table 1 row and the default method's result, clean accuracy / attack success on test data."""
    rows = [(TABLE_NAMES[name], row) for name, row in paper.table.items()]
    rows.append((f"fp-onnx default ({DEFAULT_METHOD})", default.table["fine-pruning"]))
    lines = [f"{'defender strategy':<34}{'clean accuracy':>16}{'attack success':>16}"]
    lines += [f"{name:<34}{row.clean_accuracy:>16.4f}{row.attack_success:>16.4f}" for name, row in rows]
    shipped = default.method.get("recover")
    lines.append(f"(test data; the default pruned {default.prune.channels_pruned} of {default.prune.curve.channels} "
                 f"channels, then recovered with '{shipped}'; the paper's method pruned "
                 f"{paper.prune.channels_pruned})")
    warp = describe_warp_check(default.method.get("warp_check"))
    return "\n".join(lines + ([f"({warp})"] if warp else []))
