"""The defense's warp check: before recovery, does a small warp send clean inputs to one class far more easily than to
any other?

A warping trigger (WaNet) is the one shape of backdoor the default's unlearning recipes do not reach: they search
additive perturbations and patches, and the zoo's WaNet model kept 0.84 attack success through them
(docs/decisions.md, "Universal warps"). The recipe that does reach it (`adversarial-warp`) unlearns warps towards one
class, and is only worth its cost where a class stands out. So the defense asks first, on the pruned model and a
seeded selection of the defender's clean training part, the same question as that recipe's own scan
(`fp_onnx.recipes.warp.warp_success`, `suspect_class`): for each class, how easily does a 1.5-pixel warp (on
32x32; `SCAN_RADIUS`) send the other classes' inputs there. Where one class is an outlier, the method's warp recipes
are tried first, pointed at that class (`FineTuneConfig.warp_target`); elsewhere the method's cascade runs as it
would without the check. The check is one measurement and decides nothing else; the report carries it (`warp_check`).

It seeds its own random numbers on a forked generator: the verdict depends on the seed alone, and the run after it
is the run without it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from fp_onnx.converters import onnx_to_torch
from fp_onnx.data import Dataset
from fp_onnx.finetune import trainable_graph
from fp_onnx.progress import progress_bar
from fp_onnx.recipes.warp import own_random_numbers, scan_report, suspect_class, warp_success
from fp_onnx.signature import class_count

CHECK_SAMPLES = 128
"""Inputs the check measures on (all of the training part when it has fewer). Two batches' worth: on the zoo's WaNet
model one batch of 64 separated the attacker's class (0.70 against at most 0.07), and 128 validation images
(0.97 against at most 0.56); more inputs make a rate less noisy, at a proportional cost (about 200 s of one CPU
thread for 43 classes of 32x32 images)."""
SELECTION_STREAM = 7919
"""Mixed into the run's seed to draw the check's inputs, so the selection is seeded but is not any batch's order."""


@dataclass(frozen=True)
class WarpCheck:
    """The check's verdict: the suspect class (None: no class stands out, or the inputs are not images) and every
    class's rate it was chosen from."""

    suspect_class: int | None
    reach: list[float]
    samples: int
    seconds: float

    def to_dict(self) -> dict:
        return {**scan_report(self.suspect_class, self.reach), "samples": self.samples,
                "seconds": round(self.seconds, 1)}


def check_for_warp_backdoor(model: onnx.ModelProto, train: Dataset, seed: int, device: torch.device,
                            samples: int = CHECK_SAMPLES, progress: bool = False) -> WarpCheck:
    """Scan `model` (the pruned one, a classifier with one input) with warps towards each class on `samples` of
    `train`'s inputs, drawn with `seed`."""
    started = time.perf_counter()
    trainable, kind = trainable_graph(model)
    module = onnx_to_torch(trainable).to(device)
    chosen = np.sort(np.random.default_rng([seed, SELECTION_STREAM]).permutation(len(train))[:samples])
    x = torch.from_numpy(np.asarray(train.take(chosen).x, dtype=np.float32)).to(device)
    y = torch.from_numpy(train.labels[chosen]).to(device)
    with own_random_numbers(device), progress_bar(class_count(model), "warp check", enabled=progress,
                                                  unit="class") as bar:
        torch.manual_seed(seed)  # the searches' random starts: the same verdict for the same seed
        reach = warp_success(module, x, y, kind, on_class=bar.update)
    return WarpCheck(suspect_class(reach), reach, len(chosen), time.perf_counter() - started)


def describe_warp_check(check: dict | None) -> str | None:
    """One sentence on a report's `warp_check` (`WarpCheck.to_dict`), for the CLI and the HTML report; None when the
    method did not check."""
    if check is None:
        return None
    best = check["most_reached_class"]
    if best is None:
        return "warp check: the inputs are not images, nothing to check"
    reached = (f"class {best}, reached from {check['reach'][best]:.0%} of the other classes' inputs, anomaly index "
               f"{check['anomaly_index']:g}")
    if check["suspect_class"] is None:
        return f"warp check: no class stands out (most reached: {reached})"
    return f"warp check: {reached}, stands out: adversarial-warp was tried first, aimed at it"
