"""Noticing that fine-tuning has gone wrong, while it happens.

Three signs, each cheap to watch:

* a batch loss or a model output that is not finite (NaN/inf): the weights are gone;
* a training loss that blows up against the start: the smoothed batch loss (an
  exponential moving average over about ten batches) exceeds both `blowup` times the
  start model's loss on the first batches and that loss plus ln(classes), the loss of
  a uniform guess. The second bound keeps a nearly perfect start model (loss 0.01)
  from being flagged for ordinary noise: only a model that has become worse than
  guessing counts;
* validation accuracy, measured after every epoch, that collapses: more than
  `collapse_drop` below the starting model's.

The monitor only says *that* and *why*; restoring weights and lowering the learning
rate is the training loop's job (`fp_onnx.finetune`), so every recipe gets the same
protection.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

SMOOTHING = 0.1
"""Weight of the newest batch in the moving average of the training loss (about ten batches)."""


@dataclass
class DivergenceMonitor:
    reference_loss: float
    """Mean loss of the start model on the first training batches (before any step)."""
    classes: int
    initial_accuracy: float
    """Validation accuracy of the start model."""
    blowup: float = 4.0
    collapse_drop: float = 0.10
    _smoothed: float | None = None

    @property
    def loss_bound(self) -> float:
        return max(self.blowup * self.reference_loss, self.reference_loss + math.log(max(2, self.classes)))

    def restart(self) -> None:
        """Forget the loss history (after the weights were restored)."""
        self._smoothed = None

    def batch(self, loss: float) -> str | None:
        """Why the run diverged at this batch, or None while it looks sane.

        `loss` is the batch loss before the step (inf when the outputs were not finite).
        """
        if not math.isfinite(loss):
            return f"training loss or outputs became non-finite ({loss})"
        self._smoothed = loss if self._smoothed is None else (1 - SMOOTHING) * self._smoothed + SMOOTHING * loss
        if self._smoothed > self.loss_bound:
            return (f"training loss blew up: {self._smoothed:.4g} (smoothed) against {self.reference_loss:.4g} "
                    f"at the start (bound {self.loss_bound:.4g})")
        return None

    def epoch(self, accuracy: float, outputs_finite: bool = True) -> str | None:
        """Why the epoch's weights are unusable, judged on validation data, or None."""
        if not outputs_finite:
            return "validation outputs are non-finite (NaN/inf)"
        if accuracy < self.initial_accuracy - self.collapse_drop - 1e-12:
            return (f"validation accuracy collapsed: {accuracy:.4f} against {self.initial_accuracy:.4f} "
                    f"at the start (more than {self.collapse_drop:g} lower)")
        return None
