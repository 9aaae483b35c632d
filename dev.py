"""Set-up-free entry point: `python3 dev.py demo` or `python3 dev.py test`.

Why a Python script and not a Makefile: a fresh machine is only promised Python.
It creates `.venv` (stdlib venv), installs the project editable with the pinned
development constraints, then runs the requested job inside that environment.
Re-running is cheap: the install is skipped while pyproject.toml and the
constraints are unchanged.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".fp-onnx-installed"
INSTALL_INPUTS = [ROOT / "pyproject.toml", ROOT / ".ci" / "constraints.txt"]


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for path in INSTALL_INPUTS:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_environment() -> None:
    """Create the venv and install the project unless it is already current."""
    if STAMP.exists() and STAMP.read_text() == _fingerprint():
        return
    if not (BIN / "python").exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing fp-onnx and its dependencies (first run only)", flush=True)
    subprocess.run(
        [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-c", str(ROOT / ".ci" / "constraints.txt"), "-e", f"{ROOT}[test,hdf5]"],
        check=True,
    )
    STAMP.write_text(_fingerprint())


def main(argv: list[str]) -> int:
    jobs = {
        "demo": [str(BIN / "fp-onnx"), "demo", *argv[1:]],
        "test": [str(BIN / "python"), "-m", "pytest", "-q", *argv[1:]],
        "setup": None,
    }
    if not argv or argv[0] not in jobs:
        print("usage: python3 dev.py demo|test|setup [extra arguments]", file=sys.stderr)
        return 2
    ensure_environment()
    command = jobs[argv[0]]
    if command is None:
        return 0
    return subprocess.run(command, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
