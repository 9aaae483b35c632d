"""The mechanics of one fine-tuning run: batches, steps, clipping, evaluation.

`Trainer` owns one torch module (DDP-wrapped under torchrun) and whatever plan the
recipe (`fp_onnx.recipe`) built for it. It adds, for every recipe alike:

* **calibration** before the first step (`fp_onnx.calibration`): the reference loss,
  layer-wise learning-rate scales, the typical gradient norm;
* **gradient clipping** by the global norm of the *scaled* gradients (each tensor's
  gradient times its learning-rate scale, i.e. the step actually taken, divided by
  the global learning rate), so one huge-gradient input layer cannot dominate the norm;
* a **divergence check on every batch** before the step is taken, on the loss
  averaged over all ranks, so every rank decides the same and none waits forever on
  a collective the others have left;
* `snapshot` / `restore` of the weights, and `start(lr_factor)`, which asks the
  recipe for a fresh plan at lowered learning rates.

What to do about a divergence is decided by the caller (`fp_onnx.finetune`).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from fp_onnx.calibration import Calibration, layer_lr_scales
from fp_onnx.data import Dataset
from fp_onnx.distributed import DistributedContext
from fp_onnx.divergence import DivergenceMonitor
from fp_onnx.progress import progress_bar
from fp_onnx.recipe import TrainingPlan, find_recipe

if TYPE_CHECKING:
    from fp_onnx.finetune import FineTuneConfig

CALIBRATION_BATCHES = 4


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    nonfinite: int
    """Samples whose outputs contain NaN or inf (counted as wrong)."""

    @property
    def finite(self) -> bool:
        return self.nonfinite == 0


@dataclass(frozen=True)
class EpochOutcome:
    loss: float | None
    """Mean training loss over the batches taken; None when it was not finite."""
    divergence: str | None = None
    batch: int | None = None
    """1-based batch at which the divergence was noticed."""


def classification_loss(scores: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Cross-entropy for whatever the vendor's graph outputs (softmax outputs are common)."""
    scores = scores.reshape(scores.shape[0], -1).float()
    if kind == "probabilities":
        return F.nll_loss(torch.log(scores.clamp_min(1e-12)), labels)
    if kind == "log_probabilities":
        return F.nll_loss(scores, labels)
    return F.cross_entropy(scores, labels)


