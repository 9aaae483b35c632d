"""The losses fine-tuning and the learned criteria share, for whatever a vendor's graph outputs."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(scores: torch.Tensor, labels: torch.Tensor, kind: str,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy for whatever the vendor's graph outputs (softmax outputs are common), optionally with
    label smoothing (the target puts `label_smoothing` of its mass uniformly on all classes)."""
    scores = scores.reshape(scores.shape[0], -1).float()
    if kind == "probabilities":
        scores = torch.log(scores.clamp_min(1e-12))
    elif kind != "log_probabilities":
        return F.cross_entropy(scores, labels, label_smoothing=label_smoothing)
    loss = F.nll_loss(scores, labels)
    if label_smoothing:
        loss = (1 - label_smoothing) * loss - label_smoothing * scores.mean(dim=1).mean()
    return loss


def as_log_probabilities(scores: torch.Tensor, kind: str, temperature: float = 1.0) -> torch.Tensor:
    """Log-probabilities over classes at `temperature` (distillation compares these)."""
    flat = scores.reshape(scores.shape[0], -1).float()
    if kind == "probabilities":
        flat = torch.log(flat.clamp_min(1e-12))
    return F.log_softmax(flat / temperature, dim=1)
