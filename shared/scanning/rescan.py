"""Rescans after a signature update: files clean under old signatures are read again under new ones.

A file clean today may be known malware tomorrow. Every verdict records clamd's signature
database version (`uploads.signature_version`, from clamd's `VERSION`). The reconcile pass
(functions/reconcile) asks clamd for its version each run; when it is ahead of what recent
downloadable files were scanned with, it asks scan to read those files again: newest first,
files scanned within `DROPGATE_RESCAN_DAYS`, at most `DROPGATE_RESCAN_MAX_PER_RUN` per pass.

Each request is the file's "object created" CloudEvent with the `dropgatesigversion` extension
(shared/scanning/service.py) and the id `<upload>.rescan-request.v<version>`, sent to the broker. Rows are
taken FOR UPDATE SKIP LOCKED (overlapping passes take disjoint batches), the events are handed
over before the commit, and `rescan_requested_version` is set in the same transaction: that
column is the pass's resumable cursor. A pass killed after sending but before committing sends
the same ids again next time, and scan answers a file already scanned at that version with
nothing, so no file is read twice and no verdict event is doubled. Only a detection changes a
file (infected, quarantined, `dev.dropgate.scan.infected` with `rescan: true`, audited with the
signature version that caught it); a file still clean just records the new version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from cloudevents.http import CloudEvent
from psycopg_pool import ConnectionPool

from events.types import ObjectCreated
from shared.platform import audit, metrics
from shared.platform.audit import Actor
from shared.platform.clamd import ScannerUnavailable, StreamingClamd
from shared.platform.logs import log_event
from shared.retention.reconcile import EVENT_SOURCE
from shared.scanning.service import SIGNATURE_RESCAN_EXTENSION
from shared.uploads.model import DOWNLOADABLE, UploadRow, upload_row, values

logger = logging.getLogger("dropgate.rescan")

ACTOR: Final = Actor.system("reconcile")
_BATCH: Final = 200  # rows per transaction


@dataclass
class RescanSummary:
    signature_version: int | None = None
    requested: int = 0
    skipped: str | None = None  # why nothing was asked for, when nothing could be

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rescan_request(row: UploadRow, version: int) -> CloudEvent:
    """The "object created" event that asks scan to read a downloadable file again at `version`."""
    event = ObjectCreated(
        id=f"{row.id}.rescan-request.v{version}", event_name="ObjectCreated:Put", event_source=EVENT_SOURCE,
        region="", bucket=row.bucket, key=row.object_key,
        time=row.storage_event_time or row.completed_at or datetime.now(UTC),
        size=row.stored_size, etag=row.etag, sequencer=None,
        content_type=row.stored_content_type or row.content_type).to_cloudevent()
    return CloudEvent({**event.get_attributes(), SIGNATURE_RESCAN_EXTENSION: str(version)}, event.get_data())


def request_rescans(pool: ConnectionPool, scanner: StreamingClamd, publish: Callable[[Sequence[CloudEvent]], None],
                    *, days: int, max_per_run: int, now: datetime | None = None) -> RescanSummary:
    summary = RescanSummary()
    if days == 0:
        summary.skipped = "rescans are off (DROPGATE_RESCAN_DAYS=0)"
        return summary
    try:
        version = scanner.signature_version()
    except ScannerUnavailable as exc:
        # The reconcile pass's own work does not depend on clamd: rescans wait for the next ping.
        summary.skipped = f"clamd unavailable: {exc}"
        return summary
    summary.signature_version = version
    if version is None:
        summary.skipped = "clamd reports no signature database version"
        return summary
    since = (now or datetime.now(UTC)) - timedelta(days=days)
    while summary.requested < max_per_run:
        with pool.connection() as conn, conn.transaction():
            rows = conn.cursor(row_factory=upload_row).execute(
                "SELECT * FROM uploads WHERE status = ANY(%s) AND scanned_at >= %s"
                " AND coalesce(signature_version, 0) < %s AND coalesce(rescan_requested_version, 0) < %s"
                " ORDER BY scanned_at DESC LIMIT %s FOR UPDATE SKIP LOCKED",
                (values(DOWNLOADABLE), since, version, version, min(_BATCH, max_per_run - summary.requested))
            ).fetchall()
            if not rows:
                break
            publish([rescan_request(row, version) for row in rows])
            conn.execute("UPDATE uploads SET rescan_requested_version = %s WHERE id = ANY(%s)",
                         (version, [row.id for row in rows]))
            for row in rows:
                audit.record(conn, ACTOR, "rescan.requested", row.id, signature_version=version,
                             scanned_with=row.signature_version)
        summary.requested += len(rows)
    metrics.RESCANS_REQUESTED.inc(summary.requested)
    if summary.requested:
        log_event(logger, "rescans requested after a signature update", outcome="requested",
                  requested=summary.requested, signature_version=version)
    return summary
