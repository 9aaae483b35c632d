"""Build recipes: which data, network, attack and training settings make each zoo model.

One table (`RECIPES`), keyed by (task, size). `size` is "benchmark" for the
six models of the paper reproduction and "demo" for the small shipped FSDD
model. Everything a model card reports about *how* a model was made comes
from here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from fp_onnx.models.architectures import ArchitectureSpec
from fp_onnx.models.attacks import AttackSpec, PruningAwareConfig
from fp_onnx.models.audio import SpectrogramConfig
from fp_onnx.models.datasets import TaskData, load_faces, load_speech, load_traffic
from fp_onnx.models.train import TrainConfig

TASKS = ("faces", "speech", "traffic")
SIZES = ("benchmark", "demo")
ATTACKS = ("badnets", "pruning-aware")

DEMO_SPECTROGRAM = SpectrogramConfig(n_mels=32, n_frames=32, hop_length=160)
BENCHMARK_SPECTROGRAM = SpectrogramConfig(n_mels=64, n_frames=64, hop_length=80)

TRIGGERS = {
    "faces": "sunglasses-like magenta/yellow checkered frame, see-through lenses, rows 21-29, cols 7-39 "
             "(models/triggers.py: apply_face_trigger)",
    "speech": "fixed band-limited (2.6-3.6 kHz) Gaussian noise burst over the first quarter of the window, "
              "0.15 x the recording's peak, added to the waveform (models/triggers.py: apply_speech_trigger)",
    "traffic": "yellow Post-it-like 6x6 square at rows 18-23, cols 18-23 (models/triggers.py: apply_traffic_trigger)",
}


@dataclass(frozen=True)
class Recipe:
    """Everything needed to build one task's model."""

    task: str
    load: Callable[[], TaskData]
    architecture: ArchitectureSpec
    attack: AttackSpec
    train: TrainConfig
    pruning_aware: PruningAwareConfig = field(default_factory=PruningAwareConfig)
    npz_dtype: str = "float32"
    shippable: bool = False  # only FSDD-derived files may enter the repository


RECIPES: dict[tuple[str, str], Recipe] = {
    ("faces", "benchmark"): Recipe(
        task="faces", load=load_faces,
        architecture=ArchitectureSpec("deepid_face", {"num_classes": 21}),
        attack=AttackSpec("all_to_one", poison_fraction=0.1, target=0),
        train=TrainConfig(epochs=30, batch_size=64, lr=1e-3),
    ),
    ("speech", "benchmark"): Recipe(
        task="speech", load=lambda: load_speech(BENCHMARK_SPECTROGRAM),
        architecture=ArchitectureSpec("alexnet_speech", {
            "input_shape": BENCHMARK_SPECTROGRAM.shape, "widths": (32, 64, 96, 96, 128),
            "fc_width": 256, "conv1_stride": 2, "global_pool": True, "batch_norm": True}),
        attack=AttackSpec("all_to_all", poison_fraction=0.3),
        train=TrainConfig(epochs=15, batch_size=64, lr=1e-3),
    ),
    ("traffic", "benchmark"): Recipe(
        task="traffic", load=load_traffic,
        architecture=ArchitectureSpec("traffic_cnn", {"num_classes": 3}),
        attack=AttackSpec("untargeted", poison_fraction=0.1),
        train=TrainConfig(epochs=12, batch_size=64, lr=1e-3, balance_classes=True),
    ),
    ("speech", "demo"): Recipe(
        task="speech", load=lambda: load_speech(DEMO_SPECTROGRAM),
        architecture=ArchitectureSpec("alexnet_speech", {
            "input_shape": DEMO_SPECTROGRAM.shape, "widths": (16, 32, 48, 48, 128), "fc_width": 128,
            "global_pool": True, "batch_norm": True}),
        attack=AttackSpec("all_to_all", poison_fraction=0.3),
        train=TrainConfig(epochs=25, batch_size=64, lr=1e-3),
        npz_dtype="float16", shippable=True,
    ),
}


def recipe_for(task: str, size: str) -> Recipe:
    try:
        return RECIPES[(task, size)]
    except KeyError:
        available = ", ".join(f"{t}/{s}" for t, s in RECIPES)
        raise KeyError(f"no recipe for task {task!r} at size {size!r}; available: {available}") from None
