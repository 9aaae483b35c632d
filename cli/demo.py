"""`fp-onnx demo`: the main job on the small backdoored model shipped in the repository."""
from __future__ import annotations

from pathlib import Path

import click

from fp_onnx.cli.layers import format_table
from fp_onnx.cli.options import show_progress
from fp_onnx.cli.profile import profile_summary
from fp_onnx.data import open_dataset
from fp_onnx.loading import load_model
from fp_onnx.metrics import AttackSpec
from fp_onnx.outputs import prepare_output_dir
from fp_onnx.profile import profile_model
from fp_onnx.prune_point import find_prune_points, resolve_prune_point
from fp_onnx.reporting import write_profile_outputs


@click.command("demo")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("fp-onnx-out/demo"), show_default=True)
def command(out_dir: Path) -> None:
    """Run fp-onnx on the shipped backdoored FSDD speech model (CC BY-SA 4.0 data)."""
    from fp_onnx.models import shipped_demo

    demo = shipped_demo()
    loaded = load_model(demo.model)
    out_dir = prepare_output_dir(out_dir)
    click.echo(f"model: {demo.model} (backdoored, {demo.card.get('attack', {}).get('name', 'BadNets')})\n")
    click.echo(format_table(find_prune_points(loaded.model)) + "\n")
    profile = profile_model(
        loaded.model,
        resolve_prune_point(loaded.model, None),
        open_dataset(demo.clean_val),
        triggered=open_dataset(demo.triggered_test),
        attack=AttackSpec("targeted", None),
        progress=show_progress(),
    )
    written = write_profile_outputs(out_dir, profile, loaded)
    click.echo(profile_summary(profile))
    click.echo("wrote " + ", ".join(str(path) for path in written))
