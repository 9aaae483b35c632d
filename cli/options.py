"""Option groups shared by several commands, and the objects they build.

Each `*_options` decorator adds one family of flags; the matching `*_from`
function turns the parsed values into library objects. Commands stay a list of
decorators plus a few library calls.
"""
from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from fp_onnx.data import MAX_CLASS_ID, DataKeys, Dataset, open_dataset
from fp_onnx.errors import BadOptionError
from fp_onnx.images import MAX_IMAGE_PIXELS, ImagePreprocess
from fp_onnx.loading import DEFAULT_MAX_BYTES, LoadedModel, load_model
from fp_onnx.memory import budget_bytes
from fp_onnx.metrics import AttackSpec
from fp_onnx.prune_point import PrunePoint, resolve_prune_point
from fp_onnx.runtime import DEVICES, OPTIMIZATION_LEVELS, RuntimeOptions
from fp_onnx.signature import class_count

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20,
          "g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40, "pib": 2**50}
MAX_SIZE = 2**60
"""Sizes beyond an exbibyte are typos (and overflow the C integers onnxruntime uses)."""


def compose(*decorators: Callable) -> Callable:
    def apply(function: Callable) -> Callable:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


class FiniteFloat(click.ParamType):
    """A float that is a real number: 'nan' and 'inf' parse as floats but mean nothing as a flag value."""

    name = "float"

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


FINITE_FLOAT = FiniteFloat()

model_argument = click.argument("model", type=click.Path(dir_okay=False, path_type=Path))

runtime_options = compose(
    click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                 help="Where onnxruntime runs the model; auto uses CUDA only when a GPU is really usable."),
    click.option("--threads", type=int, default=0, show_default=True, help="Intra-op threads (0: automatic)."),
    click.option("--graph-optimization", type=click.Choice(list(OPTIMIZATION_LEVELS)), default="all",
                 show_default=True, help="onnxruntime graph optimisation level."),
    click.option("--max-model-size", default="8GiB", show_default=True,
                 help="Refuse model files (with external data) larger than this."),
    click.option("--max-memory", default="auto", show_default=True,
                 help="Memory budget that inference batches and prune-sweep chunks are sized to, e.g. 4GiB "
                      "(auto: half the memory available at start)."),
    click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
                 help="Training batch; inference batches use at most this many samples, fewer when "
                      "--max-memory requires."),
)

layer_option = click.option(
    "--layer", default=None, help="Prune point: a Conv node name or a tensor name (default: the last feature conv)."
)

data_key_options = compose(
    click.option("--x-key", default="x", show_default=True, help="Array/dataset holding inputs (.npz, HDF5)."),
    click.option("--y-key", default="y", show_default=True, help="Array/dataset holding labels."),
    click.option("--target-key", default="target", show_default=True,
                 help="Array holding per-sample attacker targets in triggered data."),
    click.option("--groups-key", default="groups", show_default=True,
                 help="Array of per-sample group ids (video track, speaker): validation takes whole groups."),
)

image_options = compose(
    click.option("--image-size", default=None, metavar="HxW", help="Resize images from class folders to HxW."),
    click.option("--scale", type=FINITE_FLOAT, default=1 / 255, show_default="1/255", help="Multiply pixel values by this."),
    click.option("--mean", default="0", show_default=True, help="Per-channel mean to subtract, comma-separated."),
    click.option("--std", default="1", show_default=True, help="Per-channel std to divide by, comma-separated."),
    click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default="NCHW", show_default=True,
                 help="Layout of image inputs, to match the model input."),
    click.option("--grayscale", is_flag=True, help="Read images as one channel."),
)

input_options = compose(runtime_options, data_key_options, image_options)
"""Everything about running the model and reading data: what every data-consuming command takes."""

trigger_option = click.option(
    "--trigger-data", "trigger_path", type=click.Path(path_type=Path), default=None,
    help="Triggered inputs: activations and attack success are measured on them (never used to decide).")

out_option = click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("fp-onnx-out"),
                          show_default=True, help="Folder for the results (created if needed).")


def data_option(help_text: str) -> Callable:
    return click.option("--data", "data_path", required=True, type=click.Path(path_type=Path), help=help_text)


attack_options = compose(
    click.option("--target", default=None, metavar="T|data",
                 help="Targeted attack: the target class id, or 'data' for per-sample targets in the triggered data."),
    click.option("--untargeted", is_flag=True, help="Untargeted attack: success = 1 - A_backdoor / A_clean."),
)


def show_progress() -> bool:
    """Progress bars only where a person watches (a terminal), not in logs or pipes."""
    return sys.stderr.isatty()


