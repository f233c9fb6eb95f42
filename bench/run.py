"""`make bench`: dropgate against its baselines, measured in the same run on the real local stack.

Each row prints dropgate's figure, the baseline's in the same run, and the ratio
(> 1 means dropgate is faster; for latencies without a baseline the ratio is blank).
Results go to bench/results/latest.json and bench/results/latest.md with the
machine's description. `--quick` makes a run of a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import coldstart, expiry, load, scan, signing, verdict
from dropgate_local.stack import LocalStack, StackPorts

RESULTS = Path(__file__).with_name("results")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next((int(line.split()[1]) // 1024 // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0)
    return f"{os.cpu_count()} cores ({cpu}), {memory} GiB RAM, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="dropgate benchmarks against same-run baselines")
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes")
    parser.add_argument("--users", type=int, help="concurrent uploaders (default 400; quick 40)")
    parser.add_argument("--size-mb", type=int, help="file size per uploader in MB (default 25)")
    parser.add_argument("--rounds", type=int, help="repetitions of the small measurements (default 5; quick 2)")
    args = parser.parse_args(argv)
    users = args.users or (40 if args.quick else 400)
    size_mb = args.size_mb or 25
    rounds = args.rounds or (2 if args.quick else 5)

    started = time.monotonic()
    rows: list[dict] = []
    signed = signing.measure(rounds=10 if args.quick else 30)
    rows.append(signed)
    with tempfile.TemporaryDirectory(prefix="dropgate-bench-") as tmp:
        stack = LocalStack(Path(tmp), StackPorts.allocate())
        try:
            stack.start_postgres()
            stack.start_clamd(try_update=False)
            stack.start_storage(webhook=False)
            rows += load.measure(stack, users=users, size_mb=size_mb)
            rows += expiry.measure(stack, files=1000 if args.quick else 5000)
            rows += coldstart.measure(stack, rounds=rounds)
        finally:
            stack.stop()
    with tempfile.TemporaryDirectory(prefix="dropgate-bench-") as tmp:
        rows.append(scan.row(scan.run(LocalStack(Path(tmp), StackPorts.allocate()), Path(tmp),
                                      (50 if args.quick else 200) * 1024 * 1024, 2 if args.quick else 3)))
    with tempfile.TemporaryDirectory(prefix="dropgate-bench-") as tmp:
        stack = LocalStack(Path(tmp), StackPorts.allocate())
        try:
            rows += verdict.measure(stack, sizes_mib=[25, 200] if args.quick else [25, 1024])
        finally:
            stack.stop()
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
              "settings": {"users": users, "size_mb": size_mb, "rounds": rounds, "quick": args.quick},
              "seconds": round(time.monotonic() - started), "rows": rows}
    table = markdown(report)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (RESULTS / "latest.md").write_text(table)
    return 0


def markdown(report: dict) -> str:
    lines = [f"dropgate benchmarks, {report['date']}, {report['machine']}",
             f"settings: {report['settings']}, took {report['seconds']} s", "",
             "| measurement | dropgate | baseline (same run) | ratio |", "| --- | --- | --- | --- |"]
    for row in report["rows"]:
        ratio = "" if row.get("ratio") is None else f"{row['ratio']:.2f}×"
        lines.append(f"| {row['name']} | {row['dropgate']} | {row['baseline']} | {ratio} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
