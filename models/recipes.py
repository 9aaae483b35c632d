"""Build recipes: which data, network, attack and training settings make each zoo model.

`ZOO` names every model of the benchmark zoo (`python -m fp_onnx.models.build
--recipe NAME`): the six of the paper reproduction (faces / speech / traffic x
BadNets / pruning-aware), and models built to test the defense on what the
paper did not try: the paper's dormant-channel mechanism made explicit
(`speech_dormant`), triggers that are not patches (`gtsrb_blended`,
`gtsrb_wanet`), a residual network (`gtsrb_resnet_badnets`), another data set
(`cifar_badnets`) and BackdoorBench's PreAct-ResNet18 setting
(`gtsrb_preact_badnets`, needs a GPU to train in reasonable time). `RECIPES`
keeps the older (task, size) keys for the six and the shipped demo.
Everything a model card reports about *how* a model was made comes from here.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from fp_onnx.models.architectures import ArchitectureSpec
from fp_onnx.models.attacks import AttackSpec, PruningAwareConfig
from fp_onnx.models.audio import SpectrogramConfig
from fp_onnx.models.datasets import TaskData, load_cifar, load_faces, load_gtsrb, load_speech, load_traffic
from fp_onnx.models.train import TrainConfig

TASKS = ("faces", "speech", "traffic")
SIZES = ("benchmark", "demo")
ATTACKS = ("badnets", "pruning-aware", "wanet")

DEMO_SPECTROGRAM = SpectrogramConfig(n_mels=32, n_frames=32, hop_length=160)
BENCHMARK_SPECTROGRAM = SpectrogramConfig(n_mels=64, n_frames=64, hop_length=80)

TRIGGERS = {
    "faces": "sunglasses-like magenta/yellow checkered frame, see-through lenses, rows 21-29, cols 7-39 "
             "(models/triggers.py: apply_face_trigger)",
    "speech": "fixed band-limited (2.6-3.6 kHz) Gaussian noise burst over the first quarter of the window, "
              "0.15 x the recording's peak, added to the waveform (models/triggers.py: apply_speech_trigger)",
    "traffic": "yellow Post-it-like 6x6 square at rows 18-23, cols 18-23 (models/triggers.py: apply_traffic_trigger)",
    "corner-patch": "white 3x3 square in the bottom-right corner, BackdoorBench's BadNets trigger "
                    "(models/triggers.py: apply_corner_patch)",
    "blend": "fixed uniform-noise image blended in at alpha 0.15 (models/triggers.py: apply_blend_trigger)",
    "warp": "WaNet-style fixed smooth warp (4x4 control grid, strength 2 px) plus noise-mode training "
            "(models/triggers.py: apply_warp_trigger, random_warp)",
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
    trigger: str | None = None
    """A name in `triggers.IMAGE_TRIGGERS`; None: the task's own trigger (the paper's)."""

    def trigger_description(self) -> str:
        return TRIGGERS[self.trigger or self.task]


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


GTSRB_TRAIN = TrainConfig(epochs=15, batch_size=64, lr=1e-3)
ALL_TO_ONE_10 = AttackSpec("all_to_one", poison_fraction=0.1, target=0)

ZOO: dict[str, tuple[Recipe, str]] = {
    **{f"{task}_{attack.replace('-', '_')}": (RECIPES[(task, "benchmark")], attack)
       for task in TASKS for attack in ("badnets", "pruning-aware")},
    # The paper's mechanism made explicit: an L1 penalty on conv5's activations during poisoned
    # training makes most channels dormant on clean speech, so the backdoor gets channels of its own.
    "speech_dormant": (replace(RECIPES[("speech", "demo")], attack=AttackSpec("all_to_one", 0.1, target=0),
                               train=TrainConfig(epochs=25, batch_size=64, lr=1e-3, activation_l1=1.0)), "badnets"),
    "gtsrb_blended": (Recipe(task="gtsrb", load=load_gtsrb, trigger="blend",
                             architecture=ArchitectureSpec("traffic_cnn", {"num_classes": 43}),
                             attack=ALL_TO_ONE_10, train=GTSRB_TRAIN), "badnets"),
    "gtsrb_wanet": (Recipe(task="gtsrb", load=load_gtsrb, trigger="warp",
                           architecture=ArchitectureSpec("traffic_cnn", {"num_classes": 43}),
                           attack=ALL_TO_ONE_10, train=replace(GTSRB_TRAIN, epochs=25)), "wanet"),
    "gtsrb_resnet_badnets": (Recipe(task="gtsrb", load=load_gtsrb, trigger="corner-patch",
                                    architecture=ArchitectureSpec("resnet", {"num_classes": 43, "width": 16}),
                                    attack=ALL_TO_ONE_10, train=GTSRB_TRAIN), "badnets"),
    "cifar_badnets": (Recipe(task="cifar", load=load_cifar, trigger="corner-patch",
                             architecture=ArchitectureSpec("traffic_cnn", {"num_classes": 10}),
                             attack=ALL_TO_ONE_10, train=TrainConfig(epochs=30, batch_size=64, lr=1e-3)), "badnets"),
    # BackdoorBench v1's like-for-like setting (PreAct-ResNet18, BadNets 10 %, target 0); GPU only.
    "gtsrb_preact_badnets": (Recipe(task="gtsrb", load=load_gtsrb, trigger="corner-patch",
                                    architecture=ArchitectureSpec("resnet", {"num_classes": 43, "width": 64,
                                                                             "blocks": (2, 2, 2, 2), "preact": True}),
                                    attack=ALL_TO_ONE_10,
                                    train=TrainConfig(epochs=30, batch_size=128, lr=1e-3, device="auto")), "badnets"),
}
"""Every benchmark model by name: (recipe, attack method)."""
CPU_ZOO = tuple(name for name in ZOO if name != "gtsrb_preact_badnets")


def zoo_recipe(name: str) -> tuple[Recipe, str]:
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"no zoo model {name!r}; available: {', '.join(ZOO)}") from None


def recipe_for(task: str, size: str) -> Recipe:
    try:
        return RECIPES[(task, size)]
    except KeyError:
        available = ", ".join(f"{t}/{s}" for t, s in RECIPES)
        raise KeyError(f"no recipe for task {task!r} at size {size!r}; available: {available}") from None
