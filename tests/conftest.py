"""Shared pytest fixtures."""
from __future__ import annotations

# ============================================================ model zoo (graph-structure helper)
# Session-cached exports of tests/model_zoo.py: each (architecture, exporter) pair is
# exported at most once per test session (dynamo exports cost 5-20 s each here).
import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

import onnx
import pytest

import model_zoo
import torchvision_zoo


@pytest.fixture(scope="session")
def zoo_path(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """`zoo_path(arch, exporter)`: the path of the exported zoo model (exported on first use)."""
    folder = tmp_path_factory.mktemp("zoo")
    cache: dict[tuple[str, str], Path] = {}

    def get(arch: str, exporter: str) -> Path:
        if (arch, exporter) not in cache:
            cache[arch, exporter] = model_zoo.export_zoo(arch, exporter, folder)
        return cache[arch, exporter]

    return get


@pytest.fixture(scope="session")
def zoo_model(zoo_path: Callable[[str, str], Path]) -> Callable[[str, str], onnx.ModelProto]:
    """`zoo_model(name, exporter)`: a loaded zoo model (shared; do not mutate it).

    `name` is an ARCHITECTURES key, or "keras_nhwc" / "caffe" for the helper-built graphs
    (exporter ignored for those)."""
    cache: dict[tuple[str, str], onnx.ModelProto] = {}
    builders = {"keras_nhwc": model_zoo.build_keras_nhwc_model, "caffe": model_zoo.build_caffe_style_model}

    def get(name: str, exporter: str = "legacy") -> onnx.ModelProto:
        key = (name, "helper" if name in builders else exporter)
        if key not in cache:
            cache[key] = (model_zoo.name_nodes(builders[name]()) if name in builders
                          else model_zoo.load_for_tests(zoo_path(name, exporter)))
        return cache[key]

    return get


@pytest.fixture(scope="session")
def torchvision_path(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`torchvision_path(name, exporter, randomise=True)`: a torchvision classifier exported once per
    session (tests/torchvision_zoo.py); skips the test when torchvision is not installed."""
    if not torchvision_zoo.available():
        pytest.skip("torchvision is not installed (it comes with the project's `test` extra)")
    folder = tmp_path_factory.mktemp("torchvision")
    cache: dict[tuple[str, str, bool], Path] = {}

    def get(name: str, exporter: str, randomise: bool = True) -> Path:
        key = (name, exporter, randomise)
        if key not in cache:
            size = torchvision_zoo.CLASSIFIERS[name].size
            path = folder / f"{name}_{exporter}{'' if randomise else '_default_init'}.onnx"
            cache[key] = model_zoo.export_torch(torchvision_zoo.build(name, randomise=randomise), path, exporter,
                                                input_shape=(3, size, size))
        return cache[key]

    return get
# ============================================================ end model zoo


# ============================================================ trained vendor models (session-cached)
@pytest.fixture(scope="session")
def backdoored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A BadNets-backdoored speech model trained in seconds (tests/backdoor_fixture.py) and its data."""
    from backdoor_fixture import build_backdoored

    return build_backdoored(tmp_path_factory.mktemp("backdoored"))


@pytest.fixture(scope="session")
def raw_pixel(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A Caffe-style vendor model taking 0-255 inputs with no normalisation inside (fp_onnx.models.raw_pixel)."""
    from fp_onnx.models.raw_pixel import build_raw_pixel_speech

    return build_raw_pixel_speech(tmp_path_factory.mktemp("raw_pixel"))


# ============================================================ benchmark scripts
@pytest.fixture(scope="session")
def bench_module() -> Callable[[str], ModuleType]:
    """Imports a script of bench/ by name: they are scripts run from the repository, not a package, and their
    bookkeeping (which cells are current, what a probe scores) is tested where the numbers are not."""
    folder = str(Path(__file__).resolve().parents[1] / "bench")

    def load(name: str) -> ModuleType:
        sys.path.insert(0, folder)
        try:
            return importlib.import_module(name)
        finally:
            sys.path.remove(folder)
    return load
