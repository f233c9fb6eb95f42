"""The upload lifecycle behind presign: create, sign parts, resume, complete, abort, download.

Invariants kept here (presign's main.py only parses and maps):
- file bytes never pass through: the browser PUTs each part to a presigned URL
  that is bound to the part's exact length (and SHA-256 when given);
- nothing is left half-created: the row and the S3 multipart upload are created
  together or not at all, and a completion that does not add up aborts the
  multipart upload, deletes what storage holds and records why;
- owners see only their own uploads (others' are 404, not 403, so ids leak nothing);
- every state change writes the audit log in the same transaction.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import math
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import psycopg
from botocore.client import BaseClient
from botocore.exceptions import BotoCoreError, ClientError
from psycopg_pool import ConnectionPool

from events.types import ObjectCreated
from shared.platform import audit, metrics, tracing
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
from shared.platform.settings import (
    MIB,
    S3_MAX_PART_SIZE,
    S3_MAX_PARTS,
    S3_MIN_PART_SIZE,
    LimitSettings,
    StorageSettings,
)
from shared.platform.storage import sse_arguments
from shared.retention.reconcile import object_created_event
from shared.scanning.content_policy import ContentPolicy, download_type
from shared.uploads.limits import count_request, reserve_upload_quota
from shared.uploads.model import (
    AWAITING_VERDICT,
    COMPLETED,
    DOWNLOADABLE,
    GONE,
    QUARANTINED,
)
from shared.uploads.sigv4 import PresignedUrl, PresignSigner

logger = logging.getLogger("dropgate.uploads")

MAX_PARTS_PER_BATCH = 1000
DOWNLOAD_URL_SECONDS = 300
_CONTENT_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
_HEX_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


# -- requests, as parsed from JSON --

@dataclass(frozen=True)
class NewUpload:
    filename: str
    size: int
    content_type: str
    sha256: str | None  # lowercase hex of the whole file, when the client knows it

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> NewUpload:
        problems = []
        filename = body.get("filename")
        if not isinstance(filename, str) or not filename.strip():
            problems.append("filename: required, a non-empty string")
        size = body.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            problems.append("size: required, the file's length in bytes (a non-negative integer)")
        content_type = body.get("content_type", "application/octet-stream")
        if not isinstance(content_type, str) or not _CONTENT_TYPE.match(content_type.split(";")[0].strip().lower()):
            problems.append("content_type: expected a MIME type such as application/pdf")
        sha256 = body.get("sha256")
        if sha256 is not None and (not isinstance(sha256, str) or not _HEX_SHA256.match(sha256)):
            problems.append("sha256: expected 64 hexadecimal characters")
        if problems:
            raise BadRequest("; ".join(problems))
        return cls(filename=filename, size=size, content_type=content_type.split(";")[0].strip().lower(),
                   sha256=sha256.lower() if sha256 else None)


@dataclass(frozen=True)
class PartRequest:
    number: int
    sha256_base64: str | None

    @classmethod
    def list_from_json(cls, body: dict[str, Any]) -> list[PartRequest]:
        parts = body.get("parts")
        if not isinstance(parts, list) or not parts:
            raise BadRequest("parts: required, a non-empty list of {number, sha256?}")
        if len(parts) > MAX_PARTS_PER_BATCH:
            raise BadRequest(f"parts: at most {MAX_PARTS_PER_BATCH} per request")
        parsed = []
        for index, part in enumerate(parts):
            if not isinstance(part, dict):
                raise BadRequest(f"parts[{index}]: expected an object")
            number = part.get("number")
            if not isinstance(number, int) or isinstance(number, bool):
                raise BadRequest(f"parts[{index}].number: required integer")
            parsed.append(cls(number=number, sha256_base64=part_checksum(part.get("sha256"), f"parts[{index}].sha256")))
        return parsed


@dataclass(frozen=True)
class CompletedPart:
    number: int
    etag: str

    @classmethod
    def list_from_json(cls, body: dict[str, Any], *, number_key: str = "number",
                       etag_key: str = "etag") -> list[CompletedPart]:
        parts = body.get("parts")
        if not isinstance(parts, list) or not parts:
            raise BadRequest(f"parts: required, a non-empty list of {{{number_key}, {etag_key}}}")
        parsed = []
        for index, part in enumerate(parts):
            number = part.get(number_key) if isinstance(part, dict) else None
            etag = part.get(etag_key) if isinstance(part, dict) else None
            if isinstance(number, str) and number.isdigit():
                number = int(number)
            if not isinstance(number, int) or isinstance(number, bool) or not isinstance(etag, str) or not etag:
                raise BadRequest(f"parts[{index}]: expected {{{number_key}: integer, {etag_key}: string}}")
            parsed.append(cls(number=number, etag=normalise_etag(etag)))
        return parsed


def part_checksum(value: Any, field: str) -> str | None:
    """A part's SHA-256 as S3 wants it (base64), from base64 or hex."""
    if value is None:
        return None
    if isinstance(value, str):
        if _HEX_SHA256.match(value):
            return base64.b64encode(bytes.fromhex(value)).decode()
        try:
            if len(base64.b64decode(value, validate=True)) == 32:
                return value
        except (binascii.Error, ValueError):
            pass
    raise BadRequest(f"{field}: expected the part's SHA-256, base64 (44 characters) or hex (64)")


