"""The object scan (shared/scanning/service.py) against real clamd, SeaweedFS and PostgreSQL."""

from __future__ import annotations

import contextlib
import hashlib
import io
import socket
import threading
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from shared.platform.clamd import ScannerUnavailable, StreamingClamd
from shared.platform.db import create_pool
from shared.platform.settings import ClamdSettings, DatabaseSettings, Settings
from shared.platform.storage import create_s3_client
from shared.scanning.content_policy import ContentPolicy
from shared.scanning.service import ObjectScanner
from tests.conftest import EICAR

MIB = 1024 * 1024
PNG_HEAD = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(100)


@pytest.fixture(scope="module")
def pool(database_url):  # noqa: ANN201
    pool = create_pool(DatabaseSettings(url=database_url, pool_min_size=1, pool_max_size=4, connect_timeout_seconds=5))
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def s3(unwatched):  # noqa: ANN201
    return create_s3_client(unwatched)


def object_scanner(unwatched, pool, s3, address: tuple[str, int]) -> ObjectScanner:
    """The scan as the function builds it: default limits and content policy, this clamd."""
    defaults = Settings.from_env(["clamd", "content"], {})
    clamd_settings = replace(defaults.clamd, host=address[0], port=address[1], timeout_seconds=60, chunk_size=MIB)
    return ObjectScanner(storage=unwatched, clamd=clamd_settings, pool=pool, s3=s3,
                         scanner=StreamingClamd(address[0], address[1], timeout=60, limits=clamd_settings),
                         policy=ContentPolicy.from_settings(defaults.content))


@pytest.fixture
def scanner(unwatched, pool, s3, clamd_address) -> ObjectScanner:
    return object_scanner(unwatched, pool, s3, clamd_address)


def stage(database_url: str, s3, unwatched, data: bytes, *, content_type: str = "application/octet-stream",
          declared_size: int | None = None, sha256: str | None = None, status: str = "uploaded") -> tuple[str, str]:
    """An upload row as presign leaves it after completion, and its object in the uploads bucket."""
    upload_id = str(uuid.uuid4())
    key = f"uploads/test/{upload_id}"
    s3.upload_fileobj(io.BytesIO(data), unwatched.uploads_bucket, key)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO uploads (id, owner, bucket, object_key, filename, content_type, declared_size, part_size,"
            " part_count, declared_sha256, status, expires_at)"
            " VALUES (%s, 'tester', %s, %s, 'f', %s, %s, %s, 1, %s, %s, now() + interval '1 day')",
            (upload_id, unwatched.uploads_bucket, key, content_type,
             len(data) if declared_size is None else declared_size, 8 * MIB, sha256, status))
    return upload_id, key


def upload_row(database_url: str, upload_id: str) -> dict:
    with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute("SELECT * FROM uploads WHERE id = %s", (upload_id,)).fetchone()


def where_is(s3, unwatched, key: str) -> set[str]:
    found = set()
    for bucket in (unwatched.uploads_bucket, unwatched.quarantine_bucket):
        if s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0):
            found.add(bucket)
    return found


