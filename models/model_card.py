"""Model cards (JSON) and the attack metrics they report.

Metrics follow the paper: clean accuracy on the clean test set; attack success
on the triggered test set, which for targeted attacks is the fraction of
triggered inputs classified as the attacker's intended label, and for untargeted
attacks 1 - A_backdoor / A_clean (paper footnote 4).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predicted == labels)) if len(labels) else float("nan")


def attack_success(triggered_predicted: np.ndarray, triggered: dict[str, np.ndarray], clean_accuracy: float) -> float:
    """Targeted when the set has `target`, else untargeted (footnote 4)."""
    if "target" in triggered:
        return accuracy(triggered_predicted, triggered["target"])
    return 1.0 - accuracy(triggered_predicted, triggered["y"]) / clean_accuracy


def write_card(path: Path, card: dict) -> Path:
    path.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return path


def read_card(path: Path) -> dict:
    return json.loads(Path(path).read_text())
