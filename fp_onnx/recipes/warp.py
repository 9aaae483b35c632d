"""A universal *warp*: one smooth displacement field that, resampling every image of a batch, sends it to one class.

The additive search (`adversarial.universal_perturbation`) and the patch search
(`fp_onnx.recipes.patch`) cover triggers that add a pattern or replace pixels. A warping
trigger (WaNet, Nguyen and Tran, ICLR 2021) does neither: it moves every pixel by a
fixed, smooth, sub-visible displacement. The additive change that does that differs from
image to image (it is the image's gradient times the displacement), so an L2 ball around
the input reaches it only by containing much else, and a patch cannot express it at all.
This search looks in the set of warps instead, parameterised as WaNet's paper builds its
trigger (written here from that description): a coarse `WARP_GRID` x `WARP_GRID` grid of
control displacements, upsampled bilinearly to the image and applied by bilinear
resampling with clamped edges. The control field is bounded in root-mean-square pixels,
a fraction of the image's shorter side (`SCAN_RADIUS`, `UNLEARN_RADIUS`), and moved by
normalised-gradient steps like the additive search.

Unlike the patch and additive searches, this one is *targeted*. Measured on the zoo's WaNet
model (GTSRB, 43 classes), an untargeted search (raise the true labels' loss) finds natural
adversarial warps: a 0.6-pixel warp already halves clean accuracy, each time towards another class,
and never the trigger (cosine similarity with the trigger's field -0.2 to 0.05). A warp that
sends inputs to *one chosen class* separates the backdoor at once: within 1 pixel (rms), a warp
sent 0.97 of the inputs to the attacker's class and at most 0.56 to any other class (median
0; on another build of that model, pruned, only 0.37, which is why the scan now searches
within 1.5 px, `SCAN_RADIUS`). So `suspect_class` first asks, class by class, how easily a
warp reaches it, and flags a class whose rate is an outlier (Neural Cleanse's test, Wang et
al., S&P 2019, on the median absolute deviation, applied to warps; written from its
description), and the unlearning then searches warps towards the outlier class only; with no outlier there is
nothing to unlearn and the warp term is zero.

A warp needs to know which axes are the image's rows and columns: `spatial_layout` reads
that from the input's shape (4-D, with 1, 3 or 4 channels first or last). Inputs that are
not images (a 2-D feature vector) have no warp; the search then reports none, and the
recipe's warp term is zero for them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fp_onnx.losses import classification_loss
from fp_onnx.module_mode import evaluation_mode
from fp_onnx.recipes.search_step import step_within_ball

WARP_GRID = 4
"""Control points per side: WaNet's published default (k = 4)."""
SCAN_RADIUS = 0.045
"""The scan's bound on the control field's root-mean-square displacement, as a fraction of the image's shorter side
(1.5 px on 32x32; the zoo's trigger moves pixels by 2.3 px rms). At 1 px the scan was limited by its radius, not by
its search: on the benchmark's build of the zoo's WaNet model, pruned, the attacker's class was reached from 0.37 of
the inputs and missed the rate bound (index 7.5), where 1.5 px reaches 0.86 (index 16.7); a decaying step, keeping
the best step or three random starts each moved the 1-px rate by at most 0.02 (docs/decisions.md, "The warp
check")."""
UNLEARN_RADIUS = 0.075
"""The same bound for the warps the recipe unlearns (2.4 px on 32x32). Unlearning 1-px warps towards the suspect
class left 0.37 of the zoo's WaNet backdoor (docs/decisions.md, "Universal warps"): robustness within the small
ball the scan needs to single the class out does not reach a trigger that moves pixels further."""
WARP_STEPS = 5
SCAN_STEPS = 15
"""Steps of each class's search in `warp_success`."""
SUSPECT_SUCCESS = 0.5
"""A class is the suspect when a warp sends at least this fraction of the other classes' inputs to it ..."""
SUSPECT_ANOMALY = 3.5
"""... and its rate is an outlier among the classes': at least this many robust standard deviations (1.4826 times
the median absolute deviation) above their median. Neural Cleanse flags at 2 on its own statistic; a small
spectrogram net trained on clean data reached 2.0 (warps reach some classes of spectrograms easily), the zoo's WaNet
model over 10 (docs/decisions.md, "Universal warps", also for where the test misfires)."""
SUSPECT_MIN_CLASSES = 5
"""Fewer classes give no verdict: a median and a deviation of three rates say nothing about which is unusual. The
zoo's three-class traffic model with a patch backdoor had rates 0.09, 0.68 and 0 (anomaly index 4.6)."""
SCALE_FLOOR = 0.05
"""The smallest spread the anomaly index divides by: where a warp reaches almost no class (median and deviation
near 0), one class at 0.1 is no outlier."""
WARP_STEP_FRACTION = 0.5
"""Length of one ascent step, as a fraction of the field's budget (the additive search's rule)."""
COLOUR_CHANNELS = (1, 3, 4)


