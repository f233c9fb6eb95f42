"""An upload's status: its values (the database's), its transitions and its named groups, in one place;
and an upload's row (`UploadRow`, what every module reads from the `uploads` table).

docs/scan.md has the same table in words. Every module asks this one instead of spelling statuses:
`status in DOWNLOADABLE`, `UploadStatus.SCANNING.can_become(UploadStatus.CLEAN)`. SQL takes the
values as parameters (`status = ANY(%s)` with `values(AWAITING_VERDICT)`).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from psycopg.rows import BaseRowFactory, kwargs_row


class UploadStatus(enum.StrEnum):
    PENDING = "pending"          # created; parts being uploaded
    UPLOADED = "uploaded"        # storage holds the object; waiting for a scan
    SCANNING = "scanning"        # a scan claimed it
    CLEAN = "clean"              # fully scanned, nothing found, bytes as declared: downloadable
    INFECTED = "infected"        # clamd found a signature, or the SHA-256 is blocklisted: quarantined
    REJECTED = "rejected"        # the content policy refused the real type: quarantined
    UNSCANNABLE = "unscannable"  # not fully scanned (a clamd limit, encryption, scanner errors past the
                                 # retry budget, stored bytes not as declared): quarantined, never clean
    RELEASED = "released"        # an admin let an unscannable/rejected file through (audited): downloadable
    ABORTED = "aborted"          # cancelled by the owner, or a completion that did not add up
    ABANDONED = "abandoned"      # a stale multipart upload aborted by expire
    EXPIRED = "expired"          # retention passed; the object is deleted

    def can_become(self, other: UploadStatus) -> bool:
        return other in TRANSITIONS[self]


S = UploadStatus

AWAITING_VERDICT: Final = frozenset({S.PENDING, S.UPLOADED, S.SCANNING})  # what scan may still claim
VERDICTS: Final = frozenset({S.CLEAN, S.INFECTED, S.REJECTED, S.UNSCANNABLE})
QUARANTINED: Final = frozenset({S.INFECTED, S.REJECTED, S.UNSCANNABLE})  # the object is kept in quarantine
DOWNLOADABLE: Final = frozenset({S.CLEAN, S.RELEASED})
RELEASABLE: Final = frozenset({S.REJECTED, S.UNSCANNABLE})  # infected never: a real detection stays
GONE: Final = frozenset({S.EXPIRED, S.ABORTED, S.ABANDONED})
# States only a completed upload reaches: storage holds (or held) its object.
COMPLETED: Final = frozenset({S.UPLOADED, S.SCANNING, S.RELEASED}) | VERDICTS
MAY_BE_IN_QUARANTINE: Final = frozenset({S.SCANNING}) | QUARANTINED  # a crashed scan may have moved it
# Completed by the row's word only: presign's complete asks storage whether the multipart upload is still
# open (with parts) before it answers "done", and completes it when it is (the row moved without storage).
CHECKED_AT_COMPLETION: Final = frozenset({S.PENDING, S.UPLOADED, S.SCANNING})

TRANSITIONS: Final[dict[UploadStatus, frozenset[UploadStatus]]] = {
    S.PENDING: frozenset({S.UPLOADED, S.SCANNING, S.ABORTED, S.ABANDONED, S.UNSCANNABLE}),
    S.UPLOADED: frozenset({S.SCANNING, S.UNSCANNABLE, S.EXPIRED}),
    # scanning -> uploaded: presign's complete found the multipart upload still open in storage.
    S.SCANNING: VERDICTS | {S.EXPIRED, S.UPLOADED},
    # A rescan after a signature update, or a blocklisted hash, can still find a clean file infected;
    # an object that replaced the judged one (another ETag) is judged again (scanning).
    S.CLEAN: frozenset({S.INFECTED, S.EXPIRED, S.SCANNING}),
    S.INFECTED: frozenset({S.EXPIRED}),
    S.REJECTED: frozenset({S.RELEASED, S.EXPIRED}),
    S.UNSCANNABLE: frozenset({S.RELEASED, S.INFECTED, S.EXPIRED}),
    S.RELEASED: frozenset({S.INFECTED, S.EXPIRED}),
    S.ABORTED: frozenset(),
    S.ABANDONED: frozenset(),
    S.EXPIRED: frozenset(),
}


def object_key(created: datetime, upload_id: uuid.UUID) -> str:
    """Where an upload's object lives: server-generated, unguessable, free of anything the user typed."""
    return f"uploads/{created:%Y/%m/%d}/{upload_id}"


