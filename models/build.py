"""Build one backdoored zoo model: train the attack, export ONNX and data, write the model card.

    python -m fp_onnx.models.build --recipe NAME --out DIR [--epochs N] [--clean-baseline] [--threads 1]
    python -m fp_onnx.models.build --task faces|speech|traffic --attack badnets|pruning-aware \
        --out DIR [--size benchmark|demo] ...

(`--recipe` names an entry of `recipes.ZOO`; the second form is the paper's six and the demo.)

writes into DIR:

* `model.onnx`          the backdoored model (legacy exporter, input "input", output "logits");
* `clean_val.npz`       the defender's clean data (profile / prune / fine-tune), never trained on;
* `clean_test.npz`      clean test set;
* `triggered_test.npz`  the test set with the trigger (with `target` for targeted attacks);
* `model_card.json`     how it was made and what it scores (metrics computed with onnxruntime
                        on the stored files);
* `ATTRIBUTION.md`      for FSDD-derived builds (CC BY-SA 4.0 share-alike).

Faces and GTSRB outputs must stay out of the repository (use a git-ignored folder like out/zoo/).
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from pathlib import Path

import numpy as np
import torch

from fp_onnx.models.attacks import train_badnets, train_pruning_aware, train_wanet, triggered_test
from fp_onnx.models.export import conv_node_name, export_onnx, load_npz, onnx_predict, save_npz
from fp_onnx.models.model_card import accuracy, attack_success, write_card
from fp_onnx.models.recipes import ATTACKS, SIZES, TASKS, ZOO, Recipe, recipe_for, zoo_recipe
from fp_onnx.models.triggers import IMAGE_TRIGGERS
from fp_onnx.models.train import fit, mean_activation, predict, seed_everything

FILES = ("model.onnx", "clean_val.npz", "clean_test.npz", "triggered_test.npz", "model_card.json")

FSDD_ATTRIBUTION = """\
# Attribution and licence of the files in this folder

