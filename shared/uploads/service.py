"""The upload lifecycle behind presign: create, sign parts, resume, complete, abort, download.

Invariants kept here (presign's main.py only parses and maps):
- file bytes never pass through: the browser PUTs each part to a presigned URL bound to
  the part's exact length (and SHA-256 when given); a clean file is served only as judged;
- nothing is left half-created: the row and the S3 multipart upload are created together or
  not at all; a completion that does not add up aborts, deletes and records why;
- owners see only their own uploads (others' are 404, not 403, so ids leak nothing);
- every state change writes the audit log in the same transaction.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from botocore.client import BaseClient
from psycopg_pool import ConnectionPool

from events.types import ObjectCreated
from shared.platform import audit, metrics
from shared.platform.audit import Actor
from shared.platform.auth import ROLE_ADMIN, ROLE_UPLOADER, Principal
from shared.platform.errors import (
    ApiError,
    BadRequest,
    Conflict,
    DependencyUnavailable,
    Forbidden,
    Gone,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from shared.platform.logs import bind, log_event
from shared.platform.lru import LruCache
from shared.platform.settings import (
    LimitSettings,
    StorageSettings,
)
from shared.platform.sigv4 import PresignedUrl, PresignSigner
from shared.scanning.content_policy import ContentPolicy, download_type
from shared.uploads import repository
from shared.uploads.completion import completion_problem
from shared.uploads.limits import (
    check_request_count,
    count_request,
    forget_old_windows,
    rate_window,
    reserve_upload_quota,
)
from shared.uploads.model import (
    AWAITING_VERDICT,
    CHECKED_AT_COMPLETION,
    COMPLETED,
    DOWNLOADABLE,
    GONE,
    QUARANTINED,
    StoredPart,
    UploadRow,
    UploadStatus,
    object_key,
)
from shared.uploads.multipart import MultipartStorage
from shared.uploads.parts import (
    choose_part_size,
    part_count,
    part_length,
)
from shared.uploads.requests import (
    CompletedPart,
    NewUpload,
    PartRequest,
    content_disposition,
    normalise_etag,
    sanitise_filename,
)

logger = logging.getLogger("dropgate.uploads")

DOWNLOAD_URL_SECONDS = 300
# Storage calls that run beside the database's work (create): one per request a pod serves at once
# (presign's containerConcurrency, 16).
PARALLEL_STORAGE_CALLS = 16
STORAGE_IDS_REMEMBERED = 10_000  # UploadIds per process (a few MB at most)


class UploadService:
    def __init__(self, *, storage: StorageSettings, limits: LimitSettings, pool: ConnectionPool, s3: BaseClient,
                 signer: PresignSigner, content: ContentPolicy = ContentPolicy(),
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 announce: Callable[[ObjectCreated], None] | None = None) -> None:
        """`content` is the content policy (DROPGATE_ALLOWED_CONTENT_TYPES, DROPGATE_DENIED_CONTENT) whose
        cheap half, the declared type and file name, `create` applies; scan applies the rest to the bytes.
        `announce`, when given, is presign's fast path: it gets each completed upload's "object created"
        event (the canonical one, shared.retention.reconcile), so a lost storage notification costs no delay."""
        self._storage = storage
        self._limits = limits
        self._content = content
        self._pool = pool
        self._s3 = s3
        self._storage_calls = MultipartStorage(s3, storage)
        self._signer = signer
        self._clock = clock
        self._announce = announce
        # S3 UploadId -> (upload id, owner, key): fixed at create, asked for by every Companion-route call.
        self._storage_ids: LruCache[str, tuple[str, str, str]] = LruCache(STORAGE_IDS_REMEMBERED)
        self._in_parallel = ThreadPoolExecutor(PARALLEL_STORAGE_CALLS, thread_name_prefix="storage")

    @property
    def bucket(self) -> str:
        return self._storage.uploads_bucket

    @property
    def requires_part_checksums(self) -> bool:
        return self._storage_calls.requires_part_checksums

    # -- every authenticated request --

    def count_request(self, principal: Principal) -> None:
        with self._pool.connection() as conn:
            count_request(conn, principal.subject, self._limits.requests_per_minute, self._clock())

    # -- create --

    def create(self, principal: Principal, new: NewUpload, actor: Actor, *,
               part_size_rule: Callable[[int], int] | None = None, multipart: bool = True,
               start_in_storage: bool = True, client_ref: str | None = None) -> UploadRow:
        """`part_size_rule` lets a client that splits files its own way (Uppy) say how; the default is ours.

        `multipart=False`: the file goes to storage in one write (a PUT or a POST policy, shared/uploads/
        browser_s3.py), so storage starts no multipart upload; the row is the whole registration.
        `start_in_storage=False`: the browser starts the multipart upload itself with a URL presign signs
        (Uppy 6's signRequest mode); its UploadId is bound to the row when the first part is signed.
        `client_ref`: the browser's own handle for the file. A create that names the handle of the
        caller's pending upload of the same file is a retry (migration 0009) and gets that upload back."""
        principal.require(ROLE_UPLOADER)
        limits = self._limits
        if new.size > limits.max_upload_size:
            raise PayloadTooLarge(f"size {new.size} is over the limit of {limits.max_upload_size} bytes")
        if new.size < limits.min_upload_size:
            raise BadRequest(f"size {new.size} is under the minimum of {limits.min_upload_size} bytes")
        refused = self._content.check_declared(new.content_type, new.filename)
        if refused:
            raise UnsupportedMediaType(refused)
        if not multipart:
            part_size = max(new.size, 1)
        elif part_size_rule is None:
            part_size = choose_part_size(new.size, limits.default_part_size)
        else:
            part_size = part_size_rule(new.size)
        if client_ref is not None:
            with self._pool.connection() as conn:
                retried = repository.pending_retry(conn, principal.subject, client_ref, new.size, new.content_type,
                                                   sanitise_filename(new.filename), part_size)
            if retried is not None:
                return retried
        return self._create(principal, new, part_size, actor, start_in_storage=multipart and start_in_storage,
                            client_ref=client_ref)

    def _create(self, principal: Principal, new: NewUpload, part_size: int, actor: Actor, *,
                start_in_storage: bool, client_ref: str | None = None) -> UploadRow:
        now = self._clock()
        upload_id = uuid.uuid4()
        key = object_key(now, upload_id)
        filename = sanitise_filename(new.filename)
        # Storage's CreateMultipartUpload runs while the database checks the quota: the two waits overlap
        # instead of adding up. The row is written only once storage has answered, in the same transaction.
        started: Future[str | None] = Future()
        if start_in_storage:
            started = self._in_parallel.submit(
                contextvars.copy_context().run, self._storage_calls.start, self.bucket, key,
                content_type=new.content_type, upload_id=upload_id, filename=filename, declared_sha256=new.sha256)
        else:
            started.set_result(None)
        try:
            with self._pool.connection() as conn, conn.transaction():
                reserve_upload_quota(conn, principal.subject, new.size, self._limits, now)
                row = repository.insert_audited(
                    conn, upload_id=upload_id, owner=principal.subject, bucket=self.bucket, key=key,
                    filename=filename, content_type=new.content_type, size=new.size, part_size=part_size,
                    part_count=part_count(new.size, part_size), declared_sha256=new.sha256,
                    expires_at=now + timedelta(days=self._limits.retention_days), now=now,
                    storage_upload_id=started.result(), client_ref=client_ref,
                    audited=audit.Entry(actor, "upload.created", {"filename": filename, "size": new.size,
                                                                  "content_type": new.content_type, "key": key}))
        except BaseException:
            # The row did not commit (a quota refused it, the database or storage failed): the multipart
            # upload, if storage made one, must not outlive it.
            self._abort_if_started(key, started)
            raise
        metrics.UPLOADS_CREATED.inc()
        bind(upload_id=str(upload_id))
        log_event(logger, "upload created", outcome="created", key=key, size=new.size, parts=row.part_count,
                  content_type=new.content_type, owner=principal.subject)
        return row

    def _abort_if_started(self, key: str, started: Future[str | None]) -> None:
        try:
            storage_upload_id = started.result()
        except Exception:  # noqa: BLE001 - storage made no multipart upload: nothing to abort
            return
        if storage_upload_id is None:
            return
        with contextlib.suppress(DependencyUnavailable):
            self._storage_calls.abort(self.bucket, key, storage_upload_id)

    # -- reading --

    def _load(self, conn: psycopg.Connection, principal: Principal, upload_id: str, *,
              for_update: bool = False, admin_may_see: bool = False) -> UploadRow:
        try:
            parsed = uuid.UUID(upload_id)
        except ValueError:
            raise NotFound(f"no upload {upload_id}") from None
        row = repository.load(conn, parsed, for_update=for_update)
        if row is None or (row.owner != principal.subject and not (admin_may_see and principal.is_admin)):
            raise NotFound(f"no upload {upload_id}")
        return row

    def _load_counting(self, principal: Principal, upload_id: str) -> UploadRow:
        """`count_request` and `_load` in one statement (repository.load_counting_request). The count
        commits before any refusal is raised: a request for an upload that is not there counts too."""
        try:
            parsed = uuid.UUID(upload_id)
        except ValueError:
            self.count_request(principal)
            raise NotFound(f"no upload {upload_id}") from None
        now = self._clock()
        with self._pool.connection() as conn:
            requests, row = repository.load_counting_request(conn, parsed, principal.subject, rate_window(now))
            forget_old_windows(conn, now)
        check_request_count(requests, self._limits.requests_per_minute, now)
        if row is None or row.owner != principal.subject:
            raise NotFound(f"no upload {upload_id}")
        return row

    def find_by_storage_id(self, principal: Principal, storage_upload_id: str, key: str | None, *,
                           count_refusal: bool = False) -> str:
        """The dropgate id of an upload known by its S3 UploadId (and key), as Uppy's Companion routes name it.

        What it answers never changes (an UploadId, its upload, owner and key are fixed at create),
        so it is remembered per process: Uppy names the upload this way for every part it signs.
        """
        known = self._storage_ids.get(storage_upload_id)
        if known is None:
            with self._pool.connection() as conn:
                row = repository.find_by_storage_upload_id(conn, storage_upload_id)
            if row is not None:
                known = self._storage_ids.put(storage_upload_id, (str(row.id), row.owner, row.object_key))
        if known is None or known[1] != principal.subject or (key is not None and key != known[2]):
            if count_refusal:  # the route counts its requests when it signs: a refused one still counts
                self.count_request(principal)
            raise NotFound(f"no upload {storage_upload_id}")
        return known[0]

    def describe(self, principal: Principal, upload_id: str) -> tuple[UploadRow, list[StoredPart]]:
        with self._pool.connection() as conn:
            upload = self._load(conn, principal, upload_id, admin_may_see=True)
        parts = self._stored_parts(upload) if upload.status == UploadStatus.PENDING else []
        return upload, parts

    def _stored_parts(self, upload: UploadRow) -> list[StoredPart]:
        if upload.storage_upload_id is None:  # one write, or a browser's multipart upload not bound yet
            return []
        return self._storage_calls.stored_parts(upload.bucket, upload.object_key, upload.storage_upload_id)

    def list_files(self, principal: Principal, *, everyone: bool, limit: int = 100,
                   before: datetime | None = None) -> list[UploadRow]:
        if everyone:
            principal.require(ROLE_ADMIN)
        with self._pool.connection() as conn:
            return repository.newest(conn, owner=None if everyone else principal.subject, before=before, limit=limit)

    # -- parts --

    def sign_parts(self, principal: Principal, upload_id: str, requests: Iterable[PartRequest], *,
                   count_request: bool = False) -> list[dict]:
        """`count_request`: this call counts the request against the rate limit too, in the statement
        that reads the upload (the route then skips `count_request`): Uppy asks once per part."""
        if count_request:
            upload = self._load_counting(principal, upload_id)
        else:
            with self._pool.connection() as conn:
                upload = self._load(conn, principal, upload_id)
        return self.sign_part_urls(upload, requests)

    def owned(self, principal: Principal, upload_id: str) -> UploadRow:
        return self._load_counting(principal, upload_id)  # 404 for anyone else's; the request counted

    def bind_storage_upload(self, upload: UploadRow, storage_upload_id: str) -> UploadRow:
        """The multipart upload the browser started itself, recorded on its row the first time it is named;
        409 when the row names another one (or is no longer pending)."""
        if upload.storage_upload_id == storage_upload_id:
            return upload
        with self._pool.connection() as conn:
            bound = repository.bind_storage_upload_id(conn, upload.id, storage_upload_id)
        if bound is None:
            raise Conflict(f"upload {upload.id} is {upload.status} with another multipart upload; start a new one")
        return bound

    def sign_part_urls(self, upload: UploadRow, requests: Iterable[PartRequest]) -> list[dict]:
        """Part URLs of a pending upload the caller owns, each bound to its part's exact length."""
        self._require_pending(upload)
        expiry = self._limits.url_expiry_seconds
        now = self._clock()
        signed = []
        for request in requests:
            if not 1 <= request.number <= upload.part_count:
                raise BadRequest(f"part {request.number} does not exist; this upload has parts 1..{upload.part_count}")
            headers = {"Content-Length": str(part_length(request.number, upload.declared_size, upload.part_size))}
            if not request.sha256_base64 and self._storage_calls.requires_part_checksums:
                raise BadRequest(f"part {request.number} needs its sha256: this storage takes only parts that carry "
                                 "their SHA-256 (DROPGATE_S3_PART_CHECKSUMS=required)")
            if request.sha256_base64:
                headers["x-amz-checksum-sha256"] = request.sha256_base64
            url = self._signer.presign("PUT", upload.bucket, upload.object_key,
                                       query={"partNumber": str(request.number),
                                              "uploadId": upload.storage_upload_id},
                                       headers=headers, expires_in=expiry, now=now)
            signed.append({"number": request.number, "url": url.url, "headers": url.headers,
                           "expires_at": url.expires_at.isoformat()})
        metrics.PART_URLS_SIGNED.inc(len(signed))
        bind(upload_id=str(upload.id))
        log_event(logger, "part urls signed", outcome="signed", parts=[part["number"] for part in signed],
                  expires_in=expiry)  # never the URLs: they are credentials until they expire
        return signed

    @staticmethod
    def _require_pending(upload: UploadRow) -> None:
        if upload.status != UploadStatus.PENDING:
            raise Conflict(f"upload is {upload.status}, not pending")

    # -- complete / abort --

    def complete(self, principal: Principal, upload_id: str, claimed: list[CompletedPart], actor: Actor) -> UploadRow:
        with self._pool.connection() as conn, conn.transaction():
            upload = self._load(conn, principal, upload_id, for_update=True)
            if upload.status not in COMPLETED and upload.status != UploadStatus.PENDING:
                raise Conflict(f"upload is {upload.status}, not pending")
            stored = self._stored_parts(upload) if upload.status in CHECKED_AT_COMPLETION else []
            if upload.status != UploadStatus.PENDING:
                if not stored:
                    return upload  # a retried completion: storage completed it; same answer, nothing done twice
                # The row says completed, yet storage still holds the multipart upload open, with parts:
                # something moved the row without storage (an event that was not storage's). Storage decides.
                audit.record(conn, actor, "upload.state_disagreed_with_storage", upload.id,
                             status=str(upload.status), parts_in_storage=len(stored))
                log_event(logger, "the row said completed, storage did not; completing now", logging.WARNING,
                          outcome="repaired", status=str(upload.status), parts_in_storage=len(stored))
            problem = completion_problem(upload, claimed, stored)
            # No parts left in storage: a completion that died between storage and its commit may have
            # completed this very upload already. Then this retry records it; aborting would delete the file.
            etag = self._completed_earlier(upload) if problem is not None and not stored else None
            if etag is not None:
                problem = None
                updated = self._record_completion(conn, upload, claimed, etag, actor, found_completed=True)
            elif problem is None:
                updated = self._complete_in_storage(conn, upload, claimed, stored, actor)
            else:
                self._storage_calls.abort(upload.bucket, upload.object_key, upload.storage_upload_id)
                self._storage_calls.delete(upload.bucket, upload.object_key)
                repository.mark_aborted(conn, upload.id, problem)
                audit.record(conn, actor, "upload.rejected_at_completion", upload.id, reason=problem)
        # Raised after the transaction committed: the abort and its record stay.
        bind(upload_id=str(upload.id))
        if problem is not None:
            metrics.UPLOADS_ABORTED.labels("completion_check").inc()
            log_event(logger, "upload aborted at completion", logging.WARNING, outcome="aborted", reason=problem)
            raise BadRequest(f"upload aborted: {problem}")
        metrics.UPLOADS_COMPLETED.inc()
        log_event(logger, "upload completed", outcome="completed", parts=len(claimed), etag=updated.etag)
        self._announce_completion(updated)
        return updated

    def _announce_completion(self, row: UploadRow) -> None:
        """The fast path: send the object's canonical "object created" event now, after the commit.

        Best effort: the completion stands whatever happens here, because the reconciliation pass
        re-drives an upload whose event went missing. The event id is the one every re-drive of
        this object version uses, and scan answers a later storage notification with the verdict.
        """
        if self._announce is None:
            return
        # Cold start: only this opt-in path (DROPGATE_EMIT_ON_COMPLETE) needs the reconcile pass's event
        # builder, which imports the whole scan stack (archives, clamd's client); presign does not otherwise.
        from shared.retention.reconcile import object_created_event

        try:
            head = self._storage_calls.head(row.bucket, row.object_key)
            if head is None:
                raise Gone(f"{row.object_key} is not in storage")
            self._announce(object_created_event(row, head))
        except ApiError as exc:
            log_event(logger, "completion not announced; the reconciliation pass will re-drive it", logging.WARNING,
                      outcome="not_announced", error=f"{type(exc).__name__}: {exc}"[:300])

    def _complete_in_storage(self, conn: psycopg.Connection, row: UploadRow, claimed: list[CompletedPart],
                             stored: list[StoredPart], actor: Actor) -> UploadRow:
        etag = self._storage_calls.complete(row.bucket, row.object_key, row.storage_upload_id, claimed, stored)
        return self._record_completion(conn, row, claimed, etag, actor)

    def _record_completion(self, conn: psycopg.Connection, row: UploadRow, claimed: list[CompletedPart],
                           etag: str, actor: Actor, **detail: Any) -> UploadRow:
        updated = repository.mark_uploaded(conn, row.id, etag)
        audit.record(conn, actor, "upload.completed", row.id, parts=len(claimed), etag=updated.etag, **detail)
        return updated

    def _completed_earlier(self, row: UploadRow) -> str | None:
        """The object's ETag when storage already holds this upload's completed object, else None.

        Only presign completes multipart uploads, and only after checking the parts, so an object at
        the upload's key that carries its id and declared size is that completion's result.
        """
        head = self._storage_calls.head(row.bucket, row.object_key)
        if head is None:
            return None
        if head.get("Metadata", {}).get("upload-id") != str(row.id) or head.get("ContentLength") != row.declared_size:
            return None
        return normalise_etag(head.get("ETag", ""))

    def abort(self, principal: Principal, upload_id: str, actor: Actor, *, in_storage: bool = True) -> UploadRow:
        """`in_storage=False`: the browser aborts it itself (Uppy 6's signRequest mode; expire's sweep if not)."""
        with self._pool.connection() as conn, conn.transaction():
            upload = self._load(conn, principal, upload_id, for_update=True)
            if upload.status == UploadStatus.ABORTED:
                return upload
            self._require_pending(upload)
            if in_storage and upload.storage_upload_id is not None:
                self._storage_calls.abort(upload.bucket, upload.object_key, upload.storage_upload_id)
            row = repository.mark_aborted(conn, upload.id, "cancelled by the user")
            audit.record(conn, actor, "upload.aborted", upload.id)
        metrics.UPLOADS_ABORTED.labels("user").inc()
        bind(upload_id=str(upload.id))
        log_event(logger, "upload aborted", outcome="aborted", reason="cancelled by the user")
        return row

    # -- files --

    def download_url(self, principal: Principal, file_id: str, actor: Actor) -> PresignedUrl:
        with self._pool.connection() as conn, conn.transaction():
            upload = self._load(conn, principal, file_id, admin_may_see=True)
            status = upload.status
            if status in AWAITING_VERDICT:
                raise Conflict(f"the file is {status} and can be downloaded once scanned clean",
                               headers={"Retry-After": "5"})
            if status in GONE:
                raise Gone(f"the file is {status}")
            if status not in DOWNLOADABLE:
                raise Forbidden(f"the file is {status} and will not be served"
                                + (f": {upload.scan_detail}" if upload.scan_detail else ""))
            self._require_judged_object(upload)
            audit.record(conn, actor, "file.download_url", upload.id)
        metrics.DOWNLOAD_URLS_SIGNED.inc()
        bind(upload_id=str(upload.id))
        log_event(logger, "download url signed", outcome="signed", expires_in=min(
            DOWNLOAD_URL_SECONDS, self._limits.url_expiry_seconds))
        return self._signer.presign(
            "GET", upload.bucket, upload.object_key,
            # The type sniffed from the bytes, never the client's claim, and always as an attachment.
            query={"response-content-disposition": content_disposition(upload.filename),
                   "response-content-type": download_type(upload.detected_type)},
            expires_in=min(DOWNLOAD_URL_SECONDS, self._limits.url_expiry_seconds), now=self._clock())

    def _require_judged_object(self, upload: UploadRow) -> None:
        """A clean file is served only while storage holds the object its scan judged (migration 0011)."""
        if upload.status != UploadStatus.CLEAN or upload.scanned_etag is None:
            return
        head = self._storage_calls.head(upload.bucket, upload.object_key)
        if head is None:
            raise Gone("the file is no longer in storage")
        if normalise_etag(head.get("ETag", "")) != upload.scanned_etag:
            raise Conflict("the stored file changed after it was checked; it is checked again before it can be "
                           "downloaded", headers={"Retry-After": "5"})

    def set_legal_hold(self, principal: Principal, file_id: str, on: bool, actor: Actor) -> UploadRow:
        principal.require(ROLE_ADMIN)
        with self._pool.connection() as conn, conn.transaction():
            upload = self._load(conn, principal, file_id, for_update=True, admin_may_see=True)
            if upload.status in GONE:
                raise Gone(f"the file is {upload.status}; there is nothing left to hold")
            object_lock = self._set_object_legal_hold(upload, on)
            row = repository.set_legal_hold(conn, upload.id, on)
            audit.record(conn, actor, "file.legal_hold_set" if on else "file.legal_hold_released", upload.id,
                         object_lock=object_lock)
        return row

    def _set_object_legal_hold(self, upload: UploadRow, on: bool) -> str:
        """Mirror the hold in S3 Object Lock where the bucket has it; the database flag is what expire obeys."""
        if upload.status == UploadStatus.PENDING:
            return "not yet an object"
        bucket = self._storage.quarantine_bucket if upload.status in QUARANTINED else upload.bucket
        return self._storage_calls.set_legal_hold(bucket, upload.object_key, on)
