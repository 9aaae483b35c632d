"""The fuzz harness (tests/fuzzing): a small seeded sample of hostile cases on every CI run, the valid
seeds through every analysing command, and the classifier itself (so that "no failures" means something).

The large campaign is `python bench/fuzz.py --n 1000` (counts in docs/robustness.md).
"""
from __future__ import annotations

import hashlib
import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from fuzzing import FAILURES, Outcome, run_campaign
from fuzzing.campaign import prepare
from fuzzing.cases import Case, CaseContext, make_case
from fuzzing.data_mutators import PicklePayload
from fuzzing.harness import classify, run_case, snapshot

CI_SAMPLE = 14
"""Cases per CI run: about a minute of CPU on two cores."""


@pytest.fixture(scope="module")
def campaign_root(tmp_path_factory, zoo_path) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    prepare(root, dynamo_model=zoo_path("alexnet", "dynamo"))
    return root


def test_seeded_sample_has_no_failures(campaign_root):
    result = run_campaign(CI_SAMPLE, seed=2026, root=campaign_root, workers=2)
    assert len(result.results) == CI_SAMPLE
    assert not result.failures, [(r.index, r.mutator, r.detail, r.outcome, r.why or r.last_line)
                                 for r in result.failures]


@pytest.mark.parametrize("command", ["prune"])
def test_every_seed_is_accepted(campaign_root, command):
    """No valid vendor model refused: each seed style through the command that exercises the most."""
    seeds, outside = prepare(campaign_root)
    for name in sorted(seeds):
        folder = campaign_root / "valid" / name
        folder.mkdir(parents=True)
        ctx = CaseContext(np.random.default_rng(0), seeds, folder, outside, seed_name=name)
        case = Case("valid_seed", ctx.command_args(command, ctx.copy_seed()), name, expect_ok=True)
        result = run_case(case, folder, [campaign_root / "seeds", outside])
        assert result.outcome in (Outcome.OK.value, Outcome.REJECTED_RESULT.value), (name, result)


def _file_digests(folder: Path) -> dict[str, str]:
    """Content digests, blind to what legitimately differs: zip timestamps and the case folder's own name."""
    def content(path: Path) -> bytes:
        if zipfile.is_zipfile(path):
            try:
                with zipfile.ZipFile(path) as archive:
                    return b"".join(name.encode() + archive.read(name) for name in sorted(archive.namelist()))
            except (zipfile.BadZipFile, RuntimeError, OSError, ValueError, zlib.error):  # deliberately corrupted
                return str(path.stat().st_size).encode()
        return path.read_bytes()

    return {str(p.relative_to(folder)): hashlib.sha256(content(p).replace(folder.name.encode(), b"")).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def test_cases_are_deterministic(campaign_root):
    seeds, outside = prepare(campaign_root)
    for index in range(8):
        a, b = campaign_root / "det" / f"case-aa-{index}", campaign_root / "det" / f"case-bb-{index}"
        case_a = make_case(7, index, seeds, a, outside)
        case_b = make_case(7, index, seeds, b, outside)
        assert (case_a.mutator, case_a.detail) == (case_b.mutator, case_b.detail)
        assert [arg.replace(str(a), "") for arg in case_a.args] == [arg.replace(str(b), "") for arg in case_b.args]
        assert _file_digests(a) == _file_digests(b)


def test_the_pickle_sentinel_appears_when_a_payload_is_unpickled(tmp_path):
    """The sentinel the campaign checks for is real: unpickling the payload creates it."""
    sentinel = tmp_path / "PICKLE_RAN_x"
    pickle.loads(pickle.dumps(PicklePayload(sentinel)))  # noqa: S301 - the point of the test
    assert sentinel.exists()


def _classified(tmp_path, *, code=0, hung=False, stderr="", out_files=(), change_outside=False, sentinel=False,
                expect_ok=False):
    case = Case("m", ["profile"], expect_ok=expect_ok)
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.bin").write_bytes(b"x")
    before = snapshot([outside], [])
    if change_outside:
        (outside / "secret.bin").write_bytes(b"changed!")
    if sentinel:
        (outside / "PICKLE_RAN_1").write_text("")
    for name, content in out_files:
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "out" / name).write_bytes(content)
    after = snapshot([outside], [])
    return classify(case, code, hung, "", stderr, before, after, list(outside.glob("PICKLE_RAN_*")), tmp_path)[0]


@pytest.mark.parametrize("kwargs,expected", [
    ({}, Outcome.OK),
    ({"code": 6, "stderr": "error: bad data\n"}, Outcome.CLEAN_ERROR),
    ({"code": 0, "stderr": "note: one sample at a time\n"}, Outcome.OK),
    ({"code": 70, "stderr": "error: internal error: boom\n"}, Outcome.INTERNAL_ERROR),
    ({"code": 1, "stderr": "Traceback (most recent call last):\n  ...\nValueError\n"}, Outcome.TRACEBACK),
    ({"code": None, "hung": True}, Outcome.HANG),
    ({"code": -9}, Outcome.CRASH),
    ({"code": 0, "change_outside": True}, Outcome.ESCAPE),
    ({"code": 4, "stderr": "error: pickle\n", "sentinel": True}, Outcome.ESCAPE),
    ({"code": 3, "stderr": "error: x\n", "out_files": [(".pruned.onnx.abc.tmp", b"")]}, Outcome.PARTIAL_OUTPUT),
    ({"code": 3, "stderr": "error: x\n", "out_files": [("profile.json", b"{}")]}, Outcome.PARTIAL_OUTPUT),
    ({"code": 0, "out_files": [("profile.json", b'{"cut')]}, Outcome.PARTIAL_OUTPUT),
    ({"code": 0, "out_files": [("plot.png", b"\x89PNG truncated")]}, Outcome.PARTIAL_OUTPUT),
    ({"code": 3, "stderr": "\x1b[1;31m[E:onnxruntime:, x] boom\x1b[m\nerror: y\n"}, Outcome.STRAY_OUTPUT),
    ({"code": 3, "stderr": "error: y\nerror: z\n"}, Outcome.STRAY_OUTPUT),
    ({"code": 3, "stderr": "error: valid model refused\n", "expect_ok": True}, Outcome.REFUSED_VALID),
    ({"code": 7, "stderr": "error: pruned.onnx rejected\n", "out_files": [("pruned.onnx.rejected", b"x")],
      "expect_ok": True}, Outcome.REJECTED_RESULT),
])
def test_classifier(tmp_path, kwargs, expected):
    assert _classified(tmp_path, **kwargs) == expected
    assert (expected in FAILURES) == (expected not in (Outcome.OK, Outcome.CLEAN_ERROR, Outcome.REJECTED_RESULT))


def test_harness_runs_the_real_cli(tmp_path):
    """A smoke check of the subprocess path itself: `fp-onnx --version` in a case folder is OK."""
    case = Case("smoke", ["--version"])
    result = run_case(case, tmp_path, [])
    assert result.outcome == Outcome.OK.value and result.exit_code == 0, result
