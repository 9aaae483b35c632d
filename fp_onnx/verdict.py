"""The verdict of a fine-pruning run: one sentence for people, the same facts for machines.

Three outcomes, in this order of precedence:

* **failed** (exit 7): the written model failed the clean-accuracy guard
  (`fp_onnx.guard`): non-finite outputs or too large a clean-accuracy drop;
* **failed** (exit 8): the model is usable but, measured on the triggered data the
  user gave, the backdoor remains (attack success above `max_attack_success`). A tool
  that names a still-backdoored model "defended" misleads, so it is not shipped as
  `defended.onnx`; it stays available as `defended.onnx.rejected` for a user who wants
  it anyway;
* **defended**, or **defended at a clean-accuracy cost of X** when the written model
  is less accurate than the vendor's on the validation data. Without triggered data
  the verdict says that the backdoor was not measured. When the validation split is
  too small to rule out a cost above the limit (the 95 % interval of the paired
  difference, `fp_onnx.confidence`), the verdict says so and how far the cost could go:
  the model passed on the measured cost, but a user shipping it should know how little
  a few dozen samples prove. Likewise when the triggered data cannot rule out a
  targeted attack success above `max_attack_success`.

`Verdict.to_dict()` is what report.json opens with (`verdict`): status, summary,
reasons, measured values and limits, so a CI pipeline can gate a vendor model on it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fp_onnx.confidence import Interval, proportion_interval
from fp_onnx.errors import BackdoorRemainsError, BadOptionError, FpOnnxError
from fp_onnx.guard import DEFAULT_MAX_ACCURACY_DROP, GuardResult

DEFAULT_MAX_ATTACK_SUCCESS = 0.05
"""The paper's goal for a defended model (§4: fine-pruning brings attack success to at most a few percent)."""

DEFENDED, FAILED = "defended", "failed"


@dataclass(frozen=True)
class VerdictLimits:
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP
    max_attack_success: float = DEFAULT_MAX_ATTACK_SUCCESS

    def __post_init__(self) -> None:
        for flag, value in (("--max-accuracy-drop", self.max_accuracy_drop),
                            ("--max-attack-success", self.max_attack_success)):
            if not 0.0 <= value <= 1.0:
                raise BadOptionError(f"{flag} {value}: must lie in [0, 1]")


@dataclass
class Verdict:
    status: str
    summary: str
    """One line: 'defended', 'defended at a clean-accuracy cost of 0.012 ...', or 'failed: <why>'."""
    reasons: list[str] = field(default_factory=list)
    measured: dict = field(default_factory=dict)
    limits: dict = field(default_factory=dict)
    exit_code: int = 0
    model: str = ""
    """The file the model was left in: the result name, or its .rejected name."""
    _error: FpOnnxError | None = field(default=None, repr=False)

    def error(self) -> FpOnnxError | None:
        """The exception whose exit code and one line the CLI reports, or None when defended."""
        return self._error

    def to_dict(self) -> dict:
        return {"status": self.status, "summary": self.summary, "reasons": self.reasons, "measured": self.measured,
                "limits": self.limits, "exit_code": self.exit_code, "model": self.model}


def defense_verdict(guard: GuardResult, attack_success: float | None, limits: VerdictLimits, *,
                    kept_as: str, shipped_as: str, training_note: str = "", attack_samples: int | None = None
                    ) -> Verdict:
    """Judge the written model: the guard first, then (given triggered data) the backdoor.

    `kept_as` is the .rejected name a failed model is left under, `shipped_as` the
    result name a defended one gets; `training_note` (e.g. fine-tuning's recoveries)
    is added to a failure's explanation; `attack_samples`, the triggered samples a targeted
    attack success is a share of, gives its 95 % interval.
    """
    interval = guard.accuracy_drop_interval
    attack_interval = _attack_interval(attack_success, attack_samples)
    measured = {"vendor_clean_accuracy": guard.vendor.accuracy, "clean_accuracy": guard.written.accuracy,
                "clean_accuracy_drop": guard.accuracy_drop,
                "clean_accuracy_drop_interval": None if interval is None else interval.to_dict(),
                "nonfinite_outputs": guard.written.nonfinite_samples,
                "validation_samples": guard.written.samples, "attack_success": attack_success,
                "attack_success_interval": None if attack_interval is None else attack_interval.to_dict(),
                "backdoor_measured": attack_success is not None}
    limit_values = {"max_accuracy_drop": limits.max_accuracy_drop, "max_attack_success": limits.max_attack_success,
                    "outputs_finite": True}
    backdoor = _backdoor_reason(attack_success, limits.max_attack_success)
    reasons = guard.reasons() + ([backdoor] if backdoor else [])
    if not guard.passed:
        return Verdict(FAILED, "failed: " + "; ".join(reasons), reasons, measured, limit_values,
                       guard.error(kept_as, training_note).exit_code, kept_as, guard.error(kept_as, training_note))
    if backdoor:
        error = BackdoorRemainsError(f"{backdoor} (--max-attack-success); model kept as {kept_as}")
        return Verdict(FAILED, f"failed: {backdoor}", reasons, measured, limit_values, error.exit_code, kept_as, error)
    return Verdict(DEFENDED, _defended_summary(guard, attack_success, attack_interval, limits), [], measured,
                   limit_values, 0, shipped_as)


def _backdoor_reason(attack_success: float | None, limit: float) -> str | None:
    if attack_success is None or attack_success <= limit + 1e-12:
        return None
    return f"backdoor remains: attack success {attack_success:.4f} > {limit:g}"


def _attack_interval(attack_success: float | None, samples: int | None) -> Interval | None:
    if attack_success is None or not samples:
        return None
    return proportion_interval(round(attack_success * samples), samples)


def _defended_summary(guard: GuardResult, attack_success: float | None, attack_interval: Interval | None,
                      limits: VerdictLimits) -> str:
    drop = guard.accuracy_drop
    summary = "defended"
    if drop > 1e-9:
        summary += (f" at a clean-accuracy cost of {drop:.4f} ({guard.vendor.accuracy:.4f} -> "
                    f"{guard.written.accuracy:.4f} on validation data)")
    if attack_success is None:
        summary += "; backdoor not measured (no --trigger-data)"
    else:
        summary += f"; backdoor gone: attack success {attack_success:.4f} <= {limits.max_attack_success:g}"
    caveats = [c for c in (guard.unbounded_cost(), _unbounded_attack(attack_interval, limits.max_attack_success)) if c]
    return summary + ("; but " + "; ".join(caveats) if caveats else "")


def _unbounded_attack(interval: Interval | None, limit: float) -> str | None:
    """What to tell a user whose triggered data cannot rule out an attack success above the limit."""
    if interval is None or interval.high <= limit + 1e-12:
        return None
    return (f"{interval.samples} triggered samples cannot rule out an attack success of up to {interval.high:.3f} "
            f"(95 %; limit {limit:g}); more triggered data would bound it")
