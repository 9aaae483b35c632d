"""Reproduce the paper's Table 1 and Fig. 6 on our six zoo models, through fp-onnx's public API.

For each task (faces / speech / traffic signs) and attack (BadNets baseline / pruning-aware),
the backdoored ONNX model is built with `python -m fp_onnx.models.build` if it is not there
yet (into out/zoo/, git-ignored: faces and GTSRB data must not be committed), then defended
with `fp_onnx.defense.fine_prune(..., baselines=True)`, which measures None / Pruning /
Fine-Tuning / Fine-Pruning. The prune point is the paper's: conv3 for DeepID, conv5 for the
AlexNet-style speech net and the traffic-sign CNN.

    python bench/reproduce_paper.py [--zoo out/zoo] [--tasks faces speech traffic] [--epochs N] [--device cpu]

Writes docs/results.md (our Table 1 next to the paper's, goals met or missed, timings),
docs/figures/prune_curve_<task>_<attack>.png (Fig. 6) and bench/results/reproduce_paper.json.
Needs ../shared/data (see models/datasets.py); it is a benchmark, not a test.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from fp_onnx.data import open_dataset
from fp_onnx.defense import DefenseConfig, fine_prune
from fp_onnx.finetune import FineTuneConfig
from fp_onnx.loading import load_model
from fp_onnx.metrics import AttackSpec
from fp_onnx.prune import StopRule
from fp_onnx.prune_point import resolve_prune_point
from fp_onnx.report import library_versions
from fp_onnx.reporting import plot_outcome_curve
from fp_onnx.runtime import RuntimeOptions

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ("badnets", "pruning-aware")
TASK_NAMES = {"faces": "Face recognition (DeepID, 21 identities)", "speech": "Speech recognition (AlexNet, FSDD)",
              "traffic": "Traffic signs (CNN, GTSRB 3 classes)"}
PAPER_TABLE1 = {  # (cl, bd) for None / Fine-Tuning / Fine-Pruning, paper Table 1
    ("faces", "badnets"): [(0.978, 1.000), (0.978, 0.000), (0.978, 0.000)],
    ("speech", "badnets"): [(0.990, 0.770), (0.990, 0.435), (0.988, 0.020)],
    ("traffic", "badnets"): [(0.849, 0.991), (0.857, 0.921), (0.873, 0.288)],
    ("faces", "pruning-aware"): [(0.974, 0.998), (0.978, 0.000), (0.977, 0.000)],
    ("speech", "pruning-aware"): [(0.988, 0.780), (0.988, 0.520), (0.986, 0.000)],
    ("traffic", "pruning-aware"): [(0.820, 0.899), (0.872, 0.419), (0.874, 0.366)],
}
PAPER_PRUNING_BASELINE = {"faces": 0.0, "speech": 0.13, "traffic": 0.35}  # attack success after pruning, §3.1


def ensure_model(zoo: Path, task: str, attack: str, epochs: int | None, build: bool) -> tuple[Path | None, float]:
    """The zoo model's folder (built now if missing and `build`), and the seconds building took."""
    folder = zoo / f"{task}_{attack.replace('-', '_')}"
    if (folder / "model_card.json").exists():
        return folder, 0.0
    if not build:
        return None, 0.0
    started = time.perf_counter()
    command = [sys.executable, "-m", "fp_onnx.models.build", "--task", task, "--attack", attack, "--out", str(folder),
               "--clean-baseline"]
    if epochs:
        command += ["--epochs", str(epochs)]
    subprocess.run(command, check=True)
    return folder, time.perf_counter() - started


def attack_of(card: dict) -> AttackSpec:
    kind = card["attack"]["kind"]
    if kind == "untargeted":
        return AttackSpec("untargeted")
    return AttackSpec("targeted", card["attack"]["target"] if kind == "all_to_one" else None)


def paper_prune_point(model, architecture: dict):
    """The layer the paper prunes: the card's `prune_node`, else its torch module name (a vendor layer name)."""
    return resolve_prune_point(model, architecture.get("prune_node") or architecture["prune_layer"])


def defend(folder: Path, device: str) -> dict:
    card = json.loads((folder / "model_card.json").read_text())
    model = load_model(folder / "model.onnx").model
    point = paper_prune_point(model, card["architecture"])
    config = DefenseConfig(rule=StopRule("threshold", 0.04), finetune=FineTuneConfig(device=device), baselines=True)
    started = time.perf_counter()
    result = fine_prune(model, point, open_dataset(folder / "clean_val.npz"), test=open_dataset(folder / "clean_test.npz"),
                        triggered=open_dataset(folder / "triggered_test.npz"), attack=attack_of(card), config=config,
                        options=RuntimeOptions(device=device))
    return {"card": card, "point": point.label, "result": result, "seconds": time.perf_counter() - started}


def row_text(table: dict, name: str) -> str:
    row = table[name]
    return f"{row.clean_accuracy:.3f} / {row.attack_success:.3f}"