def normalise_etag(etag: str) -> str:
    return etag.strip().strip('"')


# -- pure helpers --

def choose_part_size(size: int, default_part_size: int) -> int:
    """The default (8 MiB) unless the file needs bigger parts to stay within 10,000; whole MiB, at least 5 MiB."""
    needed = math.ceil(size / S3_MAX_PARTS) if size else 0
    part_size = max(default_part_size, S3_MIN_PART_SIZE, math.ceil(needed / MIB) * MIB)
    return min(part_size, S3_MAX_PART_SIZE)


def part_count(size: int, part_size: int) -> int:
    return max(1, math.ceil(size / part_size))


def part_length(number: int, size: int, part_size: int) -> int:
    """Bytes in part `number` (1-based): full parts, then whatever is left."""
    return min(part_size, size - (number - 1) * part_size) if size else 0


def sanitise_filename(raw: str) -> str:
    """The last path component, normalised, without control or quoting characters, at most 200 characters."""
    name = unicodedata.normalize("NFC", raw).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C" and ch not in '"<>:|?*')
    name = name.strip().strip(".") or "file"
    return name[:200]


def content_disposition(filename: str) -> str:
    """RFC 6266: an ASCII fallback plus the exact UTF-8 name."""
    ascii_name = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode() or "file"
    ascii_name = re.sub(r"[^A-Za-z0-9._ -]", "_", ascii_name)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


# -- results --

@dataclass(frozen=True)
class Upload:
    row: dict[str, Any]

    @property
    def id(self) -> uuid.UUID:
        return self.row["id"]

    @property
    def status(self) -> str:
        return self.row["status"]

    def public(self) -> dict[str, Any]:
        """What the API shows of an upload."""
        row = self.row
        return {
            "id": str(row["id"]), "key": row["object_key"], "upload_id": row["storage_upload_id"],
            "filename": row["filename"], "content_type": row["content_type"], "size": row["declared_size"],
            "part_size": row["part_size"], "part_count": row["part_count"], "status": row["status"],
            "status_reason": row["status_reason"], "sha256": row["sha256"] or row["declared_sha256"],
            "scan_verdict": row["scan_verdict"], "legal_hold": row["legal_hold"],
            # Why a file is not downloadable, in words (e.g. "archive nested deeper than 17 levels").
            "scan_detail": row["scan_detail"], "detected_type": row["detected_type"],
            "created_at": row["created_at"].isoformat(), "expires_at": row["expires_at"].isoformat(),
            "completed_at": row["completed_at"].isoformat() if row["completed_at"] else None,
        }


@dataclass(frozen=True)
class StoredPart:
    number: int
    size: int
    etag: str

    def public(self) -> dict[str, Any]:
        return {"number": self.number, "size": self.size, "etag": self.etag}


def _storage_unavailable(exc: Exception) -> DependencyUnavailable:
    return DependencyUnavailable(f"storage is unavailable: {exc}", headers={"Retry-After": "5"})


