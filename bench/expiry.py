"""Expiry: files retired per second by one expire pass (the function, through a ping), against
raw DeleteObjects of the same number of objects in the same run.

A retired file is more than a delete: its row is locked, its object deleted, the row
marked, an audit entry written and an "expired" CloudEvent sent to K_SINK.
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
from events.types import Ping
from shared.platform.storage import create_s3_client


class _AcceptingSink(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def measure(stack: LocalStack, *, files: int) -> list[dict]:
    """Needs PostgreSQL and storage started."""
    sink = http.server.ThreadingHTTPServer((HOST, 0), _AcceptingSink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    port = free_port()
    stack.start_function("expire", port=port, label="expire-bench",
                         extra_env={"K_SINK": f"http://{HOST}:{sink.server_address[1]}/",
                                    "DROPGATE_EXPIRE_MAX_FILES": str(files)})
    storage = stack.storage_settings()
    s3 = create_s3_client(storage)
    body = b"x" * 1024

    keys = [f"uploads/bench-expire/{uuid.uuid4()}" for _ in range(files)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=storage.uploads_bucket, Key=key, Body=body), keys))
    with psycopg.connect(stack.database_url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO uploads (id, owner, bucket, object_key, filename, content_type, declared_size, part_size,"
            " part_count, status, scan_verdict, created_at, expires_at) VALUES (%s, 'bench', %s, %s, 'f',"
            " 'application/octet-stream', 1024, 8388608, 1, 'clean', 'clean', now() - interval '31 days',"
            " now() - interval '1 day')", [(str(uuid.uuid4()), storage.uploads_bucket, key) for key in keys])

    ping = Ping(id=uuid.uuid4().hex, source="/apis/v1/namespaces/dropgate/pingsources/dropgate-expire",
                time=datetime.now(UTC), task="expire")
    headers, data = to_binary(ping.to_cloudevent())
    headers["Authorization"] = f"Bearer {stack.event_token('expire')}"  # as the broker delivers it
    start = time.perf_counter()
    request = urllib.request.Request(f"http://{HOST}:{port}/", data=data, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=900) as response:  # noqa: S310 - loopback only
        summary = json.loads(response.read())["summary"]  # the data of the expire.completed reply
    ours = time.perf_counter() - start
    sink.shutdown()

    raw_keys = [f"bench-raw/{uuid.uuid4()}" for _ in range(files)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=storage.uploads_bucket, Key=key, Body=body), raw_keys))
    start = time.perf_counter()
    for first in range(0, files, 1000):
        s3.delete_objects(Bucket=storage.uploads_bucket, Delete={
            "Objects": [{"Key": key} for key in raw_keys[first:first + 1000]], "Quiet": True})
    raw = time.perf_counter() - start
    return [{"name": f"expiry: {files} files past retention, one expire pass (rows, audit, events)",
             "dropgate": f"{summary['expired'] / ours:.0f} files/s", "baseline": f"{files / raw:.0f} objects/s "
             "(raw DeleteObjects)", "ratio": (summary["expired"] / ours) / (files / raw),
             "values": {"expired": summary["expired"], "seconds": ours, "raw_seconds": raw}}]
