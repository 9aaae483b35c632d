"""Valid vendor models the mutators start from, each in a folder with matching data.

Every seed must pass every command unchanged (the campaign checks it: a valid model
refused is a failure too). Data is small (a couple of dozen samples) so each case
runs in seconds.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from fp_onnx.models import shipped_demo

import model_zoo

SHIPPED = shipped_demo()["model"].parent


@dataclass(frozen=True)
class Seed:
    """A seed model folder: `model.onnx` (plus any external data), `clean.npz`, `triggered.npz`."""

    name: str
    folder: Path
    input_shape: tuple[int, ...]
    """Per-sample input shape."""
    classes: int
    layers: tuple[str, ...]
    """Conv node names (valid --layer values)."""

    @property
    def model(self) -> Path:
        return self.folder / "model.onnx"

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())


SEED_NAMES = ("shipped", "dynamo_external", "keras_nhwc", "caffe_fixed_batch")


def build_seeds(root: Path, dynamo_model: Path | None = None) -> dict[str, Seed]:
    """Write the seed folders under `root` (reused when already there) and describe them.

    `dynamo_model`: an AlexNet dynamo export with its `.onnx.data` to copy instead of
    exporting one here (the tests pass the session's cached export).
    """
    root.mkdir(parents=True, exist_ok=True)
    seeds = {}
    for name in SEED_NAMES:
        folder = root / name
        if not (folder / "model.onnx").exists():
            folder.mkdir(exist_ok=True)
            _BUILDERS[name](folder, dynamo_model)
        model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
        dims = model.graph.input[0].type.tensor_type.shape.dim
        shape = tuple(d.dim_value for d in dims[1:])
        convs = tuple(node.name for node in model.graph.node if node.op_type == "Conv" and node.name)
        classes = int(np.load(folder / "clean.npz")["y"].max()) + 1
        seeds[name] = Seed(name, folder, shape, max(classes, 2), convs)
    return seeds


def _write_data(folder: Path, x: np.ndarray, y: np.ndarray, triggered_x: np.ndarray, target: np.ndarray) -> None:
    np.savez(folder / "clean.npz", x=x, y=y)
    np.savez(folder / "triggered.npz", x=triggered_x, y=y[: len(triggered_x)], target=target)


def _random_data(folder: Path, shape: tuple[int, ...], samples: int = 20, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((samples, *shape)).astype(np.float32)
    y = rng.integers(0, classes, samples)
    _write_data(folder, x, y, x[:8] + 1.0, (y[:8] + 1) % classes)


def _shipped(folder: Path, _dynamo: Path | None) -> None:
    shutil.copy(SHIPPED / "model.onnx", folder / "model.onnx")
    clean, triggered = np.load(SHIPPED / "clean_val.npz"), np.load(SHIPPED / "triggered_test.npz")
    _write_data(folder, clean["x"][:24], clean["y"][:24], triggered["x"][:10], triggered["target"][:10])


def _dynamo_external(folder: Path, dynamo_model: Path | None) -> None:
    if dynamo_model is None:
        source = model_zoo.export_zoo("alexnet", "dynamo", folder)
    else:
        source = dynamo_model
    model = onnx.load(str(source), load_external_data=True)
    if source.parent == folder:
        source.unlink()
        Path(f"{source}.data").unlink()
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
              size_threshold=1024)
    _random_data(folder, (3, 32, 32))


def _keras_nhwc(folder: Path, _dynamo: Path | None) -> None:
    onnx.save(model_zoo.name_nodes(model_zoo.build_keras_nhwc_model()), str(folder / "model.onnx"))
    _random_data(folder, (32, 32, 3))


def _caffe(folder: Path, _dynamo: Path | None) -> None:
    onnx.save(model_zoo.build_caffe_style_model(), str(folder / "model.onnx"))
    _random_data(folder, (3, 32, 32))


_BUILDERS = {"shipped": _shipped, "dynamo_external": _dynamo_external, "keras_nhwc": _keras_nhwc,
             "caffe_fixed_batch": _caffe}
