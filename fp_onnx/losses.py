"""The losses fine-tuning and the learned criteria share, for whatever a vendor's graph outputs."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(scores: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Cross-entropy for whatever the vendor's graph outputs (softmax outputs are common)."""
    scores = scores.reshape(scores.shape[0], -1).float()
    if kind == "probabilities":
        return F.nll_loss(torch.log(scores.clamp_min(1e-12)), labels)
    if kind == "log_probabilities":
        return F.nll_loss(scores, labels)
    return F.cross_entropy(scores, labels)


def as_log_probabilities(scores: torch.Tensor, kind: str, temperature: float = 1.0) -> torch.Tensor:
    """Log-probabilities over classes at `temperature` (distillation compares these)."""
    flat = scores.reshape(scores.shape[0], -1).float()
    if kind == "probabilities":
        flat = torch.log(flat.clamp_min(1e-12))
    return F.log_softmax(flat / temperature, dim=1)
