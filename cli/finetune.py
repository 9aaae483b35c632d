"""`fp-onnx finetune`: fine-tune a vendor ONNX model on clean data and write the weights back."""
from __future__ import annotations

from pathlib import Path

import click

from fp_onnx.cli.finetune_options import finetune_config_from, finetune_options, recover_option
from fp_onnx.cli.options import (
    data_option,
    dataset_from,
    input_options,
    load_from,
    model_argument,
    out_option,
    runtime_from,
    show_progress,
)
from fp_onnx.cli.verdict_options import max_accuracy_drop_from, max_accuracy_drop_option
from fp_onnx.guard import max_accuracy_drop_for
from fp_onnx.data import split_dataset
from fp_onnx.distributed import DistributedContext
from fp_onnx.finetune import fine_tune
from fp_onnx.guard import check_clean
from fp_onnx.outputs import prepare_output_dir, write_json
from fp_onnx.reporting import model_identity, training_note
from fp_onnx.shipping import rejected_name, retire, ship_guarded
from fp_onnx.signature import signature_differences

MODEL_NAME = "finetuned.onnx"


@click.command("finetune")
@model_argument
@data_option("Clean labelled data for fine-tuning.")
@click.option("--val", "val_path", type=click.Path(path_type=Path), default=None,
              help="Clean labelled validation data for early stopping (default: hold out --val-fraction of --data).")
@click.option("--val-fraction", type=float, default=0.2, show_default=True)
@recover_option
@finetune_options
@max_accuracy_drop_option
@out_option
@input_options
def command(**params) -> None:
    """Fine-tune the model on clean data (PyTorch), keep the vendor's ONNX graph.

    Writes finetuned.onnx (the vendor graph with new weights: same inputs, outputs
    and ops) and finetune.json. Runs under `torchrun` for DistributedDataParallel.
    finetuned.onnx is loaded back and measured on the validation data before it gets
    its name; one with non-finite outputs or clean accuracy more than
    --max-accuracy-drop below the vendor's is kept as finetuned.onnx.rejected (exit 7).
    """
    config = finetune_config_from(params, params["recover"] or "paper")
    max_accuracy_drop_from(params)  # a bad --max-accuracy-drop fails before any work
    loaded = load_from(params)
    data = dataset_from(params, params["data_path"])
    if params["val_path"]:
        train, val = data, dataset_from(params, params["val_path"])
    else:
        train, val = split_dataset(data, params["val_fraction"], config.seed)
    max_drop = max_accuracy_drop_for(params.get("max_accuracy_drop"), None, len(val))
    context = DistributedContext.from_environment()
    out_dir = prepare_output_dir(params["out_dir"]) if context.is_main else None
    if context.is_main:
        retire(out_dir, [MODEL_NAME])
    options = runtime_from(params)
    vendor = check_clean(loaded.model, val, options=options, batch_size=params["batch_size"])
    result = fine_tune(loaded.model, train, val, config, accuracy_floor=vendor.accuracy - max_drop,
                       progress=show_progress())
    if not context.is_main:
        return
    model_path, guard = ship_guarded(result.model, out_dir, MODEL_NAME, vendor, val, max_drop, options=options,
                                     batch_size=params["batch_size"])
    problems = signature_differences(loaded.model, result.model)
    report = {"guard": guard.to_dict(), "model": model_identity(loaded), "finetuned_model": model_path.name,
              "world_size": context.world_size, **result.to_dict(),
              "signature_check": {"matches_vendor": not problems, "differences": problems}}
    json_path = write_json(out_dir / "finetune.json", report)
    recoveries = f", {result.describe_recoveries()}" if result.recoveries else ""
    click.echo(f"validation accuracy {result.initial_val_accuracy:.4f} -> {result.best_val_accuracy:.4f} "
               f"({result.describe_kept()}{recoveries}, {result.seconds:.1f} s on {result.device}, "
               f"{context.world_size} process(es))")
    click.echo(f"wrote {model_path}, {json_path}")
    if not guard.passed:
        raise guard.error(rejected_name(MODEL_NAME), training_note(result))
    unbounded = guard.unbounded_cost()
    if unbounded:
        click.echo(f"note: {unbounded}", err=True)
