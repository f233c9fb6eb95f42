"""Scan throughput: dropgate's scan function against clamd scanning fresh bytes of the same size from a local file.

Starts the real pieces (PostgreSQL, SeaweedFS, clamd, the scan function) on free ports in a temporary
folder and measures, in the same rounds, against the same clamd and signature database:
  dropgate   object-created CloudEvent delivered to the scan function -> verdict reply
             (storage read + INSTREAM + SHA-256 + type sniff + verdict write + tagging)
  baseline   clamd's SCAN of a local file (clamd reads the disk itself: the least any scanner pays)
Every round both sides get bytes nobody has scanned: clamd caches a clean verdict by the file's hash
and answers a second scan of the same bytes without scanning, so scanning one file twice (or one
side's bytes after the other's) would time the cache. Rounds alternate ABBA after one uncounted
warm-up round. Prints MB/s (10^6 bytes) for both, the ratio, the signature count and the scan worker's
peak RSS. Run: `make bench-scan` or `.venv/bin/python -m bench.scan [--size 1024] [--rounds 5]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import clamd
import psycopg
from cloudevents.conversion import to_binary
from dropgate_local.processes import PeakRss, free_port, serving_worker
from dropgate_local.stack import HOST, LocalStack, StackPorts

from bench import stats
from bench.fair_bytes import fresh_file
from bench.fair_report import clamd_database
from events.types import ObjectCreated
from shared.platform.storage import create_s3_client

MIB = 1024 * 1024
RSS_LIMIT = 100e6  # bytes: the "scan peak RSS on 1 GiB ≤ 100 MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="object size in MiB (default 1024)")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds of each (default 5)")
    parser.add_argument("--quick", action="store_true", help="50 MiB, 3 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.rounds = 50, 3
    with tempfile.TemporaryDirectory(prefix="dropgate-bench-") as tmp:
        result = run(LocalStack(Path(tmp), StackPorts.allocate()), Path(tmp), args.size * MIB, args.rounds)
    for item in rows(result):
        print(f"{item['name']}: dropgate {item['dropgate']}, baseline {item['baseline']}, "
              f"ratio {stats.ratio_cell(item) or '—'}, target {item['target']}: {stats.met_cell(item['met'])}")
    print(json.dumps(result))
    return 0


def rows(result: dict) -> list[dict]:
    """The scan result as rows of bench/run.py's table."""
    size_mib, database = result["size_mib"], result["clamd"]
    ratios = result["ratios"]
    peaks = [peak / MIB for peak in result["peak_rss_bytes"]]
    rss_met = stats.at_most(max(result["peak_rss_bytes"]), RSS_LIMIT)
    return [
        stats.row(f"scan throughput, {size_mib} MiB object, fresh bytes each round for each side",
                  stats.show(result["dropgate_mb_s"], unit=" MB/s"),
                  stats.show(result["clamd_mb_s"], unit=" MB/s") + f" (clamd SCAN of a local file; same clamd, "
                  f"{database['signatures']} signatures)", ratios=ratios, target="≥ 0.9×",
                  met=stats.at_least(stats.median(ratios), 0.9), values=result),
        stats.row(f"scan worker peak RSS, {size_mib} MiB object (target judged on the highest round)",
                  stats.show(peaks, "{:.1f}", " MiB"), f"{result['baseline_rss_bytes'] / MIB:.1f} MiB (idle worker)",
                  target="≤ 100 MB on 1 GiB",
                  met=rss_met if size_mib >= 1024 or rss_met is False else None,
                  values={"peak_rss_bytes": result["peak_rss_bytes"]}),
    ]


def run(stack: LocalStack, tmp: Path, size: int, rounds: int) -> dict:
    """Starts the pieces it needs on `stack` and stops them."""
    try:
        return _run(stack, tmp, size, rounds)
    finally:
        stack.stop()


def _run(stack: LocalStack, tmp: Path, size: int, rounds: int) -> dict:
    stack.start_postgres()
    stack.start_clamd(try_update=False)
    stack.start_storage(webhook=False)
    port = free_port()
    stack.start_function("scan", port=port, label="scan-bench")
    s3 = create_s3_client(stack.storage_settings())
    worker = serving_worker(port)
    ours, theirs, peaks, idle = [], [], [], worker.memory_info().rss
    for round_number in range(rounds + 1):  # round 0 warms up clamd and the connection pool; not counted
        seconds, rss = {}, PeakRss(worker)
        for side in stats.abba(round_number, "dropgate", "clamd"):
            if side == "dropgate":
                seconds[side] = _dropgate_round(stack, s3, port, tmp, size, rss)
            else:
                seconds[side] = clamd_alone(stack, tmp, size)
        if round_number:
            ours.append(size / 1e6 / seconds["dropgate"])
            theirs.append(size / 1e6 / seconds["clamd"])
            peaks.append(rss.peak)
    return {"benchmark": "scan throughput", "size_mib": size // MIB, "rounds": rounds,
            "date": datetime.now(UTC).date().isoformat(), "dropgate_mb_s": ours, "clamd_mb_s": theirs,
            "ratios": stats.paired_ratios(ours, theirs), "peak_rss_bytes": peaks,
            "baseline_rss_bytes": idle, "clamd": clamd_database(stack)}


def _dropgate_round(stack: LocalStack, s3, port: int, tmp: Path, size: int, rss: PeakRss) -> float:
    """Fresh bytes stored as an uploaded object with its row (untimed), then the scan (timed)."""
    storage = stack.storage_settings()
    path = fresh_file(tmp / "dropgate-object.bin", size)
    key = f"uploads/bench/{uuid.uuid4()}"
    s3.upload_file(str(path), storage.uploads_bucket, key)
    path.unlink()
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO uploads (id, owner, bucket, object_key, filename, content_type, declared_size,"
            " part_size, part_count, status, expires_at) VALUES (%s, 'bench', %s, %s, 'b.bin',"
            " 'application/octet-stream', %s, %s, %s, 'uploaded', now() + interval '1 day')",
            (str(uuid.uuid4()), storage.uploads_bucket, key, size, 8 * MIB, max(1, size // (8 * MIB))))
    return _timed_scan(port, storage.uploads_bucket, key, size, rss, stack.event_token("scan"))


def clamd_alone(stack: LocalStack, tmp: Path, size: int) -> float:
    """Fresh bytes of the same size in a local file, scanned by clamd itself (timed)."""
    path = fresh_file(tmp / "clamd-file.bin", size)
    start = time.perf_counter()
    verdict = clamd.ClamdNetworkSocket(HOST, stack.ports.clamd, timeout=900).scan(str(path))
    seconds = time.perf_counter() - start
    path.unlink()
    assert next(iter(verdict.values()))[0] == "OK", verdict
    return seconds


def _timed_scan(port: int, bucket: str, key: str, size: int, rss: PeakRss, token: str) -> float:
    event = ObjectCreated(id=uuid.uuid4().hex, event_name="ObjectCreated:CompleteMultipartUpload",
                          event_source="minio:s3", region="", bucket=bucket, key=key, time=datetime.now(UTC), size=size)
    headers, body = to_binary(event.to_cloudevent())
    headers["Authorization"] = f"Bearer {token}"  # as the broker delivers it
    with rss:
        start = time.perf_counter()
        request = urllib.request.Request(f"http://{HOST}:{port}/", data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=900) as response:
            assert response.status == 200 and response.headers["ce-type"] == "dev.dropgate.scan.clean"
        return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