def goals(task: str, attack: str, outcome: dict) -> list[str]:
    """The issue's goals, each marked met or missed with the margin."""
    table, card = outcome["result"].table, outcome["card"]
    notes = []
    none, fp, pruning = table["none"], table["fine-pruning"], table["pruning"]
    if attack == "badnets":
        baseline = card.get("clean_baseline", {}).get("clean_accuracy")
        notes.append(_goal(none.attack_success >= 0.90, f"attack success {none.attack_success:.3f} (goal >= 0.90)"))
        if baseline is not None:
            gap = baseline - none.clean_accuracy
            notes.append(_goal(gap <= 0.02, f"clean accuracy {none.clean_accuracy:.3f} vs clean model {baseline:.3f} "
                                            f"(gap {gap:+.3f}, goal <= 0.02)"))
    if task != "traffic":
        notes.append(_goal(fp.attack_success <= 0.05, f"fine-pruning attack success {fp.attack_success:.3f} (goal <= 0.05)"))
    drop = none.clean_accuracy - fp.clean_accuracy
    notes.append(_goal(drop <= 0.01 + 1e-9, f"fine-pruning clean-accuracy drop {drop:+.3f} (goal <= 0.01)"))
    if attack == "pruning-aware":
        notes.append(_goal(pruning.attack_success >= 0.5 * none.attack_success,
                           f"pruning alone leaves attack success {pruning.attack_success:.3f} of {none.attack_success:.3f} "
                           "(paper: pruning fails against this attack)"))
    return notes


def _goal(met: bool, text: str) -> str:
    return ("met: " if met else "MISSED: ") + text


def write_results(outcomes: dict, build_seconds: dict, missing: list[str], args) -> None:
    lines = ["# Reproducing the paper's Table 1 and Fig. 6", "",
             "Produced by `python bench/reproduce_paper.py` (numbers below are from the last run; see "
             "`bench/results/reproduce_paper.json`). Each cell is **clean accuracy / attack success rate**, "
             "clean accuracy on the held-out clean test set, attack success on the triggered test set "
             "(targeted: fraction classified as the target; untargeted: 1 - A_backdoor / A_clean). Stop rule: "
             "clean validation accuracy may drop by at most 0.04 (absolute), as in the paper. Defaults of "
             "`fp-onnx fine-prune` otherwise.", "",
             "| task | attack | None | Pruning | Fine-Tuning | Fine-Pruning | paper None | paper Fine-Tuning | paper Fine-Pruning |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (task, attack), outcome in outcomes.items():
        table = outcome["result"].table
        paper = PAPER_TABLE1[task, attack]
        cells = [row_text(table, name) for name in ("none", "pruning", "fine-tuning", "fine-pruning")]
        paper_cells = [f"{cl:.3f} / {bd:.3f}" for cl, bd in paper]
        lines.append(f"| {task} | {attack} | " + " | ".join(cells + paper_cells) + " |")
    lines += ["", "## Goals", ""]
    for (task, attack), outcome in outcomes.items():
        lines.append(f"- **{task}, {attack}** (prune point `{outcome['point']}`, "
                     f"{outcome['result'].prune.channels_pruned}/{outcome['result'].prune.curve.channels} channels "
                     f"pruned): " + "; ".join(goals(task, attack, outcome)))
    lines += ["", "## Prune curves (Fig. 6)", ""]
    for (task, attack) in outcomes:
        lines.append(f"![{task} {attack}](figures/prune_curve_{task}_{attack.replace('-', '_')}.png)")
    lines += ["", "## Cost", "", "| task | attack | build (train) s | defense s (incl. baselines) |", "| --- | --- | --- | --- |"]
    for (task, attack), outcome in outcomes.items():
        lines.append(f"| {task} | {attack} | {build_seconds.get((task, attack), 0):.0f} | {outcome['seconds']:.0f} |")
    if missing:
        lines += ["", "Not run (zoo model not built when this ran): " + "; ".join(missing) + "."]
    lines += ["", f"Machine: {library_versions()['platform']}, device `{args.device}`.", ""]
    (ROOT / "docs" / "results.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=ROOT / "out" / "zoo")
    parser.add_argument("--tasks", nargs="+", choices=list(TASK_NAMES), default=list(TASK_NAMES))
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    parser.add_argument("--epochs", type=int, default=None, help="override the build recipes' epochs")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    parser.add_argument("--no-build", action="store_true", help="skip zoo models that are not built yet")
    args = parser.parse_args(argv)
    figures = ROOT / "docs" / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    outcomes, build_seconds, payload, missing = {}, {}, [], []
    for task in args.tasks:
        for attack in args.attacks:
            folder, seconds = ensure_model(args.zoo, task, attack, args.epochs, not args.no_build)
            if folder is None:
                missing.append(f"{task}, {attack}")
                continue
            build_seconds[task, attack] = seconds or json.loads((folder / "model_card.json").read_text()).get("build_seconds", 0)
            outcome = defend(folder, args.device)
            outcomes[task, attack] = outcome
            plot_outcome_curve(figures / f"prune_curve_{task}_{attack.replace('-', '_')}.png",
                               outcome["result"].prune, f"{TASK_NAMES[task]}, {attack} attack")
            table = outcome["result"].table
            print(f"{task:<8}{attack:<15}" + "  ".join(f"{n}: {row_text(table, n)}" for n in table), flush=True)
            payload.append({"task": task, "attack": attack, "prune_point": outcome["point"],
                            "seconds": outcome["seconds"], "build_seconds": build_seconds[task, attack],
                            "model_card_metrics": outcome["card"]["metrics"],
                            "goals": goals(task, attack, outcome), **outcome["result"].to_dict()})
    write_results(outcomes, build_seconds, missing, args)
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "reproduce_paper.json").write_text(json.dumps({"versions": library_versions(), "runs": payload}, indent=2))
    print(f"wrote {ROOT / 'docs' / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
