"""`fp-onnx finetune`: fine-tune a vendor ONNX model on clean data and write the weights back."""
from __future__ import annotations

from pathlib import Path

import click

from fp_onnx.cli.finetune_options import finetune_config_from, finetune_options
from fp_onnx.cli.options import (
    data_option,
    dataset_from,
    input_options,
    load_from,
    model_argument,
    out_option,
    show_progress,
)
from fp_onnx.data import split_dataset
from fp_onnx.distributed import DistributedContext
from fp_onnx.finetune import fine_tune
from fp_onnx.outputs import prepare_output_dir, save_model, write_json
from fp_onnx.reporting import model_identity
from fp_onnx.signature import signature_differences


@click.command("finetune")
@model_argument
@data_option("Clean labelled data for fine-tuning.")
@click.option("--val", "val_path", type=click.Path(path_type=Path), default=None,
              help="Clean labelled validation data for early stopping (default: hold out --val-fraction of --data).")
@click.option("--val-fraction", type=float, default=0.2, show_default=True)
@finetune_options
@out_option
@input_options
def command(**params) -> None:
    """Fine-tune the model on clean data (PyTorch), keep the vendor's ONNX graph.

    Writes finetuned.onnx (the vendor graph with new weights: same inputs, outputs
    and ops) and finetune.json. Runs under `torchrun` for DistributedDataParallel.
    """
    config = finetune_config_from(params)
    loaded = load_from(params)
    data = dataset_from(params, params["data_path"])
    if params["val_path"]:
        train, val = data, dataset_from(params, params["val_path"])
    else:
        train, val = split_dataset(data, params["val_fraction"], config.seed)
    context = DistributedContext.from_environment()
    out_dir = prepare_output_dir(params["out_dir"]) if context.is_main else None
    result = fine_tune(loaded.model, train, val, config, progress=show_progress())
    if not context.is_main:
        return
    problems = signature_differences(loaded.model, result.model)
    model_path = save_model(result.model, out_dir / "finetuned.onnx")
    report = {"model": model_identity(loaded), "world_size": context.world_size, **result.to_dict(),
              "signature_check": {"matches_vendor": not problems, "differences": problems}}
    json_path = write_json(out_dir / "finetune.json", report)
    click.echo(f"validation accuracy {result.initial_val_accuracy:.4f} -> {result.best_val_accuracy:.4f} "
               f"(best epoch {result.best_epoch}, {result.seconds:.1f} s on {result.device}, {context.world_size} process(es))")
    click.echo(f"wrote {model_path}, {json_path}")
