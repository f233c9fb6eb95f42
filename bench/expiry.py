"""Expiry: files retired per second by one expire pass, against the bare storage work it must do.

A retired file is more than a delete: its row is locked, its object deleted, the row marked, an
audit entry written and an "expired" CloudEvent sent to K_SINK. On a versioned bucket (production's
buckets have Object Lock, hence versioning; the bench turns versioning on for the local uploads
bucket when the stack made it without) deleting a key only adds a delete marker, so expire lists
each key's versions and deletes them by id (shared/retention/deleter.py). The baseline does exactly that storage work and nothing else: on a
versioned bucket of its own, ListObjectVersions per key (8 at a time, as the deleter) and
DeleteObjects by version id, 1,000 a request. A plain DeleteObjects by key would only write delete
markers and leave the bytes: not a baseline of the same work. Both sides are checked afterwards:
no version of their keys may be left.

Rounds alternate ABBA; each round prepares fresh objects and rows for both sides before timing.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import psycopg
from cloudevents.conversion import to_binary
from dropgate_local.processes import free_port
from dropgate_local.stack import HOST, LocalStack

from bench import stats
from bench.fair_storage import MAX_DELETE_KEYS, is_versioned, versioned_bucket
from events.types import Ping
from shared.platform.storage import create_s3_client, list_versions

RAW_BUCKET = "dropgate-bench-raw-expiry"  # its own bucket: dropgate's pass never lists the baseline's objects
VERSION_LISTING_THREADS = 8  # as shared/retention/deleter.py lists versions
BODY = b"x" * 1024


class _AcceptingSink(http.server.BaseHTTPRequestHandler):
    """K_SINK: accepts every event, as a healthy broker would."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _put_all(s3, bucket: str, keys: list[str]) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=bucket, Key=key, Body=BODY), keys))


def _prepare_dropgate(s3, stack: LocalStack, bucket: str, files: int) -> list[str]:
    """`files` clean uploads past retention: objects and rows."""
    keys = [f"uploads/bench-expire/{uuid.uuid4()}" for _ in range(files)]
    _put_all(s3, bucket, keys)
    with psycopg.connect(stack.database_url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO uploads (id, owner, bucket, object_key, filename, content_type, declared_size, part_size,"
            " part_count, status, scan_verdict, created_at, expires_at) VALUES (%s, 'bench', %s, %s, 'f',"
            " 'application/octet-stream', 1024, 8388608, 1, 'clean', 'clean', now() - interval '31 days',"
            " now() - interval '1 day')", [(str(uuid.uuid4()), bucket, key) for key in keys])
    return keys


def _expire_pass(stack: LocalStack, port: int) -> tuple[float, dict]:
    """One pass through the function, as the PingSource triggers it; its duration and summary."""
    ping = Ping(id=uuid.uuid4().hex, source="/apis/v1/namespaces/dropgate/pingsources/dropgate-expire",
                time=datetime.now(UTC), task="expire")
    headers, data = to_binary(ping.to_cloudevent())
    headers["Authorization"] = f"Bearer {stack.event_token('expire')}"  # as the broker delivers it
    request = urllib.request.Request(f"http://{HOST}:{port}/", data=data, headers=headers, method="POST")
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=900) as response:
        summary = json.loads(response.read())["summary"]  # the data of the expire.completed reply
    return time.perf_counter() - start, summary


def _raw_delete(s3, bucket: str, keys: list[str]) -> float:
    """The storage work of expiring `keys` on a versioned bucket, nothing else; its duration."""
    start = time.perf_counter()
    with ThreadPoolExecutor(VERSION_LISTING_THREADS) as pool:
        entries = [entry for versions in pool.map(lambda key: list_versions(s3, bucket, key), keys)
                   for entry in versions]
    for first in range(0, len(entries), MAX_DELETE_KEYS):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": entries[first:first + MAX_DELETE_KEYS], "Quiet": True})
    return time.perf_counter() - start


def _left(s3, bucket: str, keys: list[str]) -> int:
    """Versions still there for a sample of the keys (must be 0: the bytes are really gone)."""
    return sum(len(list_versions(s3, bucket, key)) for key in keys[:: max(1, len(keys) // 20)])


def measure(stack: LocalStack, *, files: int, rounds: int) -> list[dict]:
    """Needs PostgreSQL and storage started."""
    sink = http.server.ThreadingHTTPServer((HOST, 0), _AcceptingSink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    port = free_port()
    stack.start_function("expire", port=port, label="expire-bench",
                         extra_env={"K_SINK": f"http://{HOST}:{sink.server_address[1]}/",
                                    "DROPGATE_EXPIRE_MAX_FILES": str(files)})
    storage = stack.storage_settings()
    s3 = create_s3_client(storage)
    versioned_bucket(s3, RAW_BUCKET, storage)
    if not is_versioned(s3, storage.uploads_bucket):  # the stack's own; the product decides per bucket
        s3.put_bucket_versioning(Bucket=storage.uploads_bucket, VersioningConfiguration={"Status": "Enabled"})
    ours, theirs, passes = [], [], []
    try:
        for round_number in range(rounds):
            keys = _prepare_dropgate(s3, stack, storage.uploads_bucket, files)
            raw_keys = [f"bench-raw/{uuid.uuid4()}" for _ in range(files)]
            _put_all(s3, RAW_BUCKET, raw_keys)
            for side in stats.abba(round_number, "dropgate", "raw"):
                if side == "dropgate":
                    seconds, summary = _expire_pass(stack, port)
                    ours.append(summary["expired"] / seconds)
                    passes.append({"seconds": seconds, **{k: summary.get(k) for k in (
                        "expired", "objects_deleted", "delete_requests", "events", "errors")},
                        "versions_left": _left(s3, storage.uploads_bucket, keys)})
                else:
                    theirs.append(files / _raw_delete(s3, RAW_BUCKET, raw_keys))
            if _left(s3, RAW_BUCKET, raw_keys):
                raise AssertionError("the baseline left versions behind: it did less than expire must")
    finally:
        sink.shutdown()
    return [_row(files, ours, theirs, passes)]


def _row(files: int, ours: list[float], theirs: list[float], passes: list[dict]) -> dict:
    ratios = stats.paired_ratios(ours, theirs)
    short = any(p["expired"] != files or p["versions_left"] for p in passes)
    return stats.row(
        f"expiry: {files} files past retention, one expire pass (rows, audit, events; versioned bucket)"
        + (" — SOME FILES NOT EXPIRED, see values" if short else ""),
        stats.show(ours, unit=" files/s"),
        stats.show(theirs, unit=" objects/s") + " (ListObjectVersions per key + DeleteObjects by version id, "
        "versioned bucket)", ratios=ratios, target="≥ 0.8×",
        met=stats.at_least(stats.median(ratios), 0.8) if not short else False,
        values={"passes": passes, "raw_objects_per_s": theirs})
