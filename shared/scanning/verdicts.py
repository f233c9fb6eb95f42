"""Admin decisions about verdicts: releasing a file the scan would not pass, and blocklisting a hash.

Both are human decisions and both are audited with who and why (docs/scan.md). presign's admin
API (`/admin/...`, role `admin`) and the operator CLI (`dropgate-dev release`, `dropgate-dev
blocklist`) call these same functions.

- Release: an `unscannable` or `rejected` file becomes `released`, downloadable like a clean one
  (its object comes back from quarantine). `infected` is never released: a real detection stays.
- Blocklist: adding a SHA-256 makes every stored file with that hash `infected` at once (moved to
  quarantine; a `dev.dropgate.scan.infected` event each), and the scan refuses it from then on.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from botocore.client import BaseClient
from psycopg_pool import ConnectionPool

from events.types import ScanVerdict
from shared.platform import audit, metrics
from shared.platform.audit import Actor
from shared.platform.errors import BadRequest, Conflict, NotFound
from shared.platform.settings import StorageSettings
from shared.scanning import blocklist
from shared.scanning.quarantine import move_to_quarantine, restore_from_quarantine
from shared.uploads.model import (
    QUARANTINED,
    RELEASABLE,
    UploadRow,
    UploadStatus,
    upload_row,
    values,
)

# Files a new blocklist entry retires at once; a larger set is finished by the next call/rescan.
MAX_RETIRED_PER_CALL: Final = 1000
# Statuses whose object a listed hash must leave: everything still stored outside quarantine.
_RETIRABLE: Final = (UploadStatus.CLEAN, UploadStatus.RELEASED, UploadStatus.UNSCANNABLE, UploadStatus.REJECTED)


@dataclass(frozen=True)
class VerdictAdmin:
    storage: StorageSettings
    pool: ConnectionPool
    s3: BaseClient
    event_source: str  # "<DROPGATE_EVENT_SOURCE>/<who emits>"

    def release(self, upload_id: str, actor: Actor, reason: object) -> UploadRow:
        """Let an unscannable or rejected file through; returns the row after the change."""
        why = blocklist.parse_reason(reason)
        parsed = _upload_id(upload_id)
        with self.pool.connection() as conn, conn.transaction():
            uploads = conn.cursor(row_factory=upload_row)
            row = uploads.execute("SELECT * FROM uploads WHERE id = %s FOR UPDATE", (parsed,)).fetchone()
            if row is None:
                raise NotFound(f"no upload {upload_id}")
            current = row.status
            if current not in RELEASABLE:
                raise Conflict(f"the file is {current}: only {' or '.join(values(RELEASABLE))} files can be "
                               "released" + (" (a detection is never released)" if current == "infected" else ""))
            # Storage first: if the copy back fails, the row still says where the bytes are.
            restore_from_quarantine(self.s3, self.storage, row.object_key, target_bucket=row.bucket)
            released = uploads.execute(
                "UPDATE uploads SET status = %s, status_reason = %s, updated_at = now() WHERE id = %s RETURNING *",
                (UploadStatus.RELEASED, f"released by {actor.name}: {why}", parsed)).fetchone()
            audit.record(conn, actor, "admin.release", parsed, reason=why, status_before=str(current),
                         verdict=row.scan_verdict, detail=row.scan_detail)
        metrics.ADMIN_ACTIONS.labels("release").inc()
        return released

    def block(self, sha256: object, reason: object, actor: Actor) -> tuple[bool, list[ScanVerdict]]:
        """List a hash and retire the stored files that carry it; (newly listed, one infected event per file)."""
        digest, why = blocklist.parse_sha256(sha256), blocklist.parse_reason(reason)
        with self.pool.connection() as conn, conn.transaction():
            added = blocklist.add(conn, digest, why, actor.name)
            audit.record(conn, actor, "admin.blocklist_added" if added else "admin.blocklist_exists", None,
                         sha256=digest, reason=why)
        events = [event for row in self._carrying(digest) if (event := self._retire(row, digest, actor))]
        metrics.ADMIN_ACTIONS.labels("blocklist_add").inc()
        return added, events

    def unblock(self, sha256: object, actor: Actor) -> bool:
        digest = blocklist.parse_sha256(sha256)
        with self.pool.connection() as conn, conn.transaction():
            removed = blocklist.remove(conn, digest)
            if removed:
                audit.record(conn, actor, "admin.blocklist_removed", None, sha256=digest)
        metrics.ADMIN_ACTIONS.labels("blocklist_remove").inc()
        return removed

    def listed(self, limit: int = 1000) -> list[blocklist.BlockedHash]:
        with self.pool.connection() as conn:
            return blocklist.listed(conn, limit)

    def _carrying(self, digest: str) -> list[UploadRow]:
        with self.pool.connection() as conn:
            return conn.cursor(row_factory=upload_row).execute(
                "SELECT * FROM uploads WHERE sha256 = %s AND status = ANY(%s) ORDER BY created_at LIMIT %s",
                (digest, values(_RETIRABLE), MAX_RETIRED_PER_CALL)).fetchall()

    def _retire(self, row: UploadRow, digest: str, actor: Actor) -> ScanVerdict | None:
        detail = f"blocklist: SHA-256 {digest} listed by {actor.name}"
        in_quarantine = row.status in QUARANTINED
        if not in_quarantine:
            move_to_quarantine(self.s3, self.storage, row.object_key, source_bucket=row.bucket,
                               version_id=None, legal_hold=bool(row.legal_hold))
        now = datetime.now(UTC)
        with self.pool.connection() as conn, conn.transaction():
            changed = conn.execute(
                "UPDATE uploads SET status = %s, scan_verdict = %s, scan_detail = %s, scanned_at = %s,"
                " updated_at = now() WHERE id = %s AND status = %s RETURNING id",
                (UploadStatus.INFECTED, UploadStatus.INFECTED, detail, now, row.id, row.status)).fetchone()
            if changed is None:
                return None  # changed meanwhile (expired, rescanned): its new state stands
            audit.record(conn, actor, "scan.verdict", row.id, verdict="infected", detail=detail, sha256=digest,
                         cause="blocklist", status_before=row.status)
        metrics.SCAN_VERDICTS.labels("infected").inc()
        return ScanVerdict(id=f"{row.id}.blocklist.{digest[:16]}", source=self.event_source, time=now,
                           upload_id=row.id, verdict="infected", bucket=self.storage.quarantine_bucket,
                           key=row.object_key, size=row.stored_size, sha256=digest,
                           detected_type=row.detected_type, signature=detail, reason=detail,
                           signature_version=row.signature_version)


def _upload_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise BadRequest(f"{raw!r} is not an upload id (a UUID)") from None
