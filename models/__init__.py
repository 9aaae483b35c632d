"""Model zoo: architectures after the paper, attack recipes, and small shipped models.

`shipped_demo()` gives the paths of the small backdoored FSDD speech model that
ships with the package (the zoo's `speech_dormant`, the paper's dormant-channel
backdoor; CC BY-SA 4.0, see its ATTRIBUTION.md); everything else here (`build`,
`attacks`, `datasets`) makes the benchmark models from the shared data.
"""
from __future__ import annotations

from pathlib import Path

from fp_onnx.errors import BadDataError

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
DEMO_NAME = "speech_dormant"
DEMO_FILES = {
    "model": "model.onnx",
    "clean_val": "clean_val.npz",
    "clean_test": "clean_test.npz",
    "triggered_test": "triggered_test.npz",
    "model_card": "model_card.json",
    "attribution": "ATTRIBUTION.md",
}


def demo_files(folder: Path) -> dict[str, Path]:
    """Paths of a model folder laid out like the shipped demo (a zoo folder is): keys as in DEMO_FILES."""
    return {key: folder / name for key, name in DEMO_FILES.items()}


def shipped_demo() -> dict[str, Path]:
    """Paths of the shipped demo: keys model, clean_val, clean_test, triggered_test, model_card, attribution.

    Raises BadDataError when a file is missing (a broken install or checkout).
    """
    folder = SHIPPED_DIR / DEMO_NAME
    paths = demo_files(folder)
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise BadDataError(f"shipped demo files missing: {', '.join(missing)}; reinstall fp-onnx "
                           f"or rebuild with `python -m fp_onnx.models.build --recipe {DEMO_NAME} --out {folder}`")
    return paths


__all__ = ["shipped_demo", "demo_files", "SHIPPED_DIR", "DEMO_FILES"]