def _is_missing_upload(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("NoSuchUpload", "404", "NoSuchKey")


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
        self._signer = signer
        self._clock = clock
        self._announce = announce

    @property
    def bucket(self) -> str:
        return self._storage.uploads_bucket

    # -- every authenticated request --

    def count_request(self, principal: Principal) -> None:
        with self._pool.connection() as conn:
            count_request(conn, principal.subject, self._limits.requests_per_minute, self._clock())

    # -- create --

    def create(self, principal: Principal, new: NewUpload, actor: Actor, *,
               part_size_rule: Callable[[int], int] | None = None) -> Upload:
        """`part_size_rule` lets a client that splits files its own way (Uppy) say how; the default is ours."""
        principal.require(ROLE_UPLOADER)
        limits = self._limits
        if new.size > limits.max_upload_size:
            raise PayloadTooLarge(f"size {new.size} is over the limit of {limits.max_upload_size} bytes")
        if new.size < limits.min_upload_size:
            raise BadRequest(f"size {new.size} is under the minimum of {limits.min_upload_size} bytes")
        refused = self._content.check_declared(new.content_type, new.filename)
        if refused:
            raise UnsupportedMediaType(refused)
        if part_size_rule is None:
            part_size = choose_part_size(new.size, limits.default_part_size)
        else:
            part_size = part_size_rule(new.size)
        return self._create(principal, new, part_size, actor)

    def _create(self, principal: Principal, new: NewUpload, part_size: int, actor: Actor) -> Upload:
        now = self._clock()
        upload_id = uuid.uuid4()
        # Server-generated, unguessable, and free of anything the user typed.
        key = f"uploads/{now:%Y/%m/%d}/{upload_id}"
        filename = sanitise_filename(new.filename)
        storage_upload_id = None
        try:
            with self._pool.connection() as conn, conn.transaction():
                reserve_upload_quota(conn, principal.subject, new.size, self._limits, now)
                conn.execute(
                    "INSERT INTO uploads (id, owner, bucket, object_key, filename, content_type, declared_size,"
                    " part_size, part_count, declared_sha256, expires_at, created_at, updated_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (upload_id, principal.subject, self.bucket, key, filename, new.content_type, new.size,
                     part_size, part_count(new.size, part_size), new.sha256,
                     now + timedelta(days=self._limits.retention_days), now, now))
                # Storage last, inside the transaction: if it fails, the row rolls back with it.
                storage_upload_id = self._start_multipart(key, new, upload_id, filename)
                row = conn.execute("UPDATE uploads SET storage_upload_id = %s WHERE id = %s RETURNING *",
                                   (storage_upload_id, upload_id)).fetchone()
                audit.record(conn, actor, "upload.created", upload_id, filename=filename, size=new.size,
                             content_type=new.content_type, key=key)
        except BaseException:
            # The row did not commit: the multipart upload must not outlive it.
            if storage_upload_id is not None:
                with contextlib.suppress(DependencyUnavailable):
                    self._abort_multipart(key, storage_upload_id)
            raise
        metrics.UPLOADS_CREATED.inc()
        bind(upload_id=str(upload_id))
        log_event(logger, "upload created", outcome="created", key=key, size=new.size, parts=row["part_count"],
                  content_type=new.content_type, owner=principal.subject)
        return Upload(row)

    def _start_multipart(self, key: str, new: NewUpload, upload_id: uuid.UUID, filename: str) -> str:
        metadata = {"upload-id": str(upload_id), "filename": quote(filename, safe="")}
        if new.sha256:
            metadata["declared-sha256"] = new.sha256
        traceparent = tracing.current_traceparent()
        if traceparent:
            # The object keeps it, and storage's notification repeats it: how the trace crosses storage.
            metadata[tracing.TRACEPARENT] = traceparent
        try:
            response = self._s3.create_multipart_upload(
                Bucket=self.bucket, Key=key, ContentType=new.content_type, Metadata=metadata,
                **sse_arguments(self._storage))
        except (ClientError, BotoCoreError) as exc:
            raise _storage_unavailable(exc) from exc
        return response["UploadId"]

    def _abort_multipart(self, key: str, storage_upload_id: str) -> None:
        try:
            self._s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=storage_upload_id)
        except ClientError as exc:
            if not _is_missing_upload(exc):
                raise _storage_unavailable(exc) from exc
        except BotoCoreError as exc:
            raise _storage_unavailable(exc) from exc

    # -- reading --

    def _load(self, conn: psycopg.Connection, principal: Principal, upload_id: str, *,
              for_update: bool = False, admin_may_see: bool = False) -> Upload:
        try:
            parsed = uuid.UUID(upload_id)
        except ValueError:
            raise NotFound(f"no upload {upload_id}") from None
        row = conn.execute("SELECT * FROM uploads WHERE id = %s" + (" FOR UPDATE" if for_update else ""),
                           (parsed,)).fetchone()
        if row is None or (row["owner"] != principal.subject and not (admin_may_see and principal.is_admin)):
            raise NotFound(f"no upload {upload_id}")
        return Upload(row)

    def find_by_storage_id(self, principal: Principal, storage_upload_id: str, key: str | None) -> str:
        """The dropgate id of an upload known by its S3 UploadId (and key), as Uppy's Companion routes name it."""
        with self._pool.connection() as conn:
            row = conn.execute("SELECT id, object_key, owner FROM uploads WHERE storage_upload_id = %s",
                               (storage_upload_id,)).fetchone()
        if row is None or row["owner"] != principal.subject or (key is not None and key != row["object_key"]):
            raise NotFound(f"no upload {storage_upload_id}")
        return str(row["id"])

    def describe(self, principal: Principal, upload_id: str) -> tuple[Upload, list[StoredPart]]:
        with self._pool.connection() as conn:
            upload = self._load(conn, principal, upload_id, admin_may_see=True)
        parts = self._stored_parts(upload) if upload.status == "pending" else []
        return upload, parts

    def _stored_parts(self, upload: Upload) -> list[StoredPart]:
        parts: list[StoredPart] = []
        marker = 0
        while True:
            try:
                response = self._s3.list_parts(Bucket=upload.row["bucket"], Key=upload.row["object_key"],
                                               UploadId=upload.row["storage_upload_id"], PartNumberMarker=marker)
            except ClientError as exc:
                if _is_missing_upload(exc):
                    return []
                raise _storage_unavailable(exc) from exc
            except BotoCoreError as exc:
                raise _storage_unavailable(exc) from exc
            parts += [StoredPart(p["PartNumber"], p["Size"], normalise_etag(p["ETag"]))
                      for p in response.get("Parts", [])]
            if not response.get("IsTruncated"):
                return parts
            marker = response["NextPartNumberMarker"]

    def list_files(self, principal: Principal, *, everyone: bool, limit: int = 100,
                   before: datetime | None = None) -> list[Upload]:
        if everyone:
            principal.require(ROLE_ADMIN)
        clauses, params = [], []
        if not everyone:
            clauses.append("owner = %s")
            params.append(principal.subject)
        if before is not None:
            clauses.append("created_at < %s")
            params.append(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._pool.connection() as conn:
            rows = conn.execute(f"SELECT * FROM uploads {where} ORDER BY created_at DESC LIMIT %s",  # noqa: S608
                                (*params, limit)).fetchall()
        return [Upload(row) for row in rows]

    # -- parts --

    def sign_parts(self, principal: Principal, upload_id: str, requests: Iterable[PartRequest]) -> list[dict]:
        with self._pool.connection() as conn:
            upload = self._load(conn, principal, upload_id)
        self._require_pending(upload)
        row = upload.row
        expiry = self._limits.url_expiry_seconds
        now = self._clock()
        signed = []
        for request in requests:
            if not 1 <= request.number <= row["part_count"]:
                raise BadRequest(f"part {request.number} does not exist; this upload has parts 1..{row['part_count']}")
            headers = {"Content-Length": str(part_length(request.number, row["declared_size"], row["part_size"]))}
            if request.sha256_base64:
                headers["x-amz-checksum-sha256"] = request.sha256_base64
            url = self._signer.presign("PUT", row["bucket"], row["object_key"],
                                       query={"partNumber": str(request.number),
                                              "uploadId": row["storage_upload_id"]},
                                       headers=headers, expires_in=expiry, now=now)
            signed.append({"number": request.number, "url": url.url, "headers": url.headers,
                           "expires_at": url.expires_at.isoformat()})
        metrics.PART_URLS_SIGNED.inc(len(signed))
        bind(upload_id=str(upload.id))
        log_event(logger, "part urls signed", outcome="signed", parts=[part["number"] for part in signed],
                  expires_in=expiry)  # never the URLs: they are credentials until they expire
        return signed

    @staticmethod
    def _require_pending(upload: Upload) -> None:
        if upload.status != "pending":
            raise Conflict(f"upload is {upload.status}, not pending")

    # -- complete / abort --

    def complete(self, principal: Principal, upload_id: str, claimed: list[CompletedPart], actor: Actor) -> Upload:
        with self._pool.connection() as conn, conn.transaction():
            upload = self._load(conn, principal, upload_id, for_update=True)
            if upload.status != "pending":
                if upload.status in COMPLETED:
                    return upload  # a retried completion: same answer, nothing done twice
                raise Conflict(f"upload is {upload.status}, not pending")
            row = upload.row
            stored = self._stored_parts(upload)
            problem = self._completion_problem(row, claimed, stored)
            # No parts left in storage: a completion that died between storage and its commit may have
            # completed this very upload already. Then this retry records it; aborting would delete the file.
            etag = self._completed_earlier(row) if problem is not None and not stored else None
            if etag is not None:
                problem = None
                updated = self._record_completion(conn, row, claimed, etag, actor, found_completed=True)
            elif problem is None:
                updated = self._complete_in_storage(conn, row, claimed, actor)
            else:
                self._abort_multipart(row["object_key"], row["storage_upload_id"])
                self._delete_object(row["object_key"])
                conn.execute("UPDATE uploads SET status = 'aborted', status_reason = %s, updated_at = now()"
                             " WHERE id = %s", (problem, row["id"]))
                audit.record(conn, actor, "upload.rejected_at_completion", row["id"], reason=problem)
        # Raised after the transaction committed: the abort and its record stay.
        bind(upload_id=str(upload.id))
        if problem is not None:
            metrics.UPLOADS_ABORTED.labels("completion_check").inc()
            log_event(logger, "upload aborted at completion", logging.WARNING, outcome="aborted", reason=problem)
            raise BadRequest(f"upload aborted: {problem}")
        metrics.UPLOADS_COMPLETED.inc()
        log_event(logger, "upload completed", outcome="completed", parts=len(claimed), etag=updated["etag"])
        self._announce_completion(updated)
        return Upload(updated)

    def _announce_completion(self, row: dict[str, Any]) -> None:
        """The fast path: send the object's canonical "object created" event now, after the commit.

        Best effort: the completion stands whatever happens here, because the reconciliation pass
        re-drives an upload whose event went missing. The event id is the one every re-drive of
        this object version uses, and scan answers a later storage notification with the verdict.
        """
        if self._announce is None:
            return
        try:
            head = self._s3.head_object(Bucket=row["bucket"], Key=row["object_key"])
            self._announce(object_created_event(row, head))
        except (ApiError, ClientError, BotoCoreError) as exc:
            log_event(logger, "completion not announced; the reconciliation pass will re-drive it", logging.WARNING,
                      outcome="not_announced", error=f"{type(exc).__name__}: {exc}"[:300])

    def _complete_in_storage(self, conn: psycopg.Connection, row: dict[str, Any], claimed: list[CompletedPart],
                             actor: Actor) -> dict[str, Any]:
        try:
            result = self._s3.complete_multipart_upload(
                Bucket=row["bucket"], Key=row["object_key"], UploadId=row["storage_upload_id"],
                MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": f'"{p.etag}"'}
                                           for p in sorted(claimed, key=lambda p: p.number)]})
        except (ClientError, BotoCoreError) as exc:
            raise _storage_unavailable(exc) from exc
        return self._record_completion(conn, row, claimed, normalise_etag(result.get("ETag", "")), actor)

    def _record_completion(self, conn: psycopg.Connection, row: dict[str, Any], claimed: list[CompletedPart],
                           etag: str, actor: Actor, **detail: Any) -> dict[str, Any]:
        updated = conn.execute(
            "UPDATE uploads SET status = 'uploaded', etag = %s, completed_at = now(), updated_at = now()"
            " WHERE id = %s RETURNING *", (etag, row["id"])).fetchone()
        audit.record(conn, actor, "upload.completed", row["id"], parts=len(claimed), etag=updated["etag"], **detail)
        return updated

    def _completed_earlier(self, row: dict[str, Any]) -> str | None:
        """The object's ETag when storage already holds this upload's completed object, else None.

        Only presign completes multipart uploads, and only after checking the parts, so an object at
        the upload's key that carries its id and declared size is that completion's result.
        """
        try:
            head = self._s3.head_object(Bucket=row["bucket"], Key=row["object_key"])
        except ClientError as exc:
            if _is_missing_upload(exc):
                return None
            raise _storage_unavailable(exc) from exc
        except BotoCoreError as exc:
            raise _storage_unavailable(exc) from exc
        if head.get("Metadata", {}).get("upload-id") != str(row["id"]) or head.get("ContentLength") != row["declared_size"]:
            return None
        return normalise_etag(head.get("ETag", ""))

    @staticmethod
    def _completion_problem(row: dict[str, Any], claimed: list[CompletedPart], stored: list[StoredPart]) -> str | None:
        numbers = [p.number for p in claimed]
        if len(set(numbers)) != len(numbers):
            return "a part number is listed twice"
        expected = set(range(1, row["part_count"] + 1))
        if set(numbers) != expected:
            missing = sorted(expected - set(numbers))[:10]
            return f"the part list does not match the upload's {row['part_count']} parts (missing {missing})"
        held = {p.number: p for p in stored}
        for part in claimed:
            stored_part = held.get(part.number)
            if stored_part is None:
                return f"part {part.number} is not in storage"
            if stored_part.etag != part.etag:
                return f"part {part.number}: ETag {part.etag} does not match storage's {stored_part.etag}"
        total = sum(held[n].size for n in expected)
        if total != row["declared_size"]:
            return f"storage holds {total} bytes but {row['declared_size']} were declared"
        return None

    def _delete_object(self, key: str) -> None:
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise _storage_unavailable(exc) from exc

    def abort(self, principal: Principal, upload_id: str, actor: Actor) -> Upload:
        with self._pool.connection() as conn, conn.transaction():
            upload = self._load(conn, principal, upload_id, for_update=True)
            if upload.status == "aborted":
                return upload
            self._require_pending(upload)
            self._abort_multipart(upload.row["object_key"], upload.row["storage_upload_id"])
            row = conn.execute("UPDATE uploads SET status = 'aborted', status_reason = 'cancelled by the user',"
                               " updated_at = now() WHERE id = %s RETURNING *", (upload.id,)).fetchone()
            audit.record(conn, actor, "upload.aborted", upload.id)
        metrics.UPLOADS_ABORTED.labels("user").inc()
        bind(upload_id=str(upload.id))
        log_event(logger, "upload aborted", outcome="aborted", reason="cancelled by the user")
        return Upload(row)

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
                                + (f": {upload.row['scan_detail']}" if upload.row["scan_detail"] else ""))
            row = upload.row
            audit.record(conn, actor, "file.download_url", upload.id)
        metrics.DOWNLOAD_URLS_SIGNED.inc()
        bind(upload_id=str(upload.id))
        log_event(logger, "download url signed", outcome="signed", expires_in=min(
            DOWNLOAD_URL_SECONDS, self._limits.url_expiry_seconds))
        return self._signer.presign(
            "GET", row["bucket"], row["object_key"],
            # The type sniffed from the bytes, never the client's claim, and always as an attachment.
            query={"response-content-disposition": content_disposition(row["filename"]),
                   "response-content-type": download_type(row["detected_type"])},
            expires_in=min(DOWNLOAD_URL_SECONDS, self._limits.url_expiry_seconds), now=self._clock())

    def set_legal_hold(self, principal: Principal, file_id: str, on: bool, actor: Actor) -> Upload:
        principal.require(ROLE_ADMIN)
        with self._pool.connection() as conn, conn.transaction():
            upload = self._load(conn, principal, file_id, for_update=True, admin_may_see=True)
            if upload.status in GONE:
                raise Gone(f"the file is {upload.status}; there is nothing left to hold")
            object_lock = self._set_object_legal_hold(upload, on)
            row = conn.execute("UPDATE uploads SET legal_hold = %s, updated_at = now() WHERE id = %s RETURNING *",
                               (on, upload.id)).fetchone()
            audit.record(conn, actor, "file.legal_hold_set" if on else "file.legal_hold_released", upload.id,
                         object_lock=object_lock)
        return Upload(row)

    def _set_object_legal_hold(self, upload: Upload, on: bool) -> str:
        """Mirror the hold in S3 Object Lock where the bucket has it; the database flag is what expire obeys."""
        if upload.status == "pending":
            return "not yet an object"
        bucket = self._storage.quarantine_bucket if upload.status in QUARANTINED else upload.row["bucket"]
        try:
            self._s3.put_object_legal_hold(Bucket=bucket, Key=upload.row["object_key"],
                                           LegalHold={"Status": "ON" if on else "OFF"})
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("InvalidRequest", "ObjectLockConfigurationNotFoundError", "NoSuchKey",
                        "InvalidBucketState", "NotImplemented"):
                return f"not applied: {code}"
            raise _storage_unavailable(exc) from exc
        except BotoCoreError as exc:
            raise _storage_unavailable(exc) from exc
        return "applied"