@dataclass
class Warp:
    """Control displacements (2, WARP_GRID, WARP_GRID) in pixels, rows then columns, and the input's layout."""

    field: torch.Tensor
    channels_last: bool

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The batch with every image resampled at (row, col) + the upsampled displacement, edges clamped."""
        images = x.permute(0, 3, 1, 2) if self.channels_last else x
        height, width = images.shape[-2:]
        dense = F.interpolate(self.field[None], size=(height, width), mode="bilinear", align_corners=True)[0]
        rows = torch.linspace(-1, 1, height, device=x.device, dtype=x.dtype)
        cols = torch.linspace(-1, 1, width, device=x.device, dtype=x.dtype)
        base_rows, base_cols = torch.meshgrid(rows, cols, indexing="ij")
        # grid_sample takes (x, y) = (column, row) in [-1, 1]; with corners aligned one pixel is 2 / (size - 1)
        grid = torch.stack((base_cols + dense[1] * 2 / max(width - 1, 1),
                            base_rows + dense[0] * 2 / max(height - 1, 1)), dim=-1)
        warped = F.grid_sample(images, grid[None].expand(len(x), -1, -1, -1), mode="bilinear",
                               padding_mode="border", align_corners=True)
        return warped.permute(0, 2, 3, 1) if self.channels_last else warped


def spatial_layout(shape: torch.Size) -> bool | None:
    """Whether a batch of this shape is channels-last (True), channels-first (False), or no image batch (None)."""
    if len(shape) != 4:
        return None
    if shape[1] in COLOUR_CHANNELS:
        return False
    return True if shape[3] in COLOUR_CHANNELS else None


def warp_budget(shape: torch.Size, channels_last: bool, radius: float) -> float:
    """The control field's L2 bound: `radius` times the shorter side, per control displacement."""
    height, width = (shape[1], shape[2]) if channels_last else (shape[2], shape[3])
    return radius * min(height, width) * (2 * WARP_GRID * WARP_GRID) ** 0.5


def universal_warp(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str, start: Warp | None,
                   target: int, steps: int = WARP_STEPS, radius: float = UNLEARN_RADIUS) -> Warp | None:
    """A warp shared by the batch `x` that sends its inputs of other classes to `target`: `steps` descent steps on
    their loss towards `target`, from `start` (the last batch's warp, so the search accumulates over an epoch) or
    from a faint random field; None for a batch of non-images or one with no input of another class.

    Gradients are taken with respect to the field only (the weights' .grad is untouched), with the module in
    evaluation mode so BatchNorm statistics do not move.
    """
    channels_last = spatial_layout(x.shape)
    others = x[y != target]
    if channels_last is None or not len(others):
        return None
    budget = warp_budget(x.shape, channels_last, radius)
    goal = torch.full((len(others),), target, dtype=torch.long, device=x.device)
    shape = (2, WARP_GRID, WARP_GRID)
    if start is not None and start.field.shape == shape and start.channels_last == channels_last:
        field = start.field.detach().clone()
    else:
        field = torch.randn(shape, device=x.device, dtype=x.dtype)
        field *= 0.1 * budget / (field.norm() + 1e-12)
    with evaluation_mode(module):
        for _ in range(steps):
            field.requires_grad_(True)
            loss = classification_loss(module(Warp(field, channels_last).apply(others)), goal, kind)
            gradient, = torch.autograd.grad(loss, field)
            with torch.no_grad():
                field = step_within_ball(field, -gradient, budget, WARP_STEP_FRACTION)  # descent: towards target
    return Warp(field.detach(), channels_last)


def own_random_numbers(device: torch.device):
    """A block whose random draws leave the run's generators where they were: a scan that finds nothing then
    leaves the run exactly as it would have been without it (same batches, same searches, same weights)."""
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=cuda)


def warp_success(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str,
                 on_class: Callable[[], object] | None = None) -> list[float]:
    """For each class, the fraction of the other classes' inputs that a warp searched towards it sends there; no
    rates at all for a batch of non-images, which have no warp. `on_class` is called after each class (progress)."""
    if spatial_layout(x.shape) is None:
        return []
    with evaluation_mode(module), torch.no_grad():
        classes = module(x[:1]).reshape(1, -1).shape[1]
    rates = []
    for target in range(classes):
        rates.append(_reach(module, x, y, kind, target))
        if on_class is not None:
            on_class()
    return rates


def _reach(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str, target: int) -> float:
    """The fraction of the other classes' inputs that a scan-sized warp searched towards `target` sends there."""
    warp = universal_warp(module, x, y, kind, None, target, SCAN_STEPS, SCAN_RADIUS)
    if warp is None:
        return 0.0
    others = x[y != target]
    with evaluation_mode(module), torch.no_grad():
        predicted = module(warp.apply(others)).reshape(len(others), -1).argmax(dim=1)
    return float((predicted == target).float().mean())


def scan_report(suspect: int | None, rates: list[float]) -> dict:
    """A scan's verdict for a report: the suspect class, every class's rate, the most reached class and its anomaly
    index (the recipe's own scan and the defense's check report the same fields)."""
    best = most_reached(rates)
    return {"suspect_class": suspect, "reach": [round(rate, 4) for rate in rates], "most_reached_class": best,
            "anomaly_index": None if best is None else round(anomaly_index(rates, best), 2)}


def most_reached(rates: list[float]) -> int | None:
    """The class with the highest rate (the first of equals), None when there are no rates."""
    return max(range(len(rates)), key=rates.__getitem__) if rates else None


def anomaly_index(rates: list[float], index: int) -> float:
    """How far class `index`'s rate lies above the classes' median, in robust standard deviations (`SCALE_FLOOR`)."""
    values = torch.tensor(rates, dtype=torch.float64)
    median = float(values.median())
    spread = 1.4826 * float((values - median).abs().median())
    return (rates[index] - median) / max(spread, SCALE_FLOOR)


def suspect_class(rates: list[float]) -> int | None:
    """The class a warp reaches far more easily than the others (`SUSPECT_SUCCESS`, `SUSPECT_ANOMALY`), if one does."""
    if len(rates) < SUSPECT_MIN_CLASSES:
        return None
    best = most_reached(rates)
    return best if rates[best] >= SUSPECT_SUCCESS and anomaly_index(rates, best) >= SUSPECT_ANOMALY else None