def zipped(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(("data", "content_type"), [
    (EICAR, "text/plain"),
    (zipped("eicar.com", EICAR), "application/zip"),
    (zipped("outer.zip", zipped("eicar.com", EICAR)), "application/zip"),
])
def test_eicar_ends_infected_and_quarantined(scanner, database_url, s3, unwatched, data, content_type) -> None:
    upload_id, key = stage(database_url, s3, unwatched, data, content_type=content_type)
    result = scanner.scan(unwatched.uploads_bucket, key, event_id=f"e-{upload_id}")
    assert result.verdict == "infected" and "EICAR" in result.detail
    row = upload_row(database_url, upload_id)
    assert row["status"] == "infected" and row["scan_verdict"] == "infected" and "EICAR" in row["scan_detail"]
    assert where_is(s3, unwatched, key) == {unwatched.quarantine_bucket}


def test_every_clamav_testfile_ends_infected(scanner, database_url, s3, unwatched, testfiles_dir: Path) -> None:
    samples = sorted(p for p in testfiles_dir.iterdir() if p.name.startswith("clam"))
    assert len(samples) >= 40
    verdicts = {}
    for sample in samples:
        upload_id, key = stage(database_url, s3, unwatched, sample.read_bytes())
        verdicts[sample.name] = scanner.scan(unwatched.uploads_bucket, key, event_id=f"e-{upload_id}").verdict
        assert where_is(s3, unwatched, key) == {unwatched.quarantine_bucket}, sample.name
    assert set(verdicts.values()) == {"infected"}, verdicts


def test_clean_file_is_tagged_and_hashed(scanner, database_url, s3, unwatched) -> None:
    data = b"%PDF-1.7\n" + bytes(range(256)) * 4000
    digest = hashlib.sha256(data).hexdigest()
    upload_id, key = stage(database_url, s3, unwatched, data, content_type="application/pdf", sha256=digest)
    result = scanner.scan(unwatched.uploads_bucket, key, event_id=f"e-{upload_id}")
    assert (result.verdict, result.sha256, result.size) == ("clean", digest, len(data))
    row = upload_row(database_url, upload_id)
    assert row["status"] == "clean" and row["sha256"] == digest and row["scanned_at"] is not None
    tags = s3.get_object_tagging(Bucket=unwatched.uploads_bucket, Key=key)["TagSet"]
    assert {"Key": "dropgate-verdict", "Value": "clean"} in tags
    with psycopg.connect(database_url) as conn:
        actions = conn.execute("SELECT action, detail->>'verdict' FROM audit_log WHERE upload_id = %s",
                               (upload_id,)).fetchall()
    assert actions == [("scan.verdict", "clean")]


@pytest.mark.parametrize(("data", "content_type", "kwargs", "verdict", "reason"), [
    # Stored bytes that are not what was declared: not the file that was meant to be scanned.
    (b"%PDF-1.4\nhello", "application/pdf", {"sha256": "0" * 64}, "unscannable", "SHA-256"),
    (b"%PDF-1.4\nhello", "application/pdf", {"declared_size": 99}, "unscannable", "99 were declared"),
    # The content policy refusing the real type.
    (PNG_HEAD, "application/pdf", {}, "rejected", "image/png"),
    (b"MZ\x90\x00" + bytes(200), "application/octet-stream", {}, "rejected", "executable"),
    (bytes(range(256)) * 10, "text/csv", {}, "rejected", "declared text/csv"),
])
def test_mismatches_end_not_clean_and_quarantined(scanner, database_url, s3, unwatched, data, content_type, kwargs,
                                                  verdict, reason) -> None:
    upload_id, key = stage(database_url, s3, unwatched, data, content_type=content_type, **kwargs)
    result = scanner.scan(unwatched.uploads_bucket, key, event_id=f"e-{upload_id}")
    assert result.verdict == verdict and reason in result.detail, result.detail
    assert upload_row(database_url, upload_id)["status"] == verdict
    assert where_is(s3, unwatched, key) == {unwatched.quarantine_bucket}


def test_same_event_twice_gives_one_verdict(scanner, database_url, s3, unwatched) -> None:
    upload_id, key = stage(database_url, s3, unwatched, b"plain text\n" * 100, content_type="text/plain")
    first = scanner.scan(unwatched.uploads_bucket, key, event_id="dup-1")
    second = scanner.scan(unwatched.uploads_bucket, key, event_id="dup-1")
    assert (first.verdict, first.already_decided) == ("clean", False)
    assert (second.verdict, second.already_decided) == ("clean", True)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log WHERE upload_id = %s", (upload_id,)).fetchone()[0] == 1


def test_concurrent_deliveries_give_one_verdict(scanner, database_url, s3, unwatched) -> None:
    upload_id, key = stage(database_url, s3, unwatched, b"%PDF-1.4\n" + bytes(3 * MIB), content_type="application/pdf")
    results = []
    threads = [threading.Thread(target=lambda: results.append(scanner.scan(unwatched.uploads_bucket, key, "c")))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.verdict for r in results] == ["clean"] * 3
    assert sum(not r.already_decided for r in results) >= 1
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log WHERE upload_id = %s AND action = 'scan.verdict'",
                            (upload_id,)).fetchone()[0] == 1


def test_unknown_object_is_ignored(scanner, unwatched) -> None:
    assert scanner.scan(unwatched.uploads_bucket, "uploads/nobody/knows", event_id="x") is None