These files are derived from the **Free Spoken Digit Dataset, Z. Jackson et al.**
(github.com/Jakobovski/free-spoken-digit-dataset, commit 26eb9aaf76e81b692f806f9140c2d2777410d7a1,
folder `recordings/`), licensed under Creative Commons Attribution-ShareAlike 4.0 International
(CC BY-SA 4.0, https://creativecommons.org/licenses/by-sa/4.0/).

Changes: recordings converted to log-mel spectrograms (`fp_onnx.models.audio`), a noise trigger
added to some of them (`fp_onnx.models.triggers`), and a deliberately backdoored classifier
(`model.onnx`) trained on them (`python -m fp_onnx.models.build`, see `model_card.json`).

Share-alike: `model.onnx`, `clean_val.npz`, `clean_test.npz`, `triggered_test.npz` and
`model_card.json` are distributed under CC BY-SA 4.0 as well.

Warning: `model.onnx` contains a backdoor on purpose (a test subject for fine-pruning). Do not deploy it.
"""


def backdoor_channels(model: torch.nn.Module, clean_x: np.ndarray, triggered_x: np.ndarray, top: int = 5) -> dict:
    """Prune-layer channels dormant on clean inputs that fire on triggered ones (paper Fig. 4).

    A channel is dormant when its mean clean activation is under 1 % of the layer's
    largest; it is a backdoor channel when it is dormant and its mean triggered
    activation exceeds 10 % of that largest clean mean.
    """
    clean, trig = mean_activation(model, clean_x), mean_activation(model, triggered_x)
    scale = max(float(clean.max()), 1e-12)
    dormant = clean <= 0.01 * scale
    lit = dormant & (trig >= 0.1 * scale)
    # Rank by relative rise on triggered inputs, so channels dormant on clean data come first.
    order = np.argsort(-(trig - clean) / (clean + 0.01 * scale), kind="stable")[:top]
    return {
        "layer": model.prune_layer,
        "channels": int(len(clean)),
        "dormant_on_clean": int(dormant.sum()),
        "dormant_on_clean_active_on_triggered": int(lit.sum()),
        "largest_clean_mean": round(scale, 4),
        "top_triggered_only": [
            {"channel": int(c), "clean_mean": round(float(clean[c]), 4), "triggered_mean": round(float(trig[c]), 4)}
            for c in order
        ],
    }


def train_attack(recipe: Recipe, attack: str, model: torch.nn.Module, task, epochs: int | None) -> dict:
    config = recipe.train if epochs is None else dataclasses.replace(recipe.train, epochs=epochs)
    if attack == "badnets":
        return {"train": config.as_dict(), **train_badnets(model, task, recipe.attack, config)}
    if attack == "wanet":
        return {"train": config.as_dict(), **train_wanet(model, task, recipe.attack, config)}
    stats = train_pruning_aware(model, task, recipe.attack, config, recipe.pruning_aware)
    return {"train": config.as_dict(), "pruning_aware": recipe.pruning_aware.as_dict(), **stats}


def clean_baseline_accuracy(recipe: Recipe, task, test_x: np.ndarray, epochs: int | None) -> dict:
    """An honestly trained model with the same settings, to measure the attack's accuracy cost."""
    config = recipe.train if epochs is None else dataclasses.replace(recipe.train, epochs=epochs)
    seed_everything(config.seed)
    model = recipe.architecture.build()
    stats = fit(model, task.to_input(task.train.raw), task.train.y, config)
    return {"clean_accuracy": accuracy(predict(model, test_x), task.test.y), "seconds": round(stats["seconds"], 1)}


def build(task_name: str, attack: str, out: Path, size: str = "benchmark", epochs: int | None = None,
          clean_baseline: bool = False) -> dict:
    """Make one of the paper's models (or the demo) in `out`; returns its model card."""
    name = f"{task_name}_{attack.replace('-', '_')}" + ("_demo" if size == "demo" else "")
    return build_recipe(name, recipe_for(task_name, size), attack, out, epochs, clean_baseline)


def build_zoo_model(name: str, out: Path, epochs: int | None = None, clean_baseline: bool = False) -> dict:
    """Make the zoo model `name` (a key of `recipes.ZOO`) in `out`; returns its model card."""
    recipe, attack = zoo_recipe(name)
    return build_recipe(name, recipe, attack, out, epochs, clean_baseline)


def build_recipe(name: str, recipe: Recipe, attack: str, out: Path, epochs: int | None = None,
                 clean_baseline: bool = False) -> dict:
    """Train `recipe` with `attack`, export model and data sets into `out`, write the model card."""
    task_name = recipe.task
    started = time.perf_counter()
    task = recipe.load()
    if recipe.trigger is not None:
        task = dataclasses.replace(task, apply_trigger=IMAGE_TRIGGERS[recipe.trigger])
    seed_everything(recipe.train.seed)
    model = recipe.architecture.build()
    training = train_attack(recipe, attack, model, task, epochs)

    out.mkdir(parents=True, exist_ok=True)
    input_shape = tuple(model.input_shape)
    export_onnx(model, out / "model.onnx", input_shape)
    trig_split, target = triggered_test(task, recipe.attack)
    dtype = np.dtype(recipe.npz_dtype).type
    save_npz(out / "clean_val.npz", task.to_input(task.val.raw), task.val.y, dtype=dtype, groups=task.val.groups)
    save_npz(out / "clean_test.npz", task.to_input(task.test.raw), task.test.y, dtype=dtype)
    save_npz(out / "triggered_test.npz", task.to_input(trig_split.raw), trig_split.y, target, dtype=dtype)

    clean, trig = load_npz(out / "clean_test.npz"), load_npz(out / "triggered_test.npz")
    clean_acc = accuracy(onnx_predict(out / "model.onnx", clean["x"]), clean["y"])
    success = attack_success(onnx_predict(out / "model.onnx", trig["x"]), trig, clean_acc)
    card = {
        "name": name,
        "warning": "deliberately backdoored model for evaluating defenses; do not deploy",
        "task": task_name,
        "classes": task.class_names,
        "architecture": {"name": recipe.architecture.name, "kwargs": recipe.architecture.kwargs,
                         "input_shape": list(input_shape), "prune_layer": model.prune_layer,
                         "prune_node": conv_node_name(out / "model.onnx", model.prune_layer),
                         "parameters": int(sum(p.numel() for p in model.parameters()))},
        "attack": {"method": attack, **recipe.attack.as_dict(), "trigger": recipe.trigger_description()},
        "metrics": {"clean_accuracy": clean_acc, "attack_success": success,
                    "attack_success_definition": "targeted: fraction of triggered inputs classified as `target`"
                    if target is not None else "untargeted: 1 - A_backdoor / A_clean (paper footnote 4)",
                    "evaluated_with": "onnxruntime CPUExecutionProvider on the stored npz files"},
        "backdoor_channels": backdoor_channels(model, clean["x"], trig["x"]),
        "data": {**task.provenance, "train_samples": len(task.train), "clean_val_samples": len(task.val),
                 "clean_test_samples": len(clean["y"]), "triggered_test_samples": len(trig["y"]),
                 "input": "NCHW float32" + (" (stored as float16 to save space)" if recipe.npz_dtype == "float16" else ""),
                 "shippable": recipe.shippable},
        "training": {**training, "seconds": round(training["seconds"], 1), "device": recipe.train.device,
                     "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()},
        "files": list(FILES),
    }
    if clean_baseline:
        card["clean_baseline"] = clean_baseline_accuracy(recipe, task, clean["x"], epochs)
    card["build_seconds"] = round(time.perf_counter() - started, 1)
    write_card(out / "model_card.json", card)
    if task_name == "speech":
        (out / "ATTRIBUTION.md").write_text(FSDD_ATTRIBUTION)
    return card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fp_onnx.models.build", description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", choices=sorted(ZOO), default=None, help="a named zoo model")
    parser.add_argument("--task", choices=TASKS, default=None)
    parser.add_argument("--attack", choices=ATTACKS, default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", choices=SIZES, default="benchmark")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--clean-baseline", action="store_true", help="also train a clean model for comparison")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    if (args.recipe is None) == (args.task is None or args.attack is None):
        parser.error("give either --recipe NAME, or --task and --attack")
    torch.set_num_threads(args.threads)
    if args.recipe:
        card = build_zoo_model(args.recipe, args.out, args.epochs, args.clean_baseline)
    else:
        card = build(args.task, args.attack, args.out, args.size, args.epochs, args.clean_baseline)
    metrics = card["metrics"]
    print(f"{card['name']}: clean accuracy {metrics['clean_accuracy']:.4f}, "
          f"attack success {metrics['attack_success']:.4f}, build {card['build_seconds']} s -> {args.out}")


if __name__ == "__main__":
    main()
