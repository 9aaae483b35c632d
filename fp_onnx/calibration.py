"""What the start model's first training batches tell us before fine-tuning takes a step.

Measured once, on a few batches, with gradients but without an update:

* the **reference loss**, against which `fp_onnx.divergence` judges a blow-up;
* **layer-wise learning-rate scales.** Vendor graphs often take inputs on a 0-255
  scale with no normalisation inside (Caffe-era converters; preprocessing folded into
  the first conv). Such a layer's weights are ~255x smaller and its gradients ~255x
  larger than in the same network on 0-1 inputs, so one SGD step moves it ~65,000x
  further relative to its size: a learning rate that suits the rest of the network
  wrecks it in the first batch (training loss in the hundreds, accuracy at chance).
  We measure each parameter tensor's relative step ||grad|| / ||weight|| and compare
  it with the network's median; a tensor more than `spread` times above the median
  gets its learning rate lowered until it sits at `spread` times the median. Ordinary
  networks, whose layers lie within a few times of each other, are left untouched
  (measured: speech_badnets_demo's tensors lie within 4x of the median);
* the typical **gradient norm** (median over the batches, after the layer scales),
  from which the automatic gradient-clipping threshold is derived.

The relative step is the quantity a layer's learning rate acts on (the update of W
is lr * grad, judged against W itself), which is why it is invariant to how a
vendor chose to scale the input, unlike the raw gradient norm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

CLIP_FACTOR = 5.0
"""Automatic clipping threshold: this many times the start model's median gradient norm."""


@dataclass
class Calibration:
    reference_loss: float
    gradient_norm: float
    """Median global gradient norm (layer scales applied) over the calibration batches."""
    lr_scales: dict[str, float] = field(default_factory=dict)
    """Parameter name -> learning-rate multiplier, for the tensors that were scaled down (< 1)."""
    batches: int = 0

    def clip_threshold(self, setting: float | str) -> float | None:
        """The gradient-norm clipping threshold for a `clip_grad_norm` setting ('auto', 0 = off, or a norm)."""
        if setting == "auto":
            usable = math.isfinite(self.gradient_norm) and self.gradient_norm > 0
            return CLIP_FACTOR * self.gradient_norm if usable else None
        return float(setting) or None

    def to_dict(self) -> dict:
        return {"reference_loss": self.reference_loss, "gradient_norm": self.gradient_norm,
                "lr_scales": self.lr_scales, "batches": self.batches}


def layer_lr_scales(gradient_norms: dict[str, float], weight_norms: dict[str, float], spread: float) -> dict[str, float]:
    """Multipliers (< 1) for tensors whose relative step is more than `spread` times the median's.

    Tensors with zero weights or zero gradients (a zero-initialised bias, a dormant
    channel's weights) have no meaningful relative step and neither set nor get a scale.
    """
    ratios = {name: gradient_norms[name] / weight_norms[name] for name in gradient_norms
              if weight_norms.get(name, 0.0) > 0 and gradient_norms[name] > 0 and math.isfinite(gradient_norms[name])}
    if len(ratios) < 2 or spread <= 0:
        return {}
    limit = spread * float(np.median(list(ratios.values())))
    return {name: limit / ratio for name, ratio in ratios.items() if ratio > limit}
