"""The scan function as a real functions-framework process, fed CloudEvents over HTTP."""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import from_http

from dropgate_local import clamav
from dropgate_local.client import call
from dropgate_local.processes import PeakRss, free_port, serving_worker
from events.types import ObjectCreated, ScanVerdict
from shared.platform.storage import create_s3_client
from tests.conftest import EICAR, UNWATCHED_ENV, as_broker
from tests.test_scanning import stage, upload_row

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def s3(unwatched):  # noqa: ANN201
    return create_s3_client(unwatched)


@pytest.fixture(scope="module")
def scan_url(stack, database_url, unwatched, clamd_address) -> str:
    port = free_port()
    stack.start_function("scan", port=port, label="scan-function-tests", extra_env=UNWATCHED_ENV)
    return f"http://127.0.0.1:{port}"


def created_event(unwatched, key: str, size: int, event_id: str | None = None) -> ObjectCreated:
    return ObjectCreated(id=event_id or uuid.uuid4().hex, event_name="ObjectCreated:CompleteMultipartUpload",
                         event_source="minio:s3", region="", bucket=unwatched.uploads_bucket, key=key,
                         time=datetime.now(UTC), size=size)


def deliver(url: str, event: ObjectCreated):  # noqa: ANN201 - tests.http.Reply
    headers, body = to_binary(event.to_cloudevent())
    return call("POST", url, data=body, headers={**headers, **as_broker("scan")}, timeout=600)


def reply_event(reply) -> ScanVerdict:  # noqa: ANN001
    return ScanVerdict.from_cloudevent(from_http(reply.headers, reply.body))


def test_eicar_reply_is_an_infected_verdict(scan_url, database_url, s3, unwatched) -> None:
    upload_id, key = stage(database_url, s3, unwatched, EICAR, content_type="text/plain")
    event = created_event(unwatched, key, len(EICAR))
    first = deliver(scan_url, event)
    assert first.status == 200, first.body
    verdict = reply_event(first)
    assert (verdict.type, str(verdict.upload_id), verdict.bucket) == (
        "dev.dropgate.scan.infected", upload_id, unwatched.quarantine_bucket)
    assert "EICAR" in verdict.signature
    again = deliver(scan_url, event)  # the broker redelivers the same event
    assert again.status == 200 and reply_event(again).id == verdict.id
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log WHERE upload_id = %s", (upload_id,)).fetchone()[0] == 1


