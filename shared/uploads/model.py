"""An upload's status: its values (the database's), its transitions and its named groups, in one place.

docs/scan.md has the same table in words. Every module asks this one instead of spelling statuses:
`status in DOWNLOADABLE`, `UploadStatus.SCANNING.can_become(UploadStatus.CLEAN)`. SQL takes the
values as parameters (`status = ANY(%s)` with `values(AWAITING_VERDICT)`).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final


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

TRANSITIONS: Final[dict[UploadStatus, frozenset[UploadStatus]]] = {
    S.PENDING: frozenset({S.UPLOADED, S.SCANNING, S.ABORTED, S.ABANDONED, S.UNSCANNABLE}),
    S.UPLOADED: frozenset({S.SCANNING, S.UNSCANNABLE, S.EXPIRED}),
    S.SCANNING: VERDICTS | {S.EXPIRED},
    # A rescan after a signature update, or a blocklisted hash, can still find a clean file infected.
    S.CLEAN: frozenset({S.INFECTED, S.EXPIRED}),
    S.INFECTED: frozenset({S.EXPIRED}),
    S.REJECTED: frozenset({S.RELEASED, S.EXPIRED}),
    S.UNSCANNABLE: frozenset({S.RELEASED, S.INFECTED, S.EXPIRED}),
    S.RELEASED: frozenset({S.INFECTED, S.EXPIRED}),
    S.ABORTED: frozenset(),
    S.ABANDONED: frozenset(),
    S.EXPIRED: frozenset(),
}


def values(statuses: Iterable[UploadStatus]) -> list[str]:
    """The database values of a group, sorted, for `status = ANY(%s)`."""
    return sorted(str(status) for status in statuses)


# -- what the API shows of an upload and its stored parts --

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
