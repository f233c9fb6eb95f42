"""The scan of one uploaded object: stream it through clamd, verify it, record one verdict.

One pass over the object: chunks read from storage go to clamd's INSTREAM
while a SHA-256 is updated and the first bytes are kept for sniffing the real
type, so memory stays at a few chunks whatever the file size.

Verdicts, in this order of precedence:
    infected  clamd found a signature (its name is recorded)
    failed    clamd could not decide within its limits (StreamMaxLength): policy, never clean
    rejected  the bytes are not what was declared: size, SHA-256, or real type
    clean     none of the above

Exactly one verdict per upload: the row is claimed (`scanning`), the verdict is
written only if the row is still `scanning`, and only after every byte storage
reported was read and scanned. A duplicate or concurrent delivery finds the
verdict already there and answers with it; one that arrives while the object is
being scanned waits for that scan (a per-object advisory lock, `scan_lock_name`)
instead of reading the same bytes a second time. Failures of clamd, storage or the
database raise, so the function answers 5xx and the broker retries.
Infected and rejected objects are moved to the quarantine bucket (server-side
copy, then delete) before the verdict is written; clean ones are tagged.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import psycopg
from botocore.client import BaseClient
from botocore.exceptions import ClientError
from psycopg_pool import ConnectionPool

from shared import audit, filetype, metrics
from shared.audit import Actor
from shared.errors import DependencyUnavailable, Gone
from shared.logs import bind, log_event
from shared.scanner import ScannerUnavailable, StreamingClamd
from shared.settings import ClamdSettings, StorageSettings
from shared.storage import sse_arguments

logger = logging.getLogger("dropgate.scan")

Verdict = Literal["clean", "infected", "rejected", "failed"]
VERDICTS: Final = ("clean", "infected", "rejected", "failed")
ACTOR: Final = Actor.system("scan")
_CLAIMABLE: Final = ("pending", "uploaded", "scanning")
_LOCK_POLL_SECONDS: Final = 0.2


def scan_lock_name(bucket: str, key: str) -> str:
    """The PostgreSQL advisory lock (`hashtextextended(name, 0)`) a scan holds on its object while it runs.

    Deliveries of one object (storage's notification, presign's fast path, a re-drive by the
    reconciliation pass) wait for each other instead of streaming the same bytes through clamd
    twice. A scan whose process dies loses its database session, and the lock with it, so the
    next delivery goes ahead at once. shared.reconcile asks for the same lock to tell a scan that
    is running from one that is stuck.
    """
    return f"dropgate-scan:{bucket}/{key}"


def _is_missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


class IncompleteRead(IOError):
    """Storage ended the stream before the length it announced: no verdict may be written."""


class ScanInProgress(DependencyUnavailable):
    """Another delivery has been scanning this object for longer than a delivery waits: retry later."""


@dataclass(frozen=True)
class ScanResult:
    upload_id: str
    bucket: str  # where the object is now (quarantine for infected/rejected)
    key: str
    verdict: Verdict
    detail: str | None  # signature name, rejection or failure reason
    sha256: str | None
    size: int
    detected_type: str | None
    scanned_at: datetime
    already_decided: bool = False  # True when a previous delivery wrote the verdict


def _release_lock(conn: psycopg.Connection, name: str) -> None:
    try:
        conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (name,))
        conn.commit()
    except psycopg.Error:
        conn.close()  # the pool discards a closed connection; its session, and the lock, end with it


class _MeasuredStream:
    """Yields the object's chunks while hashing them, counting bytes and keeping the head for sniffing.

    A reader thread fetches (and hashes) up to `PREFETCH_CHUNKS` chunks ahead while the
    caller sends the previous ones to clamd, so storage and clamd work at the same time;
    memory stays bounded by the queue.
    """

    PREFETCH_CHUNKS: Final = 4

    def __init__(self, body: Any, chunk_size: int, expected_length: int) -> None:
        self._body = body
        self._chunk_size = chunk_size
        self.expected_length = expected_length
        self.sha256 = hashlib.sha256()
        self.length = 0
        self.head = b""
        self.finished = False
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=self.PREFETCH_CHUNKS)
        self._stop = threading.Event()

    def _read_ahead(self) -> None:
        try:
            while not self._stop.is_set():
                chunk = self._body.read(self._chunk_size)
                if not chunk:
                    break
                self.sha256.update(chunk)
                self._put(chunk)
            self._put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread, which raises it
            self._put(exc)

    def _put(self, item: bytes | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[bytes]:
        reader = threading.Thread(target=self._read_ahead, name="scan-read-ahead", daemon=True)
        reader.start()
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                self.length += len(item)
                if len(self.head) < filetype.SNIFF_BYTES:
                    self.head += item[:filetype.SNIFF_BYTES - len(self.head)]
                yield item
        finally:
            # The consumer stopped (done, clamd gone, or an error): let the reader finish.
            self._stop.set()
            reader.join(timeout=30)
        if self.length != self.expected_length:
            raise IncompleteRead(f"storage sent {self.length} of {self.expected_length} bytes")
        self.finished = True


class ObjectScanner:
    def __init__(self, *, storage: StorageSettings, clamd: ClamdSettings, pool: ConnectionPool, s3: BaseClient,
                 scanner: StreamingClamd) -> None:
        self._storage = storage
        self._chunk_size = clamd.chunk_size
        self._pool = pool
        self._s3 = s3
        self._scanner = scanner
        # A duplicate delivery waits at most about as long as one scan may take (one clamd call).
        self._lock_wait_seconds = clamd.timeout_seconds + 60

    def scan(self, bucket: str, key: str, event_id: str) -> ScanResult | None:
        """Scan the object an "object created" event names; None when dropgate has no upload for it."""
        with self._object_lock(bucket, key):
            upload = self._claim(bucket, key)
            if upload is None:
                log_event(logger, "no upload for this object; ignored", bucket=bucket, key=key, event_id=event_id)
                return None
            bind(upload_id=str(upload["id"]))
            if upload["status"] in VERDICTS:
                log_event(logger, "verdict already written; answered with it", outcome="already_decided",
                          verdict=upload["status"])
                return self._result_from_row(upload, already_decided=True)
            return self._scan_claimed(upload, event_id)

    @contextlib.contextmanager
    def _object_lock(self, bucket: str, key: str) -> Iterator[None]:
        """Hold the object's scan lock (see `scan_lock_name`) on a pooled connection for the whole scan.

        A waiting delivery polls without holding a connection, so waiters never starve the scan
        they wait for of the pool; once it gets the lock it usually finds the verdict written.
        """
        name = scan_lock_name(bucket, key)
        deadline = time.monotonic() + self._lock_wait_seconds
        while True:
            with self._pool.connection() as conn:
                locked = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0)) AS locked",
                                      (name,)).fetchone()["locked"]
                conn.commit()  # the lock is the session's; no transaction stays open during the scan
                if locked:
                    try:
                        yield
                    finally:
                        _release_lock(conn, name)
                    return
            if time.monotonic() >= deadline:
                raise ScanInProgress(f"another delivery is scanning {bucket}/{key}", headers={"Retry-After": "30"})
            time.sleep(_LOCK_POLL_SECONDS)

    def _claim(self, bucket: str, key: str) -> dict[str, Any] | None:
        with self._pool.connection() as conn:
            row = conn.execute(
                "UPDATE uploads SET status = 'scanning', updated_at = now()"
                " WHERE bucket = %s AND object_key = %s AND status = ANY(%s) RETURNING *",
                (bucket, key, list(_CLAIMABLE))).fetchone()
            if row is None:  # already decided, expired, aborted, or unknown
                row = conn.execute("SELECT * FROM uploads WHERE bucket = %s AND object_key = %s",
                                   (bucket, key)).fetchone()
                if row is not None and row["status"] not in VERDICTS:
                    log_event(logger, "upload is not scannable in its state; ignored", upload_id=str(row["id"]),
                              status=row["status"])
                    return None
            return row

    def _scan_claimed(self, upload: dict[str, Any], event_id: str) -> ScanResult:
        started = time.monotonic()
        bucket, body, length = self._open(upload)
        stream = _MeasuredStream(body, self._chunk_size, length)
        try:
            outcome = self._scanner.scan_chunks(stream)
        finally:
            body.close()
            metrics.SCAN_BYTES.inc(stream.length)
        if outcome.outcome == "error":
            raise ScannerUnavailable(f"clamd could not scan: {outcome.detail}")
        if outcome.outcome != "limit_exceeded" and not stream.finished:
            raise IncompleteRead("the scan ended before the whole object was read")
        verdict, detail = self._decide(upload, outcome, stream)
        now = datetime.now(UTC)
        if verdict in ("infected", "rejected"):
            bucket = self._quarantine(upload, bucket)
        elif verdict == "clean":
            self._tag_clean(bucket, upload["object_key"])
        sha256 = stream.sha256.hexdigest() if stream.finished else None
        result = self._record(upload, bucket, verdict, detail, sha256, stream, now, event_id)
        if not result.already_decided:
            metrics.SCAN_VERDICTS.labels(verdict).inc()
            metrics.SCAN_DURATION.observe(time.monotonic() - started)
        return result

    def _open(self, upload: dict[str, Any]) -> tuple[str, Any, int]:
        """The object's body from the uploads bucket, or from quarantine when a crashed attempt already moved it."""
        key = upload["object_key"]
        for bucket in (upload["bucket"], self._storage.quarantine_bucket):
            try:
                response = self._s3.get_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if _is_missing(exc):
                    continue
                raise
            return bucket, response["Body"], response["ContentLength"]
        # Deleted before it could be scanned: a retry cannot help (a 4xx goes to the dead-letter sink).
        raise Gone(f"object {key} is in neither {upload['bucket']} nor the quarantine bucket")

    @staticmethod
    def _decide(upload: dict[str, Any], outcome: Any, stream: _MeasuredStream) -> tuple[Verdict, str | None]:
        if outcome.outcome == "infected":
            return "infected", outcome.signature
        if outcome.outcome == "limit_exceeded":
            return "failed", f"clamd stopped after {outcome.bytes_scanned} bytes: {outcome.detail}"
        if stream.length != upload["declared_size"]:
            return "rejected", f"size is {stream.length} bytes, {upload['declared_size']} were declared"
        digest = stream.sha256.hexdigest()
        if upload["declared_sha256"] and digest != upload["declared_sha256"]:
            return "rejected", f"SHA-256 is {digest}, {upload['declared_sha256']} was declared"
        ok, reason = filetype.consistent(upload["content_type"], filetype.sniff(stream.head))
        if not ok:
            return "rejected", reason
        return "clean", None

    def _quarantine(self, upload: dict[str, Any], current_bucket: str) -> str:
        quarantine, key = self._storage.quarantine_bucket, upload["object_key"]
        if current_bucket != quarantine:
            try:
                self._s3.copy_object(Bucket=quarantine, Key=key, CopySource={"Bucket": current_bucket, "Key": key},
                                     MetadataDirective="COPY", **sse_arguments(self._storage))
            except ClientError as exc:
                # A concurrent delivery of the same event may have moved it a moment ago.
                if not (_is_missing(exc) and self._exists(quarantine, key)):
                    raise
            self._s3.delete_object(Bucket=current_bucket, Key=key)
        return quarantine

    def _exists(self, bucket: str, key: str) -> bool:
        try:
            self._s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc):
                return False
            raise
        return True

    def _tag_clean(self, bucket: str, key: str) -> None:
        self._s3.put_object_tagging(Bucket=bucket, Key=key,
                                    Tagging={"TagSet": [{"Key": "dropgate-verdict", "Value": "clean"}]})

    def _record(self, upload: dict[str, Any], bucket: str, verdict: Verdict, detail: str | None,
                sha256: str | None, stream: _MeasuredStream, now: datetime, event_id: str) -> ScanResult:
        detected = filetype.sniff(stream.head)
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "UPDATE uploads SET status = %s, scan_verdict = %s, scan_detail = %s, sha256 = %s, scanned_at = %s,"
                " stored_size = coalesce(stored_size, %s), updated_at = now()"
                " WHERE id = %s AND status = 'scanning' RETURNING *",
                (verdict, verdict, detail, sha256, now, stream.length, upload["id"])).fetchone()
            if row is None:  # a concurrent delivery decided first; its verdict stands
                current = conn.execute("SELECT * FROM uploads WHERE id = %s", (upload["id"],)).fetchone()
                return self._result_from_row(current, already_decided=True)
            audit.record(conn, ACTOR, "scan.verdict", upload["id"], verdict=verdict, detail=detail, sha256=sha256,
                         size=stream.length, detected_type=detected, bucket=bucket, event_id=event_id)
            conn.execute("INSERT INTO processed_events (consumer, event_id, event_type, outcome)"
                         " VALUES ('scan', %s, 'object.created', %s) ON CONFLICT DO NOTHING", (event_id, verdict))
        log_event(logger, "scan verdict", upload_id=str(upload["id"]), verdict=verdict, detail=detail,
                  size=stream.length, outcome=verdict, bucket=bucket)
        return ScanResult(upload_id=str(upload["id"]), bucket=bucket, key=upload["object_key"], verdict=verdict,
                          detail=detail, sha256=sha256, size=stream.length, detected_type=detected, scanned_at=now)

    def _result_from_row(self, row: dict[str, Any], *, already_decided: bool) -> ScanResult:
        in_quarantine = row["status"] in ("infected", "rejected")
        return ScanResult(
            upload_id=str(row["id"]), bucket=self._storage.quarantine_bucket if in_quarantine else row["bucket"],
            key=row["object_key"], verdict=row["status"], detail=row["scan_detail"], sha256=row["sha256"],
            size=row["stored_size"] or row["declared_size"], detected_type=None,
            scanned_at=row["scanned_at"] or datetime.now(UTC), already_decided=already_decided)
