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

from fp_onnx.metrics import AttackSpec, accuracy, attack_success_rate

__all__ = ["accuracy", "attack_success", "read_card", "write_card"]


def attack_success(triggered_predicted: np.ndarray, triggered: dict[str, np.ndarray], clean_accuracy: float) -> float:
    """The paper's attack success rate, from fp_onnx.metrics: targeted when the set has `target`."""
    attack = AttackSpec("targeted") if "target" in triggered else AttackSpec("untargeted")
    return attack_success_rate(attack, triggered_predicted, triggered["y"], triggered.get("target"), clean_accuracy)


def write_card(path: Path, card: dict) -> Path:
    path.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return path


def read_card(path: Path) -> dict:
    return json.loads(Path(path).read_text())