def upload_id_in_key(key: str) -> str | None:
    """The upload id an object key (`object_key`) ends in; None when it names none."""
    return as_upload_id(key.rsplit("/", 1)[-1])


def as_upload_id(text: str) -> str | None:
    """`text` as an upload id (canonical UUID form), or None when it is not one."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def values(statuses: Iterable[UploadStatus]) -> list[str]:
    """The database values of a group, sorted, for `status = ANY(%s)`."""
    return sorted(str(status) for status in statuses)


# -- one row of `uploads`, and what the API shows of it --

@dataclass(frozen=True)
class UploadRow:
    """One row of the `uploads` table, as every module reads it: `upload.object_key`, not a dict keyed by column.

    The one home of the row's shape. A column a migration adds (shared/platform/migrations/) is a
    field here, in table order; tests/test_migrations.py fails when the two differ, and
    tests/test_architecture.py when a module subscripts an upload row by a column name again.
    Queries return it through the `upload_row` row factory.
    """

    id: uuid.UUID
    owner: str  # the JWT subject
    bucket: str
    object_key: str  # server-generated, never the user's filename
    filename: str  # sanitised original name, for Content-Disposition
    content_type: str  # as declared by the client
    declared_size: int
    part_size: int
    part_count: int
    storage_upload_id: str | None  # S3 multipart UploadId
    status: UploadStatus
    declared_sha256: str | None
    sha256: str | None  # computed by the scan
    etag: str | None  # as storage reports it
    stored_size: int | None  # as storage reports it
    stored_content_type: str | None
    scan_verdict: str | None
    scan_detail: str | None  # signature name or rejection reason
    scanned_at: datetime | None
    legal_hold: bool
    storage_sequencer: str | None  # last storage event applied (ordering)
    storage_event_time: datetime | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    expires_at: datetime
    status_reason: str | None  # 0002: why an upload ended where it did, in words
    redrive_attempts: int  # 0005: re-drives of the reconcile pass
    last_redrive_at: datetime | None  # 0005
    detected_type: str | None  # 0006: the type sniffed from the bytes
    signature_version: int | None  # 0006: clamd's database version that produced the verdict
    rescan_requested_version: int | None  # 0006
    client_ref: str | None  # 0009: the browser's handle for the file (Uppy 6 signRequest mode), for retries
    scanned_etag: str | None  # 0011: the ETag of the object the scan judged (a later one is judged again)

    @classmethod
    def from_db(cls, columns: Mapping[str, Any]) -> UploadRow:
        """From a whole row as a mapping (psycopg's dict_row); a missing or unknown column raises TypeError."""
        rest = dict(columns)
        status = rest.pop("status")
        return cls(status=UploadStatus(status), **rest)

    def public(self) -> dict[str, Any]:
        """What the API shows of an upload."""
        return {
            "id": str(self.id), "key": self.object_key, "upload_id": self.storage_upload_id,
            "filename": self.filename, "content_type": self.content_type, "size": self.declared_size,
            "part_size": self.part_size, "part_count": self.part_count, "status": str(self.status),
            "status_reason": self.status_reason, "sha256": self.sha256 or self.declared_sha256,
            "scan_verdict": self.scan_verdict, "legal_hold": self.legal_hold,
            # Why a file is not downloadable, in words (e.g. "archive nested deeper than 17 levels").
            "scan_detail": self.scan_detail, "detected_type": self.detected_type,
            "created_at": self.created_at.isoformat(), "expires_at": self.expires_at.isoformat(),
            "completed_at": self.completed_at.isoformat() if self.completed_at else None,
        }


def _upload_from_columns(**columns: Any) -> UploadRow:
    return UploadRow.from_db(columns)


# psycopg row factory for queries that select whole rows (`SELECT *`, `RETURNING *`) of `uploads`:
# `conn.cursor(row_factory=upload_row).execute(...).fetchone()` is an UploadRow (or None).
upload_row: Final[BaseRowFactory[UploadRow]] = kwargs_row(_upload_from_columns)


@dataclass(frozen=True)
class StoredPart:
    number: int
    size: int
    etag: str
    sha256: str | None = None  # base64, when the multipart upload was created with ChecksumAlgorithm=SHA256

    def public(self) -> dict[str, Any]:
        return {"number": self.number, "size": self.size, "etag": self.etag}
