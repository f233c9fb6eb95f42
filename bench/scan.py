"""Scan throughput: dropgate's scan function against clamd scanning the same bytes from a local file.

Starts the real pieces (PostgreSQL, SeaweedFS, clamd, the scan function) on free
ports in a temporary folder, stores one object of --size MiB, and measures in
the same run:
  dropgate   object-created CloudEvent delivered to the scan function -> verdict reply
             (storage read + INSTREAM + SHA-256 + type sniff + verdict write + tagging)
  baseline   clamd's SCAN of the same bytes written to a local file (clamd reads the disk itself)
Prints MB/s for both and the ratio, and the scan worker's peak RSS.
Run: `make bench-scan` or `.venv/bin/python -m bench.scan [--size 200] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import clamd
import psycopg
from cloudevents.conversion import to_binary

from dropgate_local.processes import PeakRss, free_port, serving_worker
from dropgate_local.stack import LocalStack, StackPorts
from events.types import ObjectCreated
from shared.platform.storage import create_s3_client

MIB = 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=200, help="object size in MiB (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each (default 3)")
    parser.add_argument("--quick", action="store_true", help="50 MiB, 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.rounds = 50, 2

    with tempfile.TemporaryDirectory(prefix="dropgate-bench-") as tmp:
        result = run(LocalStack(Path(tmp), StackPorts.allocate()), Path(tmp), args.size * MIB, args.rounds)
    print(f"{'benchmark':<34}{'dropgate':>14}{'baseline':>22}{'ratio':>8}")
    print(f"{'scan throughput, ' + str(args.size) + ' MiB object':<34}{result['dropgate_mb_s']:>9.1f} MB/s"
          f"{result['clamd_local_file_mb_s']:>13.1f} MB/s (clamd SCAN file){result['ratio']:>6.2f}")
    print(f"scan worker peak RSS {result['peak_rss_mib']:.1f} MiB (baseline {result['baseline_rss_mib']:.1f} MiB)")
    print(json.dumps(result))
    return 0


def row(result: dict) -> dict:
    """The scan result as a row of bench/run.py's table."""
    return {"name": f"scan throughput, {result['size_mib']} MiB object (peak RSS {result['peak_rss_mib']} MiB)",
            "dropgate": f"{result['dropgate_mb_s']:.0f} MB/s",
            "baseline": f"{result['clamd_local_file_mb_s']:.0f} MB/s (clamd SCAN of a local file)",
            "ratio": result["ratio"], "values": result}


def run(stack: LocalStack, tmp: Path, size: int, rounds: int) -> dict:
    """Starts the pieces it needs on `stack` and stops them."""
    try:
        return _run(stack, tmp, size, rounds)
    finally:
        stack.stop()


def _run(stack: LocalStack, tmp: Path, size: int, rounds: int) -> dict:
    database_url = stack.start_postgres()
    stack.start_clamd(try_update=False)
    stack.start_storage(webhook=False)
    storage = stack.storage_settings()
    port = free_port()
    stack.start_function("scan", port=port, label="scan-bench")
    s3 = create_s3_client(storage)

    local_file = tmp / "object.bin"
    with local_file.open("wb") as out:
        block = os.urandom(MIB)
        for _ in range(size // MIB):
            out.write(block)
    local_file.chmod(0o644)

    rss = PeakRss(serving_worker(port))
    dropgate_seconds, clamd_seconds = [], []
    for round_number in range(rounds + 1):  # round 0 warms up clamd and the connection pool; not counted
        key = f"uploads/bench/{uuid.uuid4()}"
        s3.upload_file(str(local_file), storage.uploads_bucket, key)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO uploads (id, owner, bucket, object_key, filename, content_type, declared_size,"
                " part_size, part_count, status, expires_at) VALUES (%s, 'bench', %s, %s, 'b.bin',"
                " 'application/octet-stream', %s, %s, %s, 'uploaded', now() + interval '1 day')",
                (str(uuid.uuid4()), storage.uploads_bucket, key, size, 8 * MIB, max(1, size // (8 * MIB))))
        ours = _timed_scan(port, storage.uploads_bucket, key, size, rss, stack.event_token("scan"))
        start = time.perf_counter()
        verdict = clamd.ClamdNetworkSocket("127.0.0.1", stack.ports.clamd, timeout=600).scan(str(local_file))
        theirs = time.perf_counter() - start
        assert list(verdict.values())[0][0] == "OK", verdict
        if round_number:
            dropgate_seconds.append(ours)
            clamd_seconds.append(theirs)
    ours = size / MIB / statistics.median(dropgate_seconds)
    theirs = size / MIB / statistics.median(clamd_seconds)
    return {"benchmark": "scan throughput", "size_mib": size // MIB, "rounds": rounds, "date": datetime.now(UTC).date().isoformat(),
            "dropgate_mb_s": round(ours, 1), "clamd_local_file_mb_s": round(theirs, 1), "ratio": round(ours / theirs, 2),
            "peak_rss_mib": round(rss.peak / MIB, 1), "baseline_rss_mib": round(rss.baseline / MIB, 1)}


def _timed_scan(port: int, bucket: str, key: str, size: int, rss: PeakRss, token: str) -> float:
    import urllib.request

    event = ObjectCreated(id=uuid.uuid4().hex, event_name="ObjectCreated:CompleteMultipartUpload",
                          event_source="minio:s3", region="", bucket=bucket, key=key, time=datetime.now(UTC), size=size)
    headers, body = to_binary(event.to_cloudevent())
    headers["Authorization"] = f"Bearer {token}"  # as the broker delivers it
    with rss:
        start = time.perf_counter()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=900) as response:  # noqa: S310 - loopback only
            assert response.status == 200 and response.headers["ce-type"] == "dev.dropgate.scan.clean"
        return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