class Trainer:
    """One model, one plan at a time: calibrated, clipped, checked steps on one device (or DDP ranks)."""

    def __init__(self, module: torch.nn.Module, kind: str, config: "FineTuneConfig", device: torch.device,
                 context: DistributedContext, steps_per_epoch: int):
        self.module, self.kind, self.config, self.device, self.context = module, kind, config, device, context
        self.model = context.wrap(module)
        self.recipe = find_recipe(config.recipe)
        self.steps_per_epoch = steps_per_epoch
        self.autocast = config.mixed_precision and device.type == "cuda"
        self.lr_scales: dict[str, float] = {}
        self.clip_threshold: float | None = None
        self.plan: TrainingPlan | None = None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast)

    # ------------------------------------------------------------------ weights
    def snapshot(self) -> dict:
        return copy.deepcopy(self.module.state_dict())

    def restore(self, state: dict) -> None:
        self.module.load_state_dict(state)

    # ------------------------------------------------------------------ batches
    def batches(self, train: Dataset, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches of an epoch, in a seeded order that every rank shares."""
        order = np.random.default_rng([self.config.seed, epoch]).permutation(len(train))
        order = self.context.shard(order)
        labels = torch.from_numpy(train.labels)
        for start in range(0, len(order), self.config.batch_size):
            indices = np.sort(order[start : start + self.config.batch_size])
            x = torch.from_numpy(np.asarray(train.take(indices).x, dtype=np.float32)).to(self.device)
            yield x, labels[indices].to(self.device)

    def _forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The loss to optimise (with the recipe's extra terms) and the classification loss averaged over
        ranks (inf when this rank's outputs were not finite): what divergence is judged and reported on."""
        with torch.autocast(self.device.type, enabled=self.autocast):
            scores = self.model(x)
            loss = classification_loss(scores, y, self.kind)
            watched = float(loss.detach()) if bool(torch.isfinite(scores).all()) else math.inf
            for term in self.plan.loss_terms if self.plan is not None else ():
                loss = loss + term()
        return loss, self.context.mean(watched, self.device)

    # ------------------------------------------------------------------ calibration
    def calibrate(self, train: Dataset) -> Calibration:
        """Measure the start model on the first batches; set the layer scales and the clipping threshold."""
        losses, per_batch = self._first_gradients(train)
        parameters = {name: p for name, p in self.module.named_parameters() if p.requires_grad}
        weight_norms = {name: float(p.detach().float().norm()) for name, p in parameters.items()}
        mean_gradients = {name: float(np.mean([b.get(name, 0.0) for b in per_batch])) for name in parameters}
        scales = layer_lr_scales(mean_gradients, weight_norms, self.config.layer_scale_spread)
        scaled_norms = [math.sqrt(sum((scales.get(name, 1.0) * norm) ** 2 for name, norm in b.items()))
                        for b in per_batch]
        calibration = Calibration(float(np.mean(losses)) if losses else math.nan,
                                  float(np.median(scaled_norms)) if scaled_norms else math.nan,
                                  scales, len(per_batch))
        self.lr_scales = scales
        self.clip_threshold = calibration.clip_threshold(self.config.clip_grad_norm)
        return calibration

    def _first_gradients(self, train: Dataset) -> tuple[list[float], list[dict[str, float]]]:
        """Loss and per-tensor gradient norms on the first batches; no update, BatchNorm statistics restored."""
        state = self.snapshot()
        self.model.train()
        losses, per_batch = [], []
        for index, (x, y) in enumerate(self.batches(train, epoch=1)):
            if index == CALIBRATION_BATCHES:
                break
            self.model.zero_grad(set_to_none=True)
            loss, watched = self._forward_loss(x, y)
            loss.backward()
            losses.append(watched)
            per_batch.append({name: float(p.grad.detach().float().norm())
                              for name, p in self.module.named_parameters() if p.grad is not None})
        self.model.zero_grad(set_to_none=True)
        self.restore(state)
        return losses, per_batch

    # ------------------------------------------------------------------ plans
    def start(self, lr_factor: float = 1.0) -> None:
        """A fresh plan (optimizer state, schedule) with every learning rate times `lr_factor`."""
        base = self.config.lr * lr_factor
        trainable = [(name, p) for name, p in self.module.named_parameters() if p.requires_grad]
        groups = [{"params": [p for name, p in trainable if name not in self.lr_scales], "lr": base}]
        groups += [{"params": [p], "lr": base * self.lr_scales[name]} for name, p in trainable if name in self.lr_scales]
        groups = [group for group in groups if group["params"]]
        self.plan = self.recipe(self.module, groups, self.config, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast)

    # ------------------------------------------------------------------ training
    def train_epoch(self, train: Dataset, epoch: int, monitor: DivergenceMonitor, progress: bool) -> EpochOutcome:
        """One pass over this rank's shard; stops at the first batch the monitor flags (before its step)."""
        assert self.plan is not None, "call start() first"
        self.model.train()
        total, count = 0.0, 0
        with progress_bar(len(self.context.shard(np.arange(len(train)))), f"fine-tune epoch {epoch}",
                          enabled=progress) as bar:
            for index, (x, y) in enumerate(self.batches(train, epoch), start=1):
                self.plan.optimizer.zero_grad(set_to_none=True)
                loss, shared = self._forward_loss(x, y)
                reason = monitor.batch(shared)
                if reason is not None:  # the flagged batch's loss counts: it is what the user should see
                    return EpochOutcome(_finite_or_none((total + shared * len(x)) / (count + len(x))), reason, index)
                self.scaler.scale(loss).backward()
                self._clip()
                self.scaler.step(self.plan.optimizer)
                self.scaler.update()
                if self.plan.scheduler is not None:
                    self.plan.scheduler.step()
                total += shared * len(x)
                count += len(x)
                bar.update(len(x))
        return EpochOutcome(_finite_or_none(total / max(1, count)))

    def _clip(self) -> None:
        """Clip the global norm of the scaled gradients (the step actually taken, over the global lr)."""
        if self.clip_threshold is None:
            return
        self.scaler.unscale_(self.plan.optimizer)
        named = [(name, p) for name, p in self.module.named_parameters() if p.grad is not None]
        squares = [(self.lr_scales.get(name, 1.0) * p.grad.detach().float().norm()) ** 2 for name, p in named]
        if not squares:
            return
        norm = float(torch.stack(squares).sum().sqrt())
        if math.isfinite(norm) and norm > self.clip_threshold:
            factor = self.clip_threshold / (norm + 1e-6)
            for _, p in named:
                p.grad.detach().mul_(factor)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, dataset: Dataset) -> Evaluation:
        """Accuracy on `dataset`; samples with non-finite outputs count as wrong and are counted."""
        self.module.eval()
        correct, nonfinite = 0, 0
        for batch in dataset.batches(max(self.config.batch_size, 256)):
            x = torch.from_numpy(np.asarray(batch.x, dtype=np.float32)).to(self.device)
            scores = self.module(x).reshape(len(batch.x), -1).float()
            finite = torch.isfinite(scores).all(dim=1).cpu().numpy()
            hits = (scores.argmax(1).cpu().numpy() == batch.y) & finite
            correct += int(hits.sum())
            nonfinite += int((~finite).sum())
        return Evaluation(correct / len(dataset), nonfinite)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
