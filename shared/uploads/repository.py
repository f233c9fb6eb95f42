"""Every SQL statement of presign's upload lifecycle (the `uploads` table). The caller owns the transaction."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import kwargs_row

from shared.platform import audit
from shared.uploads.limits import RATE_COUNTER_SQL
from shared.uploads.model import UploadRow, UploadStatus, upload_row


def insert_audited(conn: psycopg.Connection, *, upload_id: uuid.UUID, owner: str, bucket: str, key: str,
                   filename: str, content_type: str, size: int, part_size: int, part_count: int,
                   declared_sha256: str | None, expires_at: datetime, now: datetime, storage_upload_id: str | None,
                   client_ref: str | None, audited: audit.Entry) -> UploadRow:
    """The new upload's row and its audit entry, in one statement (one round trip): the row as stored."""
    return conn.cursor(row_factory=upload_row).execute(
        "WITH inserted AS (INSERT INTO uploads (id, owner, bucket, object_key, filename, content_type,"
        "  declared_size, part_size, part_count, declared_sha256, expires_at, created_at, updated_at,"
        "  storage_upload_id, client_ref) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " RETURNING *),"
        # SELECT ... FROM inserted: the entry is written only with the row it describes.
        f" audited AS (INSERT INTO audit_log ({audit.COLUMNS}) SELECT {audit.PLACEHOLDERS} FROM inserted)"
        " SELECT * FROM inserted",
        (upload_id, owner, bucket, key, filename, content_type, size, part_size, part_count, declared_sha256,
         expires_at, now, now, storage_upload_id, client_ref, *audited.parameters(upload_id))).fetchone()


def pending_retry(conn: psycopg.Connection, owner: str, client_ref: str, size: int, content_type: str,
                  filename: str, part_size: int) -> UploadRow | None:
    """The owner's newest pending upload of this very file that the browser named `client_ref`: a retry."""
    return conn.cursor(row_factory=upload_row).execute(
        "SELECT * FROM uploads WHERE owner = %s AND client_ref = %s AND status = %s AND declared_size = %s"
        " AND content_type = %s AND filename = %s AND part_size = %s ORDER BY created_at DESC LIMIT 1",
        (owner, client_ref, UploadStatus.PENDING, size, content_type, filename, part_size)).fetchone()


def load(conn: psycopg.Connection, upload_id: uuid.UUID, *, for_update: bool = False) -> UploadRow | None:
    return conn.cursor(row_factory=upload_row).execute(
        "SELECT * FROM uploads WHERE id = %s" + (" FOR UPDATE" if for_update else ""), (upload_id,)).fetchone()


def load_counting_request(conn: psycopg.Connection, upload_id: uuid.UUID, subject: str,
                          window_start: datetime) -> tuple[int, UploadRow | None]:
    """The rate counter bumped (limits.RATE_COUNTER_SQL) and the upload read, in one statement:
    (this minute's request count, the row or None). The part-URL routes' one database round trip."""
    return conn.cursor(row_factory=kwargs_row(_counted_upload)).execute(
        f"WITH counted AS ({RATE_COUNTER_SQL})"  # noqa: S608 - a constant
        " SELECT counted.requests AS counted_requests, uploads.* FROM counted"
        " LEFT JOIN uploads ON uploads.id = %s", (subject, window_start, upload_id)).fetchone()


def _counted_upload(counted_requests: int, **columns: Any) -> tuple[int, UploadRow | None]:
    """A row of load_counting_request: the LEFT JOIN leaves every column of uploads NULL when there is none."""
    return counted_requests, (UploadRow.from_db(columns) if columns.get("id") is not None else None)


def find_by_storage_upload_id(conn: psycopg.Connection, storage_upload_id: str) -> UploadRow | None:
    return conn.cursor(row_factory=upload_row).execute(
        "SELECT * FROM uploads WHERE storage_upload_id = %s", (storage_upload_id,)).fetchone()


def bind_storage_upload_id(conn: psycopg.Connection, upload_id: uuid.UUID, storage_upload_id: str) -> UploadRow | None:
    """Record the multipart upload a browser made itself (Uppy 6's signRequest mode), once: the row, or None
    when the upload is no longer pending or is already bound to another multipart upload."""
    return conn.cursor(row_factory=upload_row).execute(
        "UPDATE uploads SET storage_upload_id = %s, updated_at = now() WHERE id = %s AND status = %s"
        " AND (storage_upload_id IS NULL OR storage_upload_id = %s) RETURNING *",
        (storage_upload_id, upload_id, UploadStatus.PENDING, storage_upload_id)).fetchone()


def newest(conn: psycopg.Connection, *, owner: str | None, before: datetime | None, limit: int) -> list[UploadRow]:
    """Uploads newest first: one owner's, or everyone's (owner None)."""
    clauses, params = [], []
    if owner is not None:
        clauses.append("owner = %s")
        params.append(owner)
    if before is not None:
        clauses.append("created_at < %s")
        params.append(before)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return conn.cursor(row_factory=upload_row).execute(
        f"SELECT * FROM uploads {where} ORDER BY created_at DESC LIMIT %s", (*params, limit)).fetchall()  # noqa: S608


def mark_uploaded(conn: psycopg.Connection, upload_id: uuid.UUID, etag: str) -> UploadRow:
    return conn.cursor(row_factory=upload_row).execute(
        "UPDATE uploads SET status = %s, etag = %s, completed_at = now(), updated_at = now()"
        " WHERE id = %s RETURNING *", (UploadStatus.UPLOADED, etag, upload_id)).fetchone()


def mark_aborted(conn: psycopg.Connection, upload_id: uuid.UUID, reason: str) -> UploadRow:
    return conn.cursor(row_factory=upload_row).execute(
        "UPDATE uploads SET status = %s, status_reason = %s, updated_at = now() WHERE id = %s RETURNING *",
        (UploadStatus.ABORTED, reason, upload_id)).fetchone()


def set_legal_hold(conn: psycopg.Connection, upload_id: uuid.UUID, on: bool) -> UploadRow:
    return conn.cursor(row_factory=upload_row).execute(
        "UPDATE uploads SET legal_hold = %s, updated_at = now() WHERE id = %s RETURNING *", (on, upload_id)).fetchone()