def test_200_mb_clean_file_with_bounded_memory(scan_url, database_url, s3, unwatched) -> None:
    size = 200 * MIB
    digest = hashlib.sha256()
    with tempfile.TemporaryFile() as source:
        block = os.urandom(MIB)
        for _ in range(size // MIB):
            source.write(block)
            digest.update(block)
        source.seek(0)
        upload_id = str(uuid.uuid4())
        key = f"uploads/test/{upload_id}"
        s3.upload_fileobj(source, unwatched.uploads_bucket, key)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO uploads (id, owner, bucket, object_key, filename, content_type, declared_size, part_size,"
            " part_count, declared_sha256, status, expires_at) VALUES (%s, 'tester', %s, %s, 'big.bin',"
            " 'application/octet-stream', %s, %s, 25, %s, 'uploaded', now() + interval '1 day')",
            (upload_id, unwatched.uploads_bucket, key, size, 8 * MIB, digest.hexdigest()))

    with PeakRss(serving_worker(int(scan_url.rsplit(":", 1)[1]))) as rss:
        reply = deliver(scan_url, created_event(unwatched, key, size))
    assert reply.status == 200, reply.body
    verdict = reply_event(reply)
    assert verdict.verdict == "clean" and verdict.sha256 == digest.hexdigest() and verdict.size == size
    growth = (rss.peak - rss.baseline) / MIB
    print(f"scan worker RSS: baseline {rss.baseline / MIB:.1f} MiB, peak {rss.peak / MIB:.1f} MiB, growth {growth:.1f} MiB "
          f"for a {size // MIB} MiB object")
    # Streaming keeps a few 1 MiB chunks in flight; holding the object would add 200 MiB.
    assert growth < 64, f"scan memory grew by {growth:.1f} MiB for a {size // MIB} MiB object"


def test_a_png_declared_as_pdf_is_rejected(scan_url, database_url, s3, unwatched) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(2048)
    upload_id, key = stage(database_url, s3, unwatched, png, content_type="application/pdf")
    verdict = reply_event(deliver(scan_url, created_event(unwatched, key, len(png))))
    assert verdict.verdict == "rejected" and "image/png" in verdict.reason
    assert upload_row(database_url, upload_id)["status"] == "rejected"


def test_events_of_other_buckets_and_bad_events(scan_url, unwatched) -> None:
    foreign = ObjectCreated(id="x1", event_name="ObjectCreated:Put", event_source="minio:s3", region="",
                            bucket=unwatched.quarantine_bucket, key="k", time=datetime.now(UTC))
    assert deliver(scan_url, foreign).status == 204
    bad = call("POST", scan_url, data=b"{}", headers={"ce-id": "1", "ce-source": "s", "ce-specversion": "1.0",
                                                      "ce-type": "com.amazonaws.s3.ObjectCreated:Put",
                                                      "Content-Type": "application/json",
                                                      **as_broker("scan")})
    assert bad.status == 400 and "data.bucket" in bad.json()["detail"]


def test_clamd_down_answers_503_and_the_retry_succeeds(stack, database_url, unwatched, s3) -> None:
    """clamd stopped: no verdict, 503 so the broker retries; once clamd is back the retry gives the verdict."""
    clamd_port, scan_port = free_port(), free_port()
    run_dir = stack.data_dir / "clamav" / f"own-{clamd_port}"
    conf = clamav.write_clamd_conf(run_dir / "clamd.conf", db_dir=stack.data_dir / "clamav" / "db", host="127.0.0.1",
                                   port=clamd_port, pid_file=run_dir / "clamd.pid", temp_dir=run_dir)

    def start_clamd():  # noqa: ANN202
        child = stack._start(f"clamd-{clamd_port}", clamav.clamd_command(conf))  # noqa: SLF001 - test-only clamd
        child.wait_until(lambda: call("GET", f"http://127.0.0.1:{scan_port}/healthz").status == 200, timeout=120)
        return child

    scan = stack.start_function("scan", port=scan_port, extra_env={"DROPGATE_CLAMD_ADDRESS": f"127.0.0.1:{clamd_port}", **UNWATCHED_ENV},
                                label="scan-own-clamd")
    try:
        upload_id, key = stage(database_url, s3, unwatched, b"%PDF-1.4\n" + bytes(MIB), content_type="application/pdf")
        event = created_event(unwatched, key, MIB + 9)
        down = deliver(f"http://127.0.0.1:{scan_port}", event)
        assert down.status == 503 and down.json()["error"] == "dependency_unavailable", down.body
        assert upload_row(database_url, upload_id)["scan_verdict"] is None
        clamd_process = start_clamd()
        try:
            retried = deliver(f"http://127.0.0.1:{scan_port}", event)
            assert retried.status == 200 and reply_event(retried).verdict == "clean"
        finally:
            clamd_process.stop()
    finally:
        scan.stop()


def test_database_down_answers_503(stack, unwatched, clamd_address) -> None:
    port = free_port()
    env = {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", "DROPGATE_DB_CONNECT_TIMEOUT": "1",
           **UNWATCHED_ENV}
    child = stack.start_function("scan", port=port, extra_env=env, label="scan-no-database")
    try:
        reply = deliver(f"http://127.0.0.1:{port}", created_event(unwatched, "uploads/any", 1))
        assert reply.status == 503 and reply.json()["error"] == "dependency_unavailable"
    finally:
        child.stop()
