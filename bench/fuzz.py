"""Fuzz the fp-onnx command line with generated hostile inputs and count the outcomes.

    python bench/fuzz.py --n 1000 --seed 0 --workers 2

Cases come from `tests/fuzzing` (the same generator the test suite samples from):
case i of seed s is always the same case, so a run can be split into chunks
(`--start`) and a failure reproduced alone (`--start i --n 1 --keep-failures`).
Every case runs `fp-onnx` in a subprocess with a timeout and an address-space cap
and is classified as ok, clean error, internal error, traceback, hang, crash,
escape, partial output, stray output (foreign lines on stderr) or refused valid
input. Prints a table; writes the counts, a per-mutator breakdown and every
failure to bench/results/fuzz.json (merged with the chunks already there for the
same seed when --merge is given).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fuzzing import FAILURES, Outcome, run_campaign  # noqa: E402
from fuzzing.harness import Result  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="cases to run")
    parser.add_argument("--seed", type=int, default=0, help="campaign seed")
    parser.add_argument("--start", type=int, default=0, help="first case index (to run a campaign in chunks)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--only", default=None, help="run a single mutator")
    parser.add_argument("--work-dir", type=Path, default=None, help="campaign folder (default: a temporary one)")
    parser.add_argument("--keep-failures", action="store_true", help="keep failing case folders in WORK/failures")
    parser.add_argument("--merge", action="store_true", help="add to the results already in --out for this seed")
    parser.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every per-command timeout")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fuzz.json")
    args = parser.parse_args()

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="fp-onnx-fuzz-"))
    started = time.time()
    done = [0]

    def progress(result: Result) -> None:
        done[0] += 1
        marker = "!! " if result.outcome in {o.value for o in FAILURES} else ""
        print(f"[{done[0]}/{args.n}] #{result.index} {result.mutator:<18} {marker}{result.outcome:<15} "
              f"{result.seconds:6.1f}s {result.last_line[:90]}", file=sys.stderr, flush=True)

    campaign = run_campaign(args.n, args.seed, work, workers=args.workers, start=args.start,
                            keep_failures=args.keep_failures, only=args.only, timeout_scale=args.timeout_scale,
                            progress=progress)
    results = [r.to_dict() for r in campaign.results]
    failures = [r for r in results if r["outcome"] in {o.value for o in FAILURES}]
    rows = [[r["index"], r["mutator"], r["args"][0], r["outcome"], r["exit_code"], r["seconds"]] for r in results]
    seconds = time.time() - started
    if args.merge and args.out.exists():
        previous = json.loads(args.out.read_text())
        if previous.get("seed") == args.seed:
            seen = {row[0] for row in rows}
            rows += [row for row in previous.get("cases_run", []) if row[0] not in seen]
            failures += [f for f in previous.get("failures", []) if f["index"] not in seen]
            seconds += previous.get("seconds", 0)
    report = summarise(rows, failures, args.seed, seconds, args.workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_json(report))
    print_table(report)
    print(f"wrote {args.out} (work folder {work})")
    return 1 if report["failing_cases"] else 0


ROW_FIELDS = ["index", "mutator", "command", "outcome", "exit_code", "seconds"]


def summarise(rows: list[list], failures: list[dict], seed: int, seconds: float, workers: int) -> dict:
    """Counts overall, per mutator and per command, every failure in full, and one compact row per case."""
    rows = sorted(rows)
    outcomes = [o.value for o in Outcome]
    counts = {outcome: sum(row[3] == outcome for row in rows) for outcome in outcomes}
    by_mutator: dict[str, dict[str, int]] = {}
    by_command: dict[str, dict[str, int]] = {}
    for _, mutator, command, outcome, *_ in rows:
        for table, key in ((by_mutator, mutator), (by_command, command)):
            table.setdefault(key, {})[outcome] = table.setdefault(key, {}).get(outcome, 0) + 1
    return {"seed": seed, "cases": len(rows), "counts": counts, "failing_cases": len(failures),
            "by_mutator": dict(sorted(by_mutator.items())), "by_command": dict(sorted(by_command.items())),
            "seconds": round(seconds, 1), "workers": workers,
            "command": f"python bench/fuzz.py --n {len(rows)} --seed {seed}",
            "failures": sorted(failures, key=lambda f: f["index"]), "row_fields": ROW_FIELDS, "cases_run": rows}


def to_json(report: dict) -> str:
    """Indented JSON, with one line per case row (a thousand cases stay a thousand lines)."""
    head = {key: value for key, value in report.items() if key != "cases_run"}
    rows = ",\n".join(f"    {json.dumps(row)}" for row in report["cases_run"])
    return json.dumps(head, indent=2)[:-2] + f',\n  "cases_run": [\n{rows}\n  ]\n}}\n'


def print_table(report: dict) -> None:
    outcomes = [o.value for o in Outcome]
    print(f"\nfuzz campaign seed {report['seed']}: {report['cases']} cases")
    print(f"{'outcome':<16}{'cases':>8}")
    for outcome in outcomes:
        flag = "  <- failure" if outcome in {o.value for o in FAILURES} and report["counts"][outcome] else ""
        print(f"{outcome:<16}{report['counts'][outcome]:>8}{flag}")
    print(f"\n{'mutator':<20}" + "".join(f"{o[:12]:>13}" for o in outcomes))
    for name, row in report["by_mutator"].items():
        print(f"{name:<20}" + "".join(f"{row.get(o, 0):>13}" for o in outcomes))
    print(f"\n{'command':<20}" + "".join(f"{o[:12]:>13}" for o in outcomes))
    for name, row in report["by_command"].items():
        print(f"{name:<20}" + "".join(f"{row.get(o, 0):>13}" for o in outcomes))
    for failure in report["failures"][:20]:
        print(f"  #{failure['index']} {failure['mutator']} ({failure['detail']}): {failure['outcome']} "
              f"{failure['why'] or failure['last_line']}")


if __name__ == "__main__":
    sys.exit(main())
