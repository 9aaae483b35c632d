"""Flags shared by `finetune` and `fine-prune`: the fine-tuning recipe (paper §3.3)."""
from __future__ import annotations

import click

from fp_onnx.cli.options import FINITE_FLOAT, compose
from fp_onnx.errors import BadOptionError
from fp_onnx.finetune import OPTIMIZERS, FineTuneConfig
from fp_onnx.recipes import KEEP_POLICIES, RECIPES

recover_option = click.option(
    "--recover", type=click.Choice(sorted(RECIPES)), default=None,
    help="Recovery recipe (how the model is trained on clean data): " + "; ".join(
        f"{name}: {recipe.summary}" for name, recipe in sorted(RECIPES.items())) + ".")

finetune_options = compose(
    click.option("--epochs", type=click.IntRange(min=1), default=None,
                 help="Epoch budget (default: the recipe's; the paper's stops early, the others run it all)."),
    click.option("--lr", type=FINITE_FLOAT, default=None,
                 help="Learning rate (default: the recipe's, e.g. 0.001 for the paper's). Tensors whose steps would "
                      "be out of proportion with the rest (inputs on a 0-255 scale) get a lower one automatically."),
    click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="sgd", show_default=True),
    click.option("--patience", type=click.IntRange(min=1), default=None,
                 help="Stop after this many epochs without validation improvement (default: the recipe's)."),
    click.option("--keep", type=click.Choice(KEEP_POLICIES), default=None,
                 help="Return the best epoch on validation, the last one, or the average of the good epochs in the "
                      "second half of the budget (default: the recipe's)."),
    click.option("--weight-decay", type=click.FloatRange(min=0), default=None,
                 help="L2 weight decay (default: the recipe's)."),
    click.option("--label-smoothing", type=FINITE_FLOAT, default=0.0, show_default=True,
                 help="Label smoothing of the fine-tuning loss (0: plain cross-entropy)."),
    click.option("--noise", type=FINITE_FLOAT, default=0.0, show_default=True,
                 help="Add Gaussian noise of this relative std to every weight before fine-tuning (paper §4)."),
    click.option("--mixed-precision", is_flag=True, help="Use float16 autocast on CUDA."),
    click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
                 help="Seed for splits, shuffling and noise."),
    click.option("--max-recoveries", type=int, default=None,
                 help="When training diverges (non-finite or exploding loss, collapsing validation accuracy) or "
                      "ends below the accuracy --max-accuracy-drop allows though it started above it, restore good "
                      "weights and lower the learning rate x0.1, at most this often (default: the recipe's, else 3); 0 turns "
                      "recovery off."),
    click.option("--clip-grad-norm", default="auto", show_default=True,
                 help="Clip the global gradient norm: 'auto' (5x the start model's typical norm), a number, "
                      "or 0 (off)."),
)


def finetune_config_from(params: dict, recipe: str = "paper") -> FineTuneConfig:
    torch_device = "cuda" if params["device"] in ("cuda", "tensorrt") else params["device"]
    return FineTuneConfig(
        epochs=params["epochs"], lr=params["lr"], batch_size=params["batch_size"], optimizer=params["optimizer"],
        patience=params["patience"], keep=params["keep"], weight_decay=params["weight_decay"], recipe=recipe,
        label_smoothing=params["label_smoothing"],
        noise=params["noise"], device=torch_device,
        mixed_precision=params["mixed_precision"], seed=params["seed"], max_recoveries=params["max_recoveries"],
        clip_grad_norm=_clip_setting(params["clip_grad_norm"]),
    )


def _clip_setting(text: str) -> float | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise BadOptionError(f"--clip-grad-norm {text}: use 'auto', 0 (off) or a positive number") from None
