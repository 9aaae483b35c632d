"""`fp-onnx layers`: list the candidate prune points of a model."""
from __future__ import annotations

import json

import click

from fp_onnx.cli.options import load_from, model_argument
from fp_onnx.prune_point import find_prune_points


@click.command("layers")
@model_argument
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")
@click.option("--max-model-size", default="8GiB", show_default=True, help="Refuse larger model files.")
def command(model, as_json, max_model_size) -> None:
    """List conv layers that can be pruned, and which one is the default.

    Each row is a Conv node and the activation tensor after its channel-wise chain
    (BatchNormalization, activation, pooling, layout Transposes): the tensor that
    `profile` records and `prune` cuts. Pass either name to --layer.
    """
    loaded = load_from({"max_model_size": max_model_size}, model)
    points = find_prune_points(loaded.model)
    if as_json:
        click.echo(json.dumps({"model": str(model), "layers": [p.to_dict() for p in points]}, indent=2))
        return
    click.echo(format_table(points))


def format_table(points) -> str:
    header = ("", "conv node", "activation tensor", "channels", "spatial", "chain")
    rows = [header] + [
        (
            "*" if p.is_default else "",
            p.conv,
            p.tensor,
            str(p.channels),
            "x".join(str(d) for d in p.spatial) or "-",
            " > ".join(p.chain) or "-",
        )
        for p in points
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.append("* default prune point (the last conv whose output is a feature map)")
    return "\n".join(lines)