def parse_size(text: str, flag: str = "--max-model-size") -> int:
    match = _SIZE.match(text)
    if not match:
        raise BadOptionError(f"{flag} {_shown(text)}: use a number with an optional unit, e.g. 500MB or 8GiB")
    size = float(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
    if not math.isfinite(size) or size >= MAX_SIZE:
        raise BadOptionError(f"{flag} {_shown(text)}: too large; at most {MAX_SIZE // _UNITS['pib']} PiB")
    if size < 1:
        raise BadOptionError(f"{flag} {_shown(text)}: must be at least 1 byte")
    return int(size)


def _shown(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


def runtime_from(params: dict) -> RuntimeOptions:
    memory = params.get("max_memory") or "auto"
    return RuntimeOptions(device=params["device"], threads=params["threads"], optimization=params["graph_optimization"],
                          max_memory=0 if memory.strip().lower() == "auto" else parse_size(memory, "--max-memory"))


def load_from(params: dict, path: Path | None = None) -> LoadedModel:
    max_bytes = parse_size(params.get("max_model_size") or str(DEFAULT_MAX_BYTES))
    return load_model(path or params["model"], max_bytes=max_bytes)


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise BadOptionError(f"{flag} {_shown(text)}: expected comma-separated numbers") from None
    if not all(math.isfinite(value) for value in values):
        raise BadOptionError(f"{flag} {_shown(text)}: values must be finite numbers")
    return values


def _image_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    match = re.fullmatch(r"(\d{1,9})[x,](\d{1,9})", text.strip())
    if not match:
        raise BadOptionError(f"--image-size {_shown(text)}: expected HxW, e.g. 32x32")
    height, width = int(match.group(1)), int(match.group(2))
    if height < 1 or width < 1 or height * width > MAX_IMAGE_PIXELS:
        raise BadOptionError(f"--image-size {text}: each side at least 1 and at most {MAX_IMAGE_PIXELS} pixels "
                             "in all (Pillow's own decompression-bomb limit)")
    return height, width


def dataset_from(params: dict, path: Path) -> Dataset:
    preprocess = ImagePreprocess(
        size=_image_size(params.get("image_size")),
        scale=params.get("scale", 1 / 255),
        mean=_floats(params.get("mean", "0"), "--mean"),
        std=_floats(params.get("std", "1"), "--std"),
        layout=params.get("layout", "NCHW"),
        grayscale=params.get("grayscale", False),
    )
    keys = DataKeys(x=params.get("x_key", "x"), y=params.get("y_key", "y"), target=params.get("target_key", "target"),
                    groups=params.get("groups_key", "groups"))
    return open_dataset(path, keys=keys, preprocess=preprocess, memory_budget=budget_bytes(runtime_from(params).max_memory))


def attack_from(params: dict, has_trigger_data: bool) -> AttackSpec | None:
    """The attack definition, or None; refuses contradictory or dangling flags."""
    target, untargeted = params.get("target"), params.get("untargeted", False)
    if target is not None and untargeted:
        raise BadOptionError("--target and --untargeted exclude each other")
    if not has_trigger_data:
        if target is not None or untargeted:
            raise BadOptionError("--target/--untargeted describe triggered data; give --trigger-data too")
        return None
    if target is None and not untargeted:
        raise BadOptionError("--trigger-data needs --target T, --target data, or --untargeted to define attack success")
    if untargeted:
        return AttackSpec("untargeted")
    if target == "data":
        return AttackSpec("targeted", None)
    try:
        target_class = int(target)
    except ValueError:
        raise BadOptionError(f"--target {_shown(target)}: expected a class id or 'data'") from None
    if not 0 <= target_class <= MAX_CLASS_ID:
        raise BadOptionError(f"--target {_shown(target)}: a class id is a whole number from 0 to {MAX_CLASS_ID}")
    return AttackSpec("targeted", target_class)


@dataclass
class CommandInputs:
    """What every analysing command opens first, in the order that fails fastest on bad flags."""

    loaded: LoadedModel
    point: PrunePoint
    clean: Dataset
    triggered: Dataset | None
    attack: AttackSpec | None


def open_inputs(params: dict) -> CommandInputs:
    loaded = load_from(params)
    attack = attack_from(params, params["trigger_path"] is not None)
    classes = class_count(loaded.model)
    if attack is not None and attack.target is not None and classes is not None and attack.target >= classes:
        raise BadOptionError(f"--target {attack.target}: the model scores {classes} classes (0..{classes - 1})")
    point = resolve_prune_point(loaded.model, params["layer"])
    clean = dataset_from(params, params["data_path"])
    triggered = dataset_from(params, params["trigger_path"]) if params["trigger_path"] else None
    return CommandInputs(loaded, point, clean, triggered, attack)
