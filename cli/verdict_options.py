"""Flags that decide whether a written model may ship: the guard's and the verdict's limits."""
from __future__ import annotations

import click

from fp_onnx.guard import DEFAULT_MAX_ACCURACY_DROP, max_accuracy_drop_for
from fp_onnx.prune import StopRule
from fp_onnx.verdict import DEFAULT_MAX_ATTACK_SUCCESS, VerdictLimits

max_accuracy_drop_option = click.option(
    "--max-accuracy-drop", type=float, default=None,
    help="Refuse to ship (exit 7) a written model whose clean validation accuracy is more than this "
         "(absolute) below the vendor's, or whose outputs are not finite. Default: the larger of what the "
         "--method accepts (recommended: 0.02) and the --threshold stop rule's value, else "
         f"{DEFAULT_MAX_ACCURACY_DROP:g}; widened to 2 / validation samples where the split cannot resolve it.")

max_attack_success_option = click.option(
    "--max-attack-success", type=float, default=DEFAULT_MAX_ATTACK_SUCCESS, show_default=True,
    help="With --trigger-data: above this attack success the backdoor remains, the model is kept only as "
         "defended.onnx.rejected and the exit code is 8.")


def max_accuracy_drop_from(params: dict, rule: StopRule | None = None) -> float:
    """The guard's limit: the flag, else the threshold the pruning stopped at, else the default (0.04)."""
    return max_accuracy_drop_for(params.get("max_accuracy_drop"), rule)


def limits_from(params: dict, rule: StopRule | None = None) -> VerdictLimits:
    return VerdictLimits(max_accuracy_drop=max_accuracy_drop_from(params, rule),
                         max_attack_success=params.get("max_attack_success", DEFAULT_MAX_ATTACK_SUCCESS))
