"""Run one fuzz case as a real `fp-onnx` process and classify what happened.

The process runs in the case's folder with a wall-clock timeout and an
address-space cap (RLIMIT_AS), HOME/TMPDIR/MPLCONFIGDIR pointed into the case's
`tmp`, so anything it writes on purpose lands in `out` or `tmp`. Before and after, the
folders it must not touch are snapshotted (the case's inputs, the seeds, the
outside folder with its decoys); any difference is an escape, and so is the
sentinel a pickle payload would create.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

import onnx


class Outcome(str, Enum):
    OK = "ok"
    CLEAN_ERROR = "clean_error"
    """Exit 2-6 with exactly one `error: ...` line on stderr."""
    REJECTED_RESULT = "rejected_result"
    """Exit 7 or 8 with one `error:` line: the defense ran, but the written model failed the guard or the
    backdoor remains; it is kept as `<name>.rejected` (the README's verdict codes, not a failure)."""
    INTERNAL_ERROR = "internal_error"
    """Exit 70: an exception fp-onnx did not expect (a bug)."""
    TRACEBACK = "traceback"
    HANG = "hang"
    """Still running at the timeout."""
    CRASH = "crash"
    """Killed by a signal (abort, segfault, out of memory) or an exit code outside the documented ones."""
    ESCAPE = "escape"
    """A file written or changed outside the case's `out`/`tmp`, or a pickle payload executed."""
    PARTIAL_OUTPUT = "partial_output"
    """A temporary file left behind, an unreadable output, or files left by a failing command."""
    STRAY_OUTPUT = "stray_output"
    """Anything on stderr besides our own `error:`/`note:` lines (onnxruntime logs, Python warnings)."""
    REFUSED_VALID = "refused_valid"
    """A valid input that did not succeed."""


FAILURES = frozenset(Outcome) - {Outcome.OK, Outcome.CLEAN_ERROR, Outcome.REJECTED_RESULT}
DOCUMENTED_ERRORS = range(2, 9)
VERDICT_CODES = (7, 8)
TIMEOUTS = {"layers": 60, "profile": 180, "prune": 240, "finetune": 300, "fine-prune": 420}
MEMORY_CAP = 8 * 1024**3
"""Address-space cap per case; the CLI plans its memory within it (fp_onnx.memory reads RLIMIT_AS)."""


@dataclass
class Result:
    index: int
    mutator: str
    detail: str
    args: list[str]
    outcome: str
    exit_code: int | None
    last_line: str
    seconds: float
    why: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def fp_onnx_executable() -> str:
    """The console script of the environment running the tests (falls back to PATH)."""
    local = Path(sys.executable).parent / "fp-onnx"
    return str(local) if local.exists() else (shutil.which("fp-onnx") or "fp-onnx")


def run_case(case, folder: Path, watched: list[Path], *, timeout_scale: float = 1.0,
             memory_cap: int = MEMORY_CAP) -> Result:
    """Run `case` (files already generated in `folder`) and classify it."""
    tmp = folder / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    before = snapshot([*watched, folder], ignore=[folder / "out", tmp])
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp), "TMPDIR": str(tmp),
           "MPLCONFIGDIR": str(tmp / "mpl"), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "LANG": "C.UTF-8"}
    timeout = TIMEOUTS.get(case.command, 120) * timeout_scale
    start = time.monotonic()
    process = subprocess.Popen([fp_onnx_executable(), *case.args], cwd=folder, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, preexec_fn=lambda: _limit_memory(memory_cap),
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        code, hung = process.returncode, False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        code, hung = None, True
    seconds = time.monotonic() - start
    after = snapshot([*watched, folder], ignore=[folder / "out", tmp])
    sentinels = [path for root in watched for path in root.glob("PICKLE_RAN_*")]
    outcome, why = classify(case, code, hung, stdout.decode(errors="replace"), stderr.decode(errors="replace"),
                            before, after, sentinels, folder)
    lines = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    return Result(case.index, case.mutator, case.detail, case.args, outcome.value, code,
                  lines[-1][:300] if lines else "", round(seconds, 2), why)


def _limit_memory(cap: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def snapshot(roots: list[Path], ignore: list[Path]) -> dict[str, tuple]:
    """{path: (kind, size, mtime_ns)} of everything under `roots`, links not followed."""
    entries: dict[str, tuple] = {}
    skipped = {str(path) for path in ignore}
    for root in roots:
        if not os.path.lexists(root):
            continue
        for directory, subdirs, files in os.walk(root, followlinks=False):
            subdirs[:] = [d for d in subdirs if os.path.join(directory, d) not in skipped]
            for name in [*files, *subdirs]:
                path = os.path.join(directory, name)
                info = os.lstat(path)
                entries[path] = (info.st_mode >> 12, info.st_size, info.st_mtime_ns)
    return entries


def classify(case, code: int | None, hung: bool, stdout: str, stderr: str, before: dict, after: dict,
             sentinels: list[Path], folder: Path) -> tuple[Outcome, str]:
    """The outcome of one run (the worst that applies) and a short reason."""
    if sentinels:
        return Outcome.ESCAPE, f"pickle executed: {sentinels[0]}"
    changed = sorted(set(before.items()) ^ set(after.items()))
    if changed:
        return Outcome.ESCAPE, f"changed outside the case: {changed[0][0]}"
    if hung:
        return Outcome.HANG, "timeout"
    if "Traceback (most recent call last)" in stderr + stdout:
        return Outcome.TRACEBACK, ""
    if code == 70:
        return Outcome.INTERNAL_ERROR, ""
    if code is None or code < 0 or (code != 0 and code not in DOCUMENTED_ERRORS):
        return Outcome.CRASH, f"exit code {code}"
    partial = partial_outputs(folder / "out", succeeded=code == 0 or code in VERDICT_CODES)
    if partial:
        return Outcome.PARTIAL_OUTPUT, partial
    lines = [line for line in stderr.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith(("error: ", "note: "))]
    errors = [line for line in lines if line.startswith("error: ")]
    if len(ours) != len(lines) or (code != 0 and (len(errors) != 1 or lines[-1] != errors[0])) or (
            code == 0 and errors):
        return Outcome.STRAY_OUTPUT, next((line for line in lines if line not in ours), lines[-1] if lines else "")[:200]
    if case.expect_ok and code not in (0, *VERDICT_CODES):
        return Outcome.REFUSED_VALID, errors[0][:200]
    if code in VERDICT_CODES:
        return Outcome.REJECTED_RESULT, ""
    return (Outcome.OK, "") if code == 0 else (Outcome.CLEAN_ERROR, "")


def partial_outputs(out: Path, succeeded: bool) -> str:
    """Why the output folder is not all-or-nothing complete ('' when it is)."""
    if not out.exists():
        return ""
    files = [p for p in out.rglob("*") if p.is_file() or p.is_symlink()]
    leftovers = [p for p in files if p.name.endswith(".tmp")]
    if leftovers:
        return f"temporary file left: {leftovers[0].name}"
    if not succeeded:
        return f"a failing command left {files[0].relative_to(out)}" if files else ""
    for path in files:
        problem = _incomplete(path)
        if problem:
            return f"{path.relative_to(out)}: {problem}"
    return ""


def _incomplete(path: Path) -> str:
    data = path.read_bytes()
    try:
        if path.suffix == ".json":
            json.loads(data)
        elif path.suffix == ".png" and not (data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82")):
            return "not a complete PNG"
        elif path.suffix == ".html" and b"</html>" not in data[-200:].lower():
            return "HTML cut short"
        elif path.suffix == ".onnx":
            onnx.checker.check_model(onnx.load(str(path)))
    except Exception as exc:  # noqa: BLE001 - any failure to read back means the file is broken
        return f"unreadable ({exc.__class__.__name__}: {str(exc)[:120]})"
    return ""
