"""`fp-onnx demo`: the whole defense on the small backdoored model shipped in the repository."""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from fp_onnx.cli.fine_prune import RESULT_MODELS, results_table
from fp_onnx.cli.layers import format_table
from fp_onnx.cli.options import show_progress
from fp_onnx.data import open_dataset
from fp_onnx.defense import DefenseConfig, fine_prune
from fp_onnx.finetune import FineTuneConfig
from fp_onnx.loading import load_model
from fp_onnx.metrics import AttackSpec
from fp_onnx.outputs import prepare_output_dir
from fp_onnx.prune import StopRule
from fp_onnx.prune_point import find_prune_points, resolve_prune_point
from fp_onnx.reporting import write_defense_outputs
from fp_onnx.shipping import retire


@click.command("demo")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("fp-onnx-out/demo"), show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def command(out_dir: Path, device: str) -> None:
    """Fine-prune the shipped backdoored FSDD speech model (CC BY-SA 4.0 data).

    The model hides an all-to-all BadNets backdoor: a noise burst in the audio makes
    digit i come out as (i + 1) mod 10 (the paper's speech attack). The defender has
    clean validation data; the triggered test set only measures the attack.

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
    config = DefenseConfig(rule=StopRule("threshold", 0.04), finetune=FineTuneConfig(device=device), baselines=True)
    clean = open_dataset(demo["clean_val"])
    result = fine_prune(
        loaded.model, resolve_prune_point(loaded.model, None), clean,
        test=open_dataset(demo["clean_test"]), triggered=open_dataset(demo["triggered_test"]),
        attack=AttackSpec("targeted", None), config=config, progress=show_progress(),
    )
    settings = {"demo": True, "data": str(demo["clean_val"]), "test_data": str(demo["clean_test"]),
                "trigger_data": str(demo["triggered_test"]), "stop_rule": config.rule.describe(),
                "attack": "targeted (per-sample targets: (i + 1) mod 10)", "device": device}
    written, verdict = write_defense_outputs(out_dir, result, loaded, settings, clean.take(np.arange(1)).x)
    click.echo(results_table(result))
    click.echo("wrote " + ", ".join(str(path) for path in written))
    click.echo(f"verdict: {verdict.summary}")
    if verdict.exit_code:
        click.echo(f"(`fp-onnx fine-prune` would exit {verdict.exit_code} and keep the model only as "
                   f"{verdict.model}; the demo exits 0)")
