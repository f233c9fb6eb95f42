"""The scan of one uploaded object: stream it through clamd, verify it, record one verdict.

One pass over the object: chunks read from storage go to clamd's INSTREAM
while a SHA-256 is updated and the first bytes are kept for sniffing the real
type, so memory stays at a few chunks whatever the file size.

Verdicts, in this order of precedence (docs/scan.md has the table with every transition):
    infected     clamd found a signature (its name is recorded), or the SHA-256 is blocklisted
    unscannable  not fully scanned: clamd stopped looking (a limit, an encrypted archive or
                 document, a stream longer than StreamMaxLength), dropgate's own archive
                 inspection found content past clamd's limits (shared/scanning/archives.py), or the
                 stored bytes are not what was declared (size, SHA-256)
    rejected     the content policy refuses the real type (shared/scanning/content_policy.py)
    clean        fully scanned, nothing found, bytes as declared, type allowed

Exactly one verdict per upload: the row is claimed (`scanning`), the verdict is
written only if the row is still `scanning`, and only after every byte storage
reported was read and scanned. A duplicate or concurrent delivery finds the
verdict already there and answers with it; one that arrives while the object is
being scanned waits for that scan (a per-object advisory lock, `scan_lock_name`)
instead of reading the same bytes a second time. Failures of clamd, storage or the
database raise, so the function answers 5xx and the broker retries.
Infected, unscannable and rejected objects are moved to the quarantine bucket (the exact
version, then every version removed: shared/scanning/quarantine.py) before the verdict is written;
clean ones are tagged. Each verdict records clamd's signature database version; a rescan
(`rescan_for_version`) re-reads a clean file when that version advanced and changes it only
when the new signatures find something. Bytes clamd already judged under its current signatures
(an earlier upload, same SHA-256) are read once without clamd and that finding is reused; every
other step is decided again (shared/scanning/reuse.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar, cast

import psycopg
from botocore.client import BaseClient
from botocore.exceptions import ClientError
from psycopg_pool import ConnectionPool

from events.types import Verdict
from shared.platform import audit, metrics
from shared.platform.audit import Actor
from shared.platform.clamd import ClamdReply, ScannerUnavailable, StreamingClamd
from shared.platform.errors import DependencyUnavailable, Gone
from shared.platform.logs import bind, log_event
from shared.platform.settings import ClamdSettings, StorageSettings
from shared.platform.storage import IncompleteRead, is_missing
from shared.scanning import archives, blocklist, reuse
from shared.scanning import content_policy as content
from shared.scanning.quarantine import move_to_quarantine, restore_from_quarantine
from shared.scanning.stream import MeasuredStream
from shared.uploads.model import (
    AWAITING_VERDICT,
    DOWNLOADABLE,
    QUARANTINED,
    VERDICTS,
    UploadRow,
    UploadStatus,
    upload_row,
    values,
)
from shared.uploads.requests import normalise_etag

T = TypeVar("T")
logger = logging.getLogger("dropgate.scan")

ACTOR: Final = Actor.system("scan")
# CloudEvent extensions on a re-emitted "object created": an operator's rescan (`dropgate-dev rescan`,
# its id), and the reconcile pass's rescan after a signature update (the clamd database version).
RESCAN_EXTENSION: Final = "dropgaterescan"
SIGNATURE_RESCAN_EXTENSION: Final = "dropgatesigversion"
_LOCK_POLL_SECONDS: Final = 0.2
# What dropgate inspects itself before calling an archive fully scanned (shared/scanning/archives.py).
_ARCHIVES: Final = frozenset({"application/zip", "application/gzip", "application/x-bzip2", "application/x-xz",
                              "application/x-tar", "application/x-7z-compressed", "application/vnd.rar"})


def scan_lock_name(bucket: str, key: str) -> str:
    """The PostgreSQL advisory lock (`hashtextextended(name, 0)`) a scan holds on its object while it runs.

    Deliveries of one object (storage's notification, presign's fast path, a re-drive by the
    reconciliation pass) wait for each other instead of streaming the same bytes through clamd
    twice. A scan whose process dies loses its database session, and the lock with it, so the
    next delivery goes ahead at once. shared.retention.reconcile asks for the same lock to tell a scan that
    is running from one that is stuck.
    """
    return f"dropgate-scan:{bucket}/{key}"


class ScanInProgress(DependencyUnavailable):
    """Another delivery has been scanning this object for longer than a delivery waits: retry later."""


@dataclass(frozen=True)
class ScanResult:
    """The verdict dropgate recorded for one upload (shared.platform.clamd.ClamdReply is what clamd said)."""

    upload_id: str
    bucket: str  # where the object is now (quarantine for infected/unscannable/rejected)
    key: str
    verdict: Verdict
    detail: str | None  # signature name, or the reason in words for the owner
    sha256: str | None
    size: int
    detected_type: str | None
    scanned_at: datetime
    signature_version: int | None = None  # clamd's database version that produced the verdict
    already_decided: bool = False  # True when a previous delivery wrote the verdict
    rescan: bool = False  # a rescan after a signature update found it infected
    reused_from: str | None = None  # the earlier upload whose clamd finding was reused (shared/scanning/reuse.py)


@dataclass(frozen=True)
class _Decision:
    verdict: Verdict
    detail: str | None = None


def _release_lock(conn: psycopg.Connection, name: str) -> None:
    try:
        conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (name,))
        conn.commit()
    except psycopg.Error:
        conn.close()  # the pool discards a closed connection; its session, and the lock, end with it


class ObjectScanner:
    def __init__(self, *, storage: StorageSettings, clamd: ClamdSettings, pool: ConnectionPool, s3: BaseClient,
                 scanner: StreamingClamd, policy: content.ContentPolicy = content.ContentPolicy()) -> None:
        self._storage = storage
        self._clamd = clamd
        self._chunk_size = clamd.chunk_size
        self._pool = pool
        self._s3 = s3
        self._scanner = scanner
        self._policy = policy
        self._archive_limits = archives.ArchiveLimits(
            max_recursion=clamd.max_recursion, max_files=clamd.max_files, max_file_size=clamd.max_file_size,
            max_scan_size=clamd.max_scan_size)
        # A duplicate delivery waits at most about as long as one scan may take (one clamd call).
        self._lock_wait_seconds = clamd.timeout_seconds + 60

    def scan(self, bucket: str, key: str, event_id: str, *, rescan_for_version: int | None = None,
             reuse_verdicts: bool = True, etag: str | None = None) -> ScanResult | None:
        """Scan the object an "object created" event names; None when there is nothing to answer.

        `rescan_for_version`: a rescan asked for by the reconcile pass after clamd's signature
        database reached that version; a file already scanned at that version (or later) is
        not read again, and only a new detection changes it. `reuse_verdicts=False`: clamd reads
        the bytes even when an earlier upload's finding could be reused (an operator's rescan).
        `etag`: the event's object. Another ETag than the one a downloadable verdict was about means the
        judged object was replaced (a one-write credential used again): the upload is judged again.
        """
        with self._object_lock(bucket, key):
            if rescan_for_version is not None:
                return self._rescan(bucket, key, event_id, rescan_for_version)
            upload = self._claim(bucket, key)
            if upload is None:
                log_event(logger, "no upload for this object; ignored", bucket=bucket, key=key, event_id=event_id)
                return None
            bind(upload_id=str(upload.id))
            if upload.status in VERDICTS:
                replaced = self._reopen_if_replaced(upload, etag, event_id)
                if replaced is None:
                    log_event(logger, "verdict already written; answered with it", outcome="already_decided",
                              verdict=upload.status)
                    return self._result_from_row(upload, already_decided=True)
                upload = replaced
            return self._scan_claimed(upload, event_id, reuse_verdicts=reuse_verdicts)

    def _reopen_if_replaced(self, upload: UploadRow, etag: str | None, event_id: str) -> UploadRow | None:
        """The upload sent back to scanning when the event names another object than the clean one its
        verdict judged; None when it is that object (a redelivery), or the verdict keeps it from download."""
        # Clean only: a released file's object is the admin's copy out of quarantine (another ETag), and
        # the admin judged it, not the scan.
        if (upload.status != UploadStatus.CLEAN or not etag or not upload.scanned_etag
                or normalise_etag(etag) == upload.scanned_etag):
            return None
        with self._pool.connection() as conn, conn.transaction():
            row = conn.cursor(row_factory=upload_row).execute(
                "UPDATE uploads SET status = %s, updated_at = now() WHERE id = %s AND status = %s RETURNING *",
                (UploadStatus.SCANNING, upload.id, UploadStatus.CLEAN)).fetchone()
            if row is not None:
                audit.record(conn, ACTOR, "upload.replaced_after_verdict", upload.id, verdict=str(upload.status),
                             scanned_etag=upload.scanned_etag, new_etag=normalise_etag(etag), event_id=event_id)
        if row is not None:
            log_event(logger, "object replaced after its verdict; scanning it again", logging.WARNING,
                      outcome="replaced", verdict=str(upload.status), scanned_etag=upload.scanned_etag)
        return row

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

    def _claim(self, bucket: str, key: str) -> UploadRow | None:
        with self._pool.connection() as conn:
            uploads = conn.cursor(row_factory=upload_row)
            row = uploads.execute(
                "UPDATE uploads SET status = %s, updated_at = now()"
                " WHERE bucket = %s AND object_key = %s AND status = ANY(%s) RETURNING *",
                (UploadStatus.SCANNING, bucket, key, values(AWAITING_VERDICT))).fetchone()
            if row is None:  # already decided, expired, aborted, or unknown
                row = uploads.execute("SELECT * FROM uploads WHERE bucket = %s AND object_key = %s",
                                      (bucket, key)).fetchone()
                if row is not None and row.status not in VERDICTS:
                    log_event(logger, "upload is not scannable in its state; ignored", upload_id=str(row.id),
                              status=row.status)
                    return None
            return row

    # -- the first scan --

    def _scan_claimed(self, upload: UploadRow, event_id: str, *, reuse_verdicts: bool) -> ScanResult:
        started = time.monotonic()
        signature_version = self._scanner.signature_version()
        scope = self._clamd.reuse_verdicts if reuse_verdicts else reuse.OFF
        with self._pool.connection() as conn:
            listed = blocklist.reason_blocked(conn, upload.declared_sha256)
            source = reuse.find_source(conn, upload, signature_version, scope) if listed is None else None
        if listed is not None:
            # The declared hash is a known-bad file: no need to read a byte (nor wait for clamd).
            bucket = self._quarantine(upload, upload.bucket, None)
            return self._record(upload, bucket, _Decision("infected", listed), upload.declared_sha256,
                                upload.declared_size, None, datetime.now(UTC), event_id, signature_version,
                                started)
        read = self._read_for_reuse(upload, source) if source is not None else None
        bucket, stream, reply, version_id = read or self._stream_through_clamd(upload)
        decision = self._decide(upload, reply, stream, bucket, version_id)
        if decision.verdict in QUARANTINED:
            bucket = self._quarantine(upload, bucket, version_id)
        else:
            if bucket == self._storage.quarantine_bucket:  # an operator's rescan of an unscannable file
                restore_from_quarantine(self._s3, self._storage, upload.object_key, target_bucket=upload.bucket)
                bucket = upload.bucket
                stream.etag = self._stored_etag(bucket, upload.object_key)  # the copy's: a download checks it
            self._tag_clean(bucket, upload.object_key)
        detected = content.sniff(stream.head)
        return self._record(upload, bucket, decision, stream.sha256.hexdigest(), stream.length, detected,
                            datetime.now(UTC), event_id, signature_version, started,
                            reused_from=source if read is not None else None, scanned_etag=stream.etag)

    def _read_for_reuse(self, upload: UploadRow, source: UploadRow) -> tuple[str, MeasuredStream, ClamdReply,
                                                                              str | None] | None:
        """The object read once without clamd, with the source's clamd finding; None when its bytes differ."""
        bucket, stream, _, version_id = self._read_object(upload, reuse.read_without_clamd)
        if not reuse.confirms(stream, upload, source):
            log_event(logger, "verdict not reused: the stored bytes are not the earlier upload's; full scan",
                      logging.WARNING, outcome="reuse_refused", reused_from=str(source.id),
                      sha256=stream.sha256.hexdigest(), declared_sha256=upload.declared_sha256)
            return None
        return bucket, stream, reuse.clamd_finding(source), version_id

    def _read_object(self, upload: UploadRow, consume: Callable[[MeasuredStream], T]) -> tuple[
            str, MeasuredStream, T, str | None]:
        """One pass over the object's bytes by `consume`; (bucket, the measured stream, what consume gave, version)."""
        bucket, body, length, version_id, etag = self._open(upload)
        stream = MeasuredStream(body, self._chunk_size, length, upload.content_type)
        stream.etag = etag  # the object the verdict is about: recorded as scanned_etag
        try:
            return bucket, stream, consume(stream), version_id
        finally:
            body.close()

    def _scan_counted(self, stream: MeasuredStream) -> ClamdReply:
        try:
            return self._scanner.scan_chunks(stream)
        finally:
            metrics.SCAN_BYTES.inc(stream.length)

    def _stream_through_clamd(self, upload: UploadRow) -> tuple[str, MeasuredStream, ClamdReply, str | None]:
        bucket, stream, reply, version_id = self._read_object(upload, self._scan_counted)
        if reply.outcome == "error":
            raise ScannerUnavailable(f"clamd could not scan: {reply.detail}")
        if reply.outcome == "unscannable" and not stream.finished:
            # clamd closed the stream at StreamMaxLength: the rest was never read, so there is no hash.
            stream.sha256 = hashlib.sha256()
        elif not stream.finished:
            raise IncompleteRead("the scan ended before the whole object was read")
        return bucket, stream, reply, version_id

    def _open(self, upload: UploadRow) -> tuple[str, Any, int, str | None, str | None]:
        """The object's body from the uploads bucket, or from quarantine when a crashed attempt already moved it."""
        key = upload.object_key
        for bucket in (upload.bucket, self._storage.quarantine_bucket):
            try:
                response = self._s3.get_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if is_missing(exc):
                    continue
                raise
            return (bucket, response["Body"], response["ContentLength"], response.get("VersionId"),
                    normalise_etag(response.get("ETag", "")) or None)
        # Deleted before it could be scanned: a retry cannot help (a 4xx goes to the dead-letter sink).
        raise Gone(f"object {key} is in neither {upload.bucket} nor the quarantine bucket")

    def _stored_etag(self, bucket: str, key: str) -> str | None:
        return normalise_etag(self._s3.head_object(Bucket=bucket, Key=key).get("ETag", "")) or None

    def _decide(self, upload: UploadRow, reply: ClamdReply, stream: MeasuredStream, bucket: str,
                version_id: str | None) -> _Decision:
        """The verdict, in the module docstring's order of precedence."""
        if reply.outcome == "infected":
            return _Decision("infected", reply.signature)
        digest = stream.sha256.hexdigest() if stream.finished else None
        with self._pool.connection() as conn:
            listed = blocklist.reason_blocked(conn, digest)
        if listed is not None:
            return _Decision("infected", listed)
        if reply.outcome == "unscannable":
            return _Decision("unscannable", reply.detail)
        if stream.length != upload.declared_size:
            return _Decision("unscannable", f"the stored object differs from what was declared: it is "
                                            f"{stream.length} bytes, {upload.declared_size} were declared")
        if upload.declared_sha256 and digest != upload.declared_sha256:
            return _Decision("unscannable", f"the stored object differs from what was declared: its SHA-256 is "
                                            f"{digest}, {upload.declared_sha256} was declared")
        detected = content.sniff(stream.head)
        names = self._inspect_archive(detected, bucket, upload.object_key, stream.length, version_id)
        if isinstance(names, archives.NotFullyScannable):
            return _Decision("unscannable", names.reason)
        if names is not None and content.looks_like_jar(names):
            detected = "application/java-archive"
        markup = stream.markup.found if stream.markup is not None else None
        reason = self._policy.check_content(upload.content_type, detected, active_markup=markup)
        if reason is not None:
            return _Decision("rejected", reason)
        return _Decision("clean")

    def _inspect_archive(self, detected: str | None, bucket: str, key: str, size: int,
                         version_id: str | None) -> archives.NotFullyScannable | list[str] | None:
        """clamd's alerts miss one case: a single entry past MaxFileSize is cut short silently.

        dropgate reads the archive's directory itself (ranged reads, not the whole object again)
        and calls anything past clamd's limits not fully scanned. Returns the finding, or the
        entry names of a ZIP (to tell a jar), or None.
        """
        if detected not in _ARCHIVES:
            return None
        reader = archives.S3RangeReader(self._s3, bucket, key, size, version_id=version_id)
        with reader:
            finding = archives.inspect(reader, self._archive_limits)
            if finding is not None or detected != "application/zip":
                return finding
            reader.seek(0)
            try:
                with zipfile.ZipFile(reader) as archive:
                    return archive.namelist()
            except zipfile.BadZipFile:
                return archives.NotFullyScannable("malformed", "the archive cannot be read")

    def _quarantine(self, upload: UploadRow, current_bucket: str, version_id: str | None) -> str:
        return move_to_quarantine(self._s3, self._storage, upload.object_key, source_bucket=current_bucket,
                                  version_id=version_id, legal_hold=bool(upload.legal_hold))

    def _tag_clean(self, bucket: str, key: str) -> None:
        self._s3.put_object_tagging(Bucket=bucket, Key=key,
                                    Tagging={"TagSet": [{"Key": "dropgate-verdict", "Value": "clean"}]})

    def _record(self, upload: UploadRow, bucket: str, decision: _Decision, sha256: str | None, size: int,
                detected: str | None, now: datetime, event_id: str, signature_version: int | None,
                started: float, *, reused_from: UploadRow | None = None,
                scanned_etag: str | None = None) -> ScanResult:
        verdict, detail = decision.verdict, decision.detail
        source_id = str(reused_from.id) if reused_from is not None else None
        with self._pool.connection() as conn, conn.transaction():
            uploads = conn.cursor(row_factory=upload_row)
            row = uploads.execute(
                "UPDATE uploads SET status = %s, scan_verdict = %s, scan_detail = %s, sha256 = %s, scanned_at = %s,"
                " stored_size = coalesce(stored_size, %s), detected_type = %s, signature_version = %s,"
                " scanned_etag = coalesce(%s, scanned_etag), updated_at = now() WHERE id = %s AND status = %s"
                " RETURNING *",
                (verdict, verdict, detail, sha256, now, size, detected, signature_version, scanned_etag, upload.id,
                 UploadStatus.SCANNING)).fetchone()
            if row is None:  # a concurrent delivery decided first; its verdict stands
                current = uploads.execute("SELECT * FROM uploads WHERE id = %s", (upload.id,)).fetchone()
                return self._result_from_row(current, already_decided=True)
            audit.record(conn, ACTOR, "scan.verdict", upload.id, verdict=verdict, detail=detail, sha256=sha256,
                         size=size, detected_type=detected, bucket=bucket, event_id=event_id,
                         signature_version=signature_version, **({"reused_from": source_id} if source_id else {}))
            if reused_from is not None:
                reuse.record(conn, ACTOR, upload, reused_from, verdict, event_id)
            conn.execute("INSERT INTO processed_events (consumer, event_id, event_type, outcome)"
                         " VALUES ('scan', %s, 'object.created', %s) ON CONFLICT DO NOTHING", (event_id, verdict))
        metrics.SCAN_VERDICTS.labels(verdict).inc()
        if source_id:
            metrics.SCAN_VERDICTS_REUSED.labels(verdict).inc()
        metrics.SCAN_DURATION.observe(time.monotonic() - started)
        log_event(logger, "scan verdict", upload_id=str(upload.id), verdict=verdict, detail=detail, size=size,
                  outcome=verdict, bucket=bucket, signature_version=signature_version, reused_from=source_id)
        return ScanResult(upload_id=str(upload.id), bucket=bucket, key=upload.object_key, verdict=verdict,
                          detail=detail, sha256=sha256, size=size, detected_type=detected, scanned_at=now,
                          signature_version=signature_version, reused_from=source_id)

    # -- a rescan after a signature update --

    def _rescan(self, bucket: str, key: str, event_id: str, wanted_version: int) -> ScanResult | None:
        """Read a downloadable file again with newer signatures; only a detection changes it.

        The file stays downloadable while it is read (it was clean under every signature known
        until now). A file already scanned at `wanted_version` or later answers None: a resumed
        or duplicated rescan request yields no second read and no second event.
        """
        with self._pool.connection() as conn:
            upload = conn.cursor(row_factory=upload_row).execute(
                "SELECT * FROM uploads WHERE bucket = %s AND object_key = %s AND status = ANY(%s)",
                (bucket, key, values(DOWNLOADABLE))).fetchone()
        if upload is None or (upload.signature_version or 0) >= wanted_version:
            return None
        bind(upload_id=str(upload.id))
        started = time.monotonic()
        signature_version = self._scanner.signature_version()
        if signature_version is None or signature_version < wanted_version:
            # This clamd has not loaded the new database yet (another replica may have): try later.
            raise ScannerUnavailable(f"clamd has signature version {signature_version}, the rescan needs "
                                     f"{wanted_version}")
        _, stream, reply, version_id = self._stream_through_clamd(upload)
        found = reply.signature if reply.outcome == "infected" else None
        if found is None and stream.finished:
            with self._pool.connection() as conn:
                found = blocklist.reason_blocked(conn, stream.sha256.hexdigest())
        if found is not None:
            new_bucket = self._quarantine(upload, upload.bucket, version_id)
        with self._pool.connection() as conn, conn.transaction():
            uploads = conn.cursor(row_factory=upload_row)
            if found is None:
                row = uploads.execute("UPDATE uploads SET signature_version = %s, updated_at = now()"
                                      " WHERE id = %s AND status = %s RETURNING *",
                                      (signature_version, upload.id, upload.status)).fetchone()
            else:
                row = uploads.execute(
                    "UPDATE uploads SET status = %s, scan_verdict = %s, scan_detail = %s, signature_version = %s,"
                    " scanned_at = now(), updated_at = now() WHERE id = %s AND status = %s RETURNING *",
                    (UploadStatus.INFECTED, UploadStatus.INFECTED, found, signature_version, upload.id,
                     upload.status)).fetchone()
            if row is None:
                return None  # expired or changed meanwhile: nothing to say
            audit.record(conn, ACTOR, "scan.rescan", upload.id, event_id=event_id, outcome="infected" if found
                         else "still_clean", detail=found, signature_version=signature_version,
                         previous_signature_version=upload.signature_version, clamd_said=reply.outcome)
        metrics.SCAN_RESCANS.labels("infected" if found else "still_clean").inc()
        if found is None:
            log_event(logger, "rescan: still clean", outcome="still_clean", signature_version=signature_version)
            return None
        metrics.SCAN_VERDICTS.labels("infected").inc()
        metrics.SCAN_DURATION.observe(time.monotonic() - started)
        log_event(logger, "rescan: infected", logging.WARNING, outcome="infected", detail=found,
                  signature_version=signature_version)
        return ScanResult(upload_id=str(upload.id), bucket=new_bucket, key=upload.object_key,
                          verdict="infected", detail=found, sha256=row.sha256, size=row.stored_size or 0,
                          detected_type=row.detected_type, scanned_at=row.scanned_at,
                          signature_version=signature_version, rescan=True)

    def _result_from_row(self, row: UploadRow, *, already_decided: bool) -> ScanResult:
        in_quarantine = row.status in QUARANTINED
        return ScanResult(
            upload_id=str(row.id), bucket=self._storage.quarantine_bucket if in_quarantine else row.bucket,
            key=row.object_key, verdict=cast(Verdict, str(row.status)), detail=row.scan_detail, sha256=row.sha256,
            size=row.stored_size or row.declared_size, detected_type=row.detected_type,
            scanned_at=row.scanned_at or datetime.now(UTC), signature_version=row.signature_version,
            already_decided=already_decided)
