"""What fine-tuning does when it goes wrong: restore good weights, lower the learning rate, go on.

Also which weights a run returns: the best epoch on validation (`keep="best"`, the paper's
early stopping), the last good one (`keep="last"`, for recipes measured with a fixed
budget, where a validation split of a few dozen samples cannot tell epochs apart), or the
mean of the good epochs over the second half of the budget (`keep="average"`,
`fp_onnx.weight_average`; the last good epoch instead where only that one passes the accuracy floor).

Two kinds of trouble, one remedy (restore, multiply every learning rate by
`lr_backoff`, fresh optimizer state, try again), from one bounded budget
(`max_recoveries`):

* **divergence** during an epoch or at its end (`fp_onnx.divergence`): the weights of
  the last good epoch (the start weights before the first) are restored and the same
  epoch is tried again;
* **a usable model made unusable**: given an `accuracy_floor` (the lowest validation
  accuracy the result may ship with, i.e. the vendor's minus the guard's allowed
  drop), when the start model is at or above it but early stopping ends with no
  fine-tuned epoch reaching it, the learning rate was too high for this model and
  data: the start weights are restored and fine-tuning runs again from epoch 1. (A
  start already below the floor, e.g. after pruning a fixed large fraction, is left
  alone: a smaller learning rate cannot lift it.)

When the budget is spent (or is 0) training stops with `failure` set. The best
fine-tuned epoch over all attempts is kept; when no epoch survived at all, the
diverged weights are kept, not the start weights (for `finetune` those are the
vendor's, and a file of them named finetuned.onnx would claim a fine-tuning that
never happened): the guard on the written file then rejects them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fp_onnx.data import Dataset
from fp_onnx.divergence import DivergenceMonitor
from fp_onnx.training import Trainer
from fp_onnx.weight_average import WeightAverage, refresh_batch_norm

if TYPE_CHECKING:
    from fp_onnx.finetune import FineTuneResult


@dataclass
class _Best:
    accuracy: float = -1.0
    state: dict | None = None
    epoch: int = 0

    def offer(self, accuracy: float, state: dict, epoch: int) -> None:
        if accuracy >= self.accuracy:  # ties go to the later, longer fine-tuned epoch
            self.accuracy, self.state, self.epoch = accuracy, state, epoch


class RecoveringRun:
    """Epochs with early stopping, recoveries and bookkeeping into a `FineTuneResult`."""

    def __init__(self, trainer: Trainer, train: Dataset, val: Dataset, monitor: DivergenceMonitor,
                 result: "FineTuneResult", accuracy_floor: float | None, progress: bool) -> None:
        self.trainer, self.train, self.val, self.monitor = trainer, train, val, monitor
        self.result, self.floor, self.progress = result, accuracy_floor, progress
        self.config = trainer.config
        self.lr_factor = 1.0

    def lr(self, factor: float | None = None) -> float:
        value = self.config.lr * (self.lr_factor if factor is None else factor)
        return float(f"{value:.12g}")  # so that 0.001 * 0.1 reads 0.0001, not 0.00010000000000000002

    def run(self) -> None:
        """Train; leave the chosen weights in the trainer's module and fill the result."""
        start_state = self.trainer.snapshot()
        self.trainer.start(self.lr_factor)
        best = _Best()
        while True:
            attempt = self._epochs(start_state)
            if attempt.state is not None and self.config.keep != "best":
                best = attempt  # a restarted attempt replaces the one that ended below the floor
            elif attempt.state is not None:
                best.offer(attempt.accuracy, attempt.state, attempt.epoch)
            if self.result.failure is not None or not self._made_unusable(attempt):
                break
            reason = (f"fine-tuning ended below the accuracy floor: best validation accuracy {attempt.accuracy:.4f} "
                      f"< {self.floor:.4f}, though the start model had {self.monitor.initial_accuracy:.4f}")
            if not self._recover(self.result.history[-1]["epoch"], None, reason, start_state, 0):
                break
        self._finish(best)

    def _epochs(self, start_state: dict) -> _Best:
        """One attempt from epoch 1: returns its best good epoch (state None when none survived)."""
        good_state, good_epoch, best, stale, epoch = start_state, 0, _Best(), 0, 1
        average = WeightAverage(self.config.epochs) if self.config.keep == "average" else None
        while epoch <= self.config.epochs:
            self.monitor.restart()
            outcome = self.trainer.train_epoch(self.train, epoch, self.monitor, self.progress)
            reason, accuracy = outcome.divergence, None
            if reason is None:
                evaluation = self.trainer.evaluate(self.val)
                accuracy = evaluation.accuracy
                reason = self.monitor.epoch(evaluation.accuracy, evaluation.finite)
            self.result.history.append({"epoch": epoch, "lr": self.lr(), "train_loss": outcome.loss,
                                        "val_accuracy": accuracy, "diverged": reason})
            if reason is not None:
                if not self._recover(epoch, outcome.batch, reason, good_state, good_epoch):
                    break
                continue
            good_state, good_epoch = self.trainer.snapshot(), epoch
            if average is not None:
                average.offer(good_state, epoch)
            stale = 0 if accuracy > best.accuracy + 1e-9 else stale + 1
            if self.config.keep != "best":
                best = _Best(accuracy, good_state, epoch)
            else:
                best.offer(accuracy, good_state, epoch)
            if self.config.patience is not None and stale >= self.config.patience:
                break
            epoch += 1
        return best if average is None else self._averaged(average, best)

    def _averaged(self, average: WeightAverage, last: _Best) -> _Best:
        """The attempt's averaged weights, measured on validation; its last good epoch when no epoch was averaged,
        the mean's outputs are not finite, or the mean falls below the accuracy floor that the last epoch passes.

        The last case is a choice between two results of one run, both after the same unlearning: the mean is
        preferred (it measured as good or better on the test sets), but the floor is what decides whether a result
        may ship, and refusing the run for its mean alone would hand the defense to a weaker recipe. On one build of
        faces_pruning_aware that was the difference between 0.679 / 0.049 and the fallback's 0.699 / 0.986
        (docs/decisions.md, "A mean below the floor gives way to the run's last epoch")."""
        self.result.averaged_epochs = 0
        self.result.average_below_floor = None
        state = average.state()
        if state is None or last.state is None:
            return last
        self.trainer.restore(state)
        refresh_batch_norm(self.trainer.module, self.train, self.config.batch_size, self.trainer.device)
        evaluation = self.trainer.evaluate(self.val)
        if not evaluation.finite:
            return last
        if self._below_floor(evaluation.accuracy) and not self._below_floor(last.accuracy):
            self.result.average_below_floor = {"val_accuracy": evaluation.accuracy, "epochs": average.count}
            return last
        self.result.averaged_epochs = average.count
        return _Best(evaluation.accuracy, self.trainer.snapshot(), last.epoch)

    def _below_floor(self, accuracy: float) -> bool:
        return self.floor is not None and accuracy < self.floor - 1e-12

    def _made_unusable(self, attempt: _Best) -> bool:
        if self.floor is None or self._below_floor(self.monitor.initial_accuracy):
            return False
        return attempt.state is not None and self._below_floor(attempt.accuracy)

    def _recover(self, epoch: int, batch: int | None, reason: str, state: dict, restored_epoch: int) -> bool:
        """Restore `state` at a lower learning rate; False (and `failure` set) when the budget is spent."""
        if len(self.result.recoveries) >= self.config.max_recoveries:
            self.result.failure = reason
            return False
        after = self.lr_factor * self.config.lr_backoff
        self.result.recoveries.append({"epoch": epoch, "batch": batch, "reason": reason, "lr_before": self.lr(),
                                       "lr_after": self.lr(after), "restored_epoch": restored_epoch})
        self.trainer.restore(state)
        self.lr_factor = after
        self.trainer.start(self.lr_factor)
        return True

    def _finish(self, best: _Best) -> None:
        if best.state is not None:
            self.trainer.restore(best.state)
        else:  # no epoch survived: keep the diverged weights for the guard to reject, and say how bad they are
            best.accuracy = self.trainer.evaluate(self.val).accuracy
        self.result.best_epoch, self.result.best_val_accuracy = best.epoch, best.accuracy
        self.result.final_lr = self.lr()