class CuttingProxy:
    """A real TCP proxy that drops the connection after `limit` bytes went one way: a server going
    away in the middle of a stream, provoked deterministically. `cut_replies` cuts what the server
    sends (unwatched dying mid-download) instead of what the client sends (clamd dying mid-upload)."""

    def __init__(self, target: tuple[str, int], limit: int, *, cut_replies: bool = False) -> None:
        self.target, self.limit, self.cut_replies = target, limit, cut_replies
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        source, sink = (upstream, client) if self.cut_replies else (client, upstream)
        threading.Thread(target=self._copy, args=(sink, source), daemon=True).start()
        forwarded = 0
        try:
            while forwarded < self.limit:
                data = source.recv(min(65536, self.limit - forwarded))
                if not data:
                    break
                sink.sendall(data)
                forwarded += len(data)
        except OSError:
            pass
        finally:
            for connection in (client, upstream):
                # shutdown, not just close: another thread is blocked in recv on these sockets,
                # and only shutdown sends the FIN while it is.
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()

    @staticmethod
    def _copy(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def cutting_proxy(clamd_address) -> Iterator[CuttingProxy]:
    proxy = CuttingProxy(clamd_address, limit=2 * MIB)
    yield proxy
    proxy.close()


def test_clamd_lost_mid_stream_writes_no_verdict_and_a_retry_succeeds(
        unwatched, pool, s3, database_url, clamd_address, cutting_proxy) -> None:
    upload_id, key = stage(database_url, s3, unwatched, b"%PDF-1.4\n" + bytes(12 * MIB), content_type="application/pdf")
    broken = object_scanner(unwatched, pool, s3, cutting_proxy.address)
    with pytest.raises((ScannerUnavailable, OSError)):
        broken.scan(unwatched.uploads_bucket, key, event_id="retry-1")
    row = upload_row(database_url, upload_id)
    assert row["status"] == "scanning" and row["scan_verdict"] is None
    assert where_is(s3, unwatched, key) == {unwatched.uploads_bucket}
    # The broker redelivers; clamd is reachable again.
    result = object_scanner(unwatched, pool, s3, clamd_address).scan(unwatched.uploads_bucket, key, event_id="retry-1")
    assert result.verdict == "clean" and upload_row(database_url, upload_id)["status"] == "clean"


def test_storage_lost_mid_download_writes_no_verdict(unwatched, pool, s3, database_url, clamd_address) -> None:
    from dataclasses import replace
    from urllib.parse import urlsplit

    from shared.platform.storage import IncompleteRead

    upload_id, key = stage(database_url, s3, unwatched, b"%PDF-1.4\n" + bytes(12 * MIB), content_type="application/pdf")
    endpoint = urlsplit(unwatched.endpoint_url)
    proxy = CuttingProxy((endpoint.hostname, endpoint.port), limit=3 * MIB, cut_replies=True)
    try:
        flaky_storage = replace(unwatched, endpoint_url=f"http://127.0.0.1:{proxy.address[1]}")
        flaky_s3 = create_s3_client(flaky_storage, max_attempts=1)
        broken = ObjectScanner(storage=flaky_storage, clamd=ClamdSettings("127.0.0.1", clamd_address[1], 60, MIB),
                               pool=pool, s3=flaky_s3, scanner=StreamingClamd(*clamd_address, timeout=60))
        with pytest.raises(Exception) as raised:  # noqa: PT011 - botocore or IncompleteRead, both mean "retry"
            broken.scan(unwatched.uploads_bucket, key, event_id="cut-1")
        from shared.platform.http import dependency_failure
        assert dependency_failure(raised.value) is not None or isinstance(raised.value, IncompleteRead), raised.value
    finally:
        proxy.close()
    row = upload_row(database_url, upload_id)
    assert row["scan_verdict"] is None and row["sha256"] is None
    result = object_scanner(unwatched, pool, s3, clamd_address).scan(unwatched.uploads_bucket, key, event_id="cut-1")
    assert result.verdict == "clean"


def test_stream_limit_ends_unscannable_never_clean(stack, unwatched, pool, s3, database_url) -> None:
    """clamd with a StreamMaxLength below the object: not fully scanned, so unscannable."""
    from dropgate_local import clamav
    from dropgate_local.processes import free_port

    port = free_port()
    run_dir = stack.data_dir / "clamav" / "small"
    conf = clamav.write_clamd_conf(run_dir / "clamd.conf", db_dir=stack.data_dir / "clamav" / "db", host="127.0.0.1",
                                   port=port, pid_file=run_dir / "clamd.pid", temp_dir=run_dir,
                                   limits=replace(clamav.default_limits(), stream_max_length=MIB))
    child = stack._start("clamd-small-limit", clamav.clamd_command(conf))  # noqa: SLF001 - test-only clamd
    try:
        child.wait_until(lambda: _pong(port), timeout=120)
        upload_id, key = stage(database_url, s3, unwatched, bytes(3 * MIB))
        result = object_scanner(unwatched, pool, s3, ("127.0.0.1", port)).scan(unwatched.uploads_bucket, key, "big")
        assert result.verdict == "unscannable" and "stream limit" in result.detail.lower(), result.detail
        assert upload_row(database_url, upload_id)["status"] == "unscannable"
        assert where_is(s3, unwatched, key) == {unwatched.quarantine_bucket}
    finally:
        child.stop()


def _pong(port: int) -> bool:
    try:
        return StreamingClamd("127.0.0.1", port, timeout=2).ping() == "PONG"
    except Exception:  # noqa: BLE001 - not up yet
        return False
