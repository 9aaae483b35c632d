"""`fp-onnx layers`: list the candidate prune points of a model."""
from __future__ import annotations

import json

import click

from fp_onnx.cli.options import load_from, model_argument
from fp_onnx.prune_point import PrunePoint, find_prune_points


@click.command("layers")
@model_argument
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")
@click.option("--max-model-size", default="8GiB", show_default=True, help="Refuse larger model files.")
def command(model, as_json, max_model_size) -> None:
    """List the feature maps that can be pruned, and which one is the default.

    Each row is a feature tensor: the output of a block (a conv with its BN and
    activation, a residual Add, a Concat, a SiLU), the tensor that `profile`
    records and `prune` cuts, with the vendor's layer names where the exporter
    kept them. The last column says whether pruning removes its channels from the
    graph (and which nodes lose output channels) or can only force them to zero
    (and why). Pass a layer name, the tensor, or any node of its block to --layer.
    """
    loaded = load_from({"max_model_size": max_model_size}, model)
    points = find_prune_points(loaded.model)
    if as_json:
        click.echo(json.dumps({"model": str(model), "layers": [p.to_dict() for p in points]}, indent=2))
        return
    click.echo(format_table(points))


def removal_summary(point: PrunePoint) -> str:
    """`removed (...)` with the nodes that lose output channels, or `masked: <reason>`."""
    if not point.removable:
        return f"masked: {point.mask_reason}"
    parts = [f"{len(point.sources)} source(s) lose output channels"] if point.sources else []
    if point.selections:
        parts.append(f"{len(point.selections)} channel selection(s)")
    return "removed" + (f" ({', '.join(parts)})" if parts else "")


def format_table(points) -> str:
    header = ("", "layer", "feature tensor", "op", "channels", "spatial", "pruning")
    rows = [header] + [
        (
            "*" if p.is_default else "",
            p.label,
            p.tensor,
            p.op_type,
            str(p.channels),
            "x".join(str(d) for d in p.spatial) or "-",
            removal_summary(p),
        )
        for p in points
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)] + [0]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.append("* default prune point (the last feature map the classifier head reads)")
    return "\n".join(lines)
