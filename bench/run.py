"""`make bench`: dropgate against its baselines, measured in the same run on the real local stack.

Each row prints dropgate's figure, the baseline's in the same run, the ratio, the issue's target
and whether it is met (bench/fair_report.py's LEGEND says how to read them; bench/stats.py how
figures are summarised). Every baseline does the same work as dropgate's path (issue 21): the
same checksums and fresh bytes on the data plane, bytes clamd has not seen for the scans, a
versioned bucket for expiry, every function for cold starts. Results go to
bench/results/latest.json and bench/results/latest.md with the machine, the versions and the
command, with a chart of the ratios and targets beside them (latest.svg, bench/chart.py), and to a
dated copy that is kept; the README's table is regenerated from the newest kept
run (bench/readme.py). The report ends with the sizing model (bench/sizing.py, docs/sizing.md),
built from costs this run measured. `--quick` makes a run of about five minutes with fewer rounds
and smaller sizes, and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from dropgate_local.stack import LocalStack, StackPorts

from bench import (
    chart,
    coldstart,
    expiry,
    fair_report,
    load,
    readme,
    scan,
    signing,
    sizing,
    verdict,
)
from bench.peers import companion, tus

RESULTS = Path(__file__).with_name("results")
MIB = 1024 * 1024
T = TypeVar("T")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="dropgate benchmarks against same-run baselines")
    parser.add_argument("--quick", action="store_true", help="small sizes and 3 rounds: a few minutes")
    parser.add_argument("--users", type=int, help="uploaders (default 400; quick 24)")
    parser.add_argument("--size-mb", type=int, help="file size per uploader in MB (default 25)")
    parser.add_argument("--rounds", type=int, help="rounds of every measurement (default 5; quick 3)")
    parser.add_argument("--spread-rounds", type=int, help="rounds of the 30 s arrivals load (default: --rounds; "
                        "quick 1)")
    args = parser.parse_args(argv)
    rounds_given = args.rounds
    args.users = args.users or (24 if args.quick else 400)
    args.size_mb = args.size_mb or 25
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.spread_rounds = args.spread_rounds or (1 if args.quick else args.rounds)
    # The 40-user uploads are quick's longest part: 2 rounds there (one ABBA: dropgate-raw, raw-dropgate).
    args.load_rounds = 2 if args.quick and rounds_given is None else args.rounds
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    started, report_machine, phases = time.monotonic(), fair_report.machine(), {}
    rows = [_phase(phases, "signing", lambda: signing.measure(rounds=10 if args.quick else 30))]
    found, stack_rows, evidence = _phase(phases, "load, expiry, cold start", lambda: _with_stack(
        lambda stack: _control_and_storage(stack, args, phases)))
    rows += stack_rows
    rows += _phase(phases, "scan", lambda: _scan(args))
    verdict_rows, pipeline = _phase(phases, "time to verdict", lambda: _with_stack(lambda stack: verdict.measure(
        stack, sizes_mib=[25, 50] if args.quick else [25, 1024], rounds=args.rounds)))
    rows += verdict_rows
    model = None
    if pipeline is not None:
        model = sizing.model(evidence["control"], pipeline, os.cpu_count() or 1, evidence["at_once_mb_s"])
        rows.append(sizing.check_row(model, evidence["users"], args.size_mb))
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": report_machine,
              "command": fair_report.command(argv), "versions": found,
              "settings": {"users": args.users, "size_mb": args.size_mb, "rounds": args.rounds,
                           "load_rounds": args.load_rounds, "spread_rounds": args.spread_rounds,
                           "quick": args.quick},
              "seconds": round(time.monotonic() - started), "phase_seconds": phases, "rows": rows,
              "sizing": model}
    write(report)
    return 0


def _phase(phases: dict, name: str, work: Callable[[], T]) -> T:
    """Run one part of the benchmark, saying on stderr how long it took (a full run is long)."""
    print(f"[bench] {name}...", file=sys.stderr, flush=True)
    started = time.monotonic()
    result = work()
    phases[name] = round(time.monotonic() - started)
    print(f"[bench] {name}: {phases[name]} s", file=sys.stderr, flush=True)
    return result


def _scan(args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="dropgate-bench-") as tmp:
        result = scan.run(LocalStack(Path(tmp), StackPorts.allocate()), Path(tmp),
                          (25 if args.quick else 1024) * MIB, args.rounds)
    return scan.rows(result)


def _with_stack(work):
    """A fresh stack on free ports in a temporary folder, always stopped."""
    with tempfile.TemporaryDirectory(prefix="dropgate-bench-") as tmp:
        stack = LocalStack(Path(tmp), StackPorts.allocate())
        try:
            return work(stack)
        finally:
            stack.stop()


def _control_and_storage(stack: LocalStack, args: argparse.Namespace,
                         phases: dict) -> tuple[dict, list[dict], dict]:
    """Load, expiry and cold starts share one stack (PostgreSQL, clamd, storage; no webhook)."""
    stack.start_postgres()
    stack.start_clamd(try_update=False)
    stack.start_storage(webhook=False)
    found = fair_report.versions(stack)
    rows, evidence = _phase(phases, "load", lambda: load.measure(
        stack, users=args.users, size_mb=args.size_mb, rounds=args.load_rounds, spread_rounds=args.spread_rounds))
    rows += _phase(phases, "expiry", lambda: expiry.measure(stack, files=200 if args.quick else 2000,
                                                             rounds=args.rounds))
    rows += _phase(phases, "cold start", lambda: coldstart.measure(stack, rounds=2 if args.quick else args.rounds))
    # The peers (installed from npm into bench/peers/node_modules) against the same SeaweedFS.
    rows += _phase(phases, "peer: Uppy Companion", lambda: _peer("Uppy Companion", lambda: companion.measure(
        stack, quick=args.quick)))
    rows += _phase(phases, "peer: tus", lambda: _peer("tus", lambda: tus.measure(
        stack, quick=args.quick, users=args.users, size_mb=args.size_mb)))
    return found, rows, evidence


def _peer(name: str, work: Callable[[], list[dict]]) -> list[dict]:
    """A peer that cannot be installed or started (npm registry unreachable) is a row saying so, not a
    lost run: the rest of the table was measured already."""
    try:
        return work()
    except Exception as exc:  # noqa: BLE001 - reported in the table, with the reason
        print(f"[bench] peer {name} failed: {exc!r}", file=sys.stderr, flush=True)
        return [{"name": f"peer {name}", "dropgate": "FAILED", "baseline": repr(exc)[:200], "ratio": None,
                 "target": None, "met": False}]


def write(report: dict) -> None:
    """latest.{json,md,svg} (ignored by git), a dated copy to keep: bench/results/<date>[-quick].{json,md,svg}
    (the .svg is the chart of bench/chart.py), and the README's table and chart regenerated from the newest kept
    full run (a quick run's only while no full run is kept)."""
    table = fair_report.markdown(report)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    dated = report["date"][:10] + ("-quick" if report["settings"]["quick"] else "")
    for name in ("latest", dated):
        (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        (RESULTS / f"{name}.md").write_text(table)
        chart.write(report, RESULTS / f"{name}.svg")  # the same rows as a picture (bench/chart.py)
    readme.main([])


if __name__ == "__main__":
    sys.exit(main())
