"""What storage reports about each object, recorded idempotently (the metadata function).

Delivery is at least once and in no particular order, so every storage event is
applied in one transaction that:

1. claims its CloudEvent id in `processed_events` (consumer `metadata`); a
   duplicate finds the id taken and changes nothing;
2. locks the upload (matched by bucket and key, or by key alone for a copy in
   another bucket, such as the quarantine) and the `storage_objects` row of the
   event's bucket/key;
3. applies the event only if it is newer than what that row holds
   (`is_newer`): a creation must be strictly newer, a removal may carry the same
   sequencer as the creation it removes (SeaweedFS removals do);
4. applies nothing that storage contradicts (`disagreement`): before the
   transaction the object is looked up in storage (HEAD, by version id when
   the event names one). A creation whose object is absent, or whose size or
   ETag differ, and a removal whose key still names an object change nothing:
   the event is recorded as `disagreed` and audited as
   `storage.event_disagreed_with_storage` (a forged event, or one overtaken by a
   later change whose own event brings the final state);
5. mirrors an applied event at the upload's own location onto `uploads`
   (stored_size, etag, stored_content_type, storage_sequencer,
   storage_event_time; `pending` becomes `uploaded`; no later status ever goes
   back), and writes one audit entry per change.

An object no upload owns is kept in `storage_objects` with `upload_id` NULL: an
orphan for the retention sweep, not an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import psycopg
from botocore.client import BaseClient
from botocore.exceptions import ClientError
from psycopg_pool import ConnectionPool

from events.notifications import digest
from events.types import MetadataRecorded, StorageObjectEvent
from events.wire import is_hex
from shared.platform import audit
from shared.platform.audit import Actor
from shared.platform.logs import log_event
from shared.platform.storage import is_missing
from shared.uploads.model import UploadRow, upload_row

logger = logging.getLogger("dropgate.metadata")

CONSUMER: Final = "metadata"
ACTOR: Final = Actor.system(CONSUMER)

APPLIED: Final = "applied"  # the event changed what dropgate knows about an upload's object
ORPHAN: Final = "orphan"  # applied, but no upload owns the object
STALE: Final = "stale"  # older than what is recorded: nothing changed
DISAGREED: Final = "disagreed"  # storage contradicts the event: nothing changed, audited


def is_newer(event_sequencer: str | None, event_time: datetime, stored_sequencer: str | None,
             stored_time: datetime, *, removal: bool) -> bool:
    """Whether an event supersedes what is recorded for the same bucket/key.

    Sequencers are hexadecimal strings of varying length (AWS pads with zeros,
    MinIO does not): compared as numbers, which is the zero-padded comparison
    AWS documents. Without a sequencer on both sides the event times decide.
    A removal wins a tie: it may name the very version it removes.
    """
    if event_sequencer and stored_sequencer and is_hex(event_sequencer) and is_hex(stored_sequencer):
        incoming, recorded = int(event_sequencer, 16), int(stored_sequencer, 16)
        return incoming >= recorded if removal else incoming > recorded
    return event_time >= stored_time if removal else event_time > stored_time


@dataclass(frozen=True)
class StoredObject:
    """What storage answers to HEAD for a key (or one version of it)."""

    size: int
    etag: str | None  # without quotes, as events carry it
    version_id: str | None


def stored_object(s3: BaseClient, bucket: str, key: str, version_id: str | None = None) -> StoredObject | None:
    """The object at bucket/key (that version, if given) as storage has it now; None when it is not there.

    Storage errors other than "not there" propagate: a 5xx or an unreachable
    endpoint answers 503 (shared.platform.http) and the broker delivers again.
    """
    arguments = {"Bucket": bucket, "Key": key}
    if version_id and version_id != "null":  # "null" names the unversioned object; plain HEAD finds it
        arguments["VersionId"] = version_id
    try:
        head = s3.head_object(**arguments)
    except ClientError as exc:
        if is_missing(exc):
            return None
        raise
    etag = head.get("ETag")
    return StoredObject(size=int(head["ContentLength"]), etag=etag.strip('"') if etag else None,
                        version_id=head.get("VersionId"))


def disagreement(event: StorageObjectEvent, stored: StoredObject | None) -> str | None:
    """Why storage contradicts the event (None when it does not): the one rule of what metadata may believe.

    A removal says the key names no object; a creation says it names one of
    the event's size and ETag (compared only where the event states them, and
    case-insensitively: S3 ETags are hex digests).
    """
    if event.is_removal:
        return "storage still holds an object at this key" if stored is not None else None
    if stored is None:
        return f"storage holds no {'such version' if event.version_id else 'object'} at this key"
    if event.size is not None and stored.size != event.size:
        return f"storage holds {stored.size} bytes, the event says {event.size}"
    if event.etag and stored.etag and stored.etag.lower() != event.etag.lower():
        return f"storage's ETag is {stored.etag}, the event says {event.etag}"
    return None


@dataclass(frozen=True)
class Recorded:
    outcome: str  # APPLIED, ORPHAN, STALE or DISAGREED (for a duplicate: the outcome of its first delivery)
    duplicate: bool
    upload: UploadRow | None  # the upload row after the change
    location: dict[str, Any] | None  # the storage_objects row after the change


class MetadataRecorder:
    def __init__(self, pool: ConnectionPool, s3: BaseClient, *, source: str,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self._pool = pool
        self._s3 = s3
        self._source = source  # CloudEvents source of the replies, "<DROPGATE_EVENT_SOURCE>/metadata"
        self._clock = clock

    def record(self, event: StorageObjectEvent) -> Recorded:
        # Asked before the transaction, so no row lock waits on storage. What storage says a few
        # milliseconds before the locks is as good as after: every later change has an event of its own.
        contradiction = disagreement(event, stored_object(self._s3, event.bucket, event.key, event.version_id))
        with self._pool.connection() as conn, conn.transaction():
            claimed = conn.execute(
                "INSERT INTO processed_events (consumer, event_id, event_type, outcome) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id",
                (CONSUMER, event.id, event.type, "in progress")).fetchone()
            if claimed is None:
                return self._duplicate(conn, event)
            upload = _find_upload(conn, event.bucket, event.key)
            recorded = self._apply(conn, event, upload, contradiction)
            conn.execute("UPDATE processed_events SET outcome = %s WHERE consumer = %s AND event_id = %s",
                         (recorded.outcome, CONSUMER, event.id))
        log_event(logger, "storage event recorded", event_id=event.id, event_type=event.type, bucket=event.bucket,
                  key=event.key, outcome=recorded.outcome,
                  upload_id=str(recorded.upload.id) if recorded.upload else None,
                  status=recorded.upload.status if recorded.upload else None)
        return recorded

    def reply(self, event: StorageObjectEvent, recorded: Recorded) -> MetadataRecorded | None:
        """The metadata.recorded event for an applied change to an upload; None when nothing changed for one.

        A redelivered event gets the same reply id again, so if the first reply
        was lost the broker still gets one, and a consumer that saw it drops the copy.
        """
        if recorded.outcome != APPLIED or recorded.upload is None or recorded.location is None:
            return None
        upload, location = recorded.upload, recorded.location
        return MetadataRecorded(
            id=f"metadata-{digest(event.source, event.id)}", source=self._source, time=self._clock(),
            upload_id=upload.id, bucket=event.bucket, key=event.key, storage_event_id=event.id,
            storage_event_type=event.type, status=str(upload.status), present=location["present"],
            size=location["size"], etag=location["etag"], content_type=location["content_type"],
            sequencer=location["sequencer"])

    # -- one transaction --

    def _duplicate(self, conn: psycopg.Connection, event: StorageObjectEvent) -> Recorded:
        outcome = conn.execute("SELECT outcome FROM processed_events WHERE consumer = %s AND event_id = %s",
                               (CONSUMER, event.id)).fetchone()["outcome"]
        log_event(logger, "duplicate storage event ignored", event_id=event.id, event_type=event.type,
                  first_outcome=outcome)
        return Recorded(outcome=outcome, duplicate=True, upload=_find_upload(conn, event.bucket, event.key, lock=False),
                        location=_location(conn, event.bucket, event.key, lock=False))

    def _apply(self, conn: psycopg.Connection, event: StorageObjectEvent, upload: UploadRow | None,
               contradiction: str | None) -> Recorded:
        upload_id = upload.id if upload else None
        location = _location(conn, event.bucket, event.key, lock=True)
        if contradiction is not None and (location is None or is_newer(
                event.sequencer, event.time, location["sequencer"], location["event_time"], removal=event.is_removal)):
            return self._disagreed(conn, event, upload, location, contradiction)
        if location is None:
            location = conn.execute(
                "INSERT INTO storage_objects (bucket, object_key, upload_id, present, size, etag, content_type,"
                " version_id, sequencer, event_time, last_event_id, last_event_type, removed_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (bucket, object_key) DO NOTHING RETURNING *",
                (event.bucket, event.key, upload_id, not event.is_removal, event.size, event.etag,
                 event.content_type, event.version_id, event.sequencer, event.time, event.id, event.type,
                 event.time if event.is_removal else None)).fetchone()
            if location is None:  # inserted meanwhile by a concurrent event for the same key
                location = _location(conn, event.bucket, event.key, lock=True)
            else:
                return self._applied(conn, event, upload, location)
        if not is_newer(event.sequencer, event.time, location["sequencer"], location["event_time"],
                        removal=event.is_removal):
            log_event(logger, "older storage event ignored", event_id=event.id, event_type=event.type,
                      sequencer=event.sequencer, recorded_sequencer=location["sequencer"],
                      recorded_event=location["last_event_id"])
            return Recorded(outcome=STALE, duplicate=False, upload=upload, location=location)
        if event.is_removal:
            # What was stored stays readable (size, etag...): the row says it is gone and since when.
            location = conn.execute(
                "UPDATE storage_objects SET upload_id = %s, present = false, sequencer = %s, event_time = %s,"
                " last_event_id = %s, last_event_type = %s, removed_at = %s, updated_at = now()"
                " WHERE bucket = %s AND object_key = %s RETURNING *",
                (upload_id, event.sequencer, event.time, event.id, event.type, event.time, event.bucket,
                 event.key)).fetchone()
        else:
            location = conn.execute(
                "UPDATE storage_objects SET upload_id = %s, present = true, size = %s, etag = %s, content_type = %s,"
                " version_id = %s, sequencer = %s, event_time = %s, last_event_id = %s, last_event_type = %s,"
                " removed_at = NULL, updated_at = now() WHERE bucket = %s AND object_key = %s RETURNING *",
                (upload_id, event.size, event.etag, event.content_type, event.version_id, event.sequencer,
                 event.time, event.id, event.type, event.bucket, event.key)).fetchone()
        return self._applied(conn, event, upload, location)

    def _disagreed(self, conn: psycopg.Connection, event: StorageObjectEvent, upload: UploadRow | None,
                   location: dict[str, Any] | None, contradiction: str) -> Recorded:
        log_event(logger, "storage event disagrees with storage", logging.WARNING, event_id=event.id,
                  event_type=event.type, bucket=event.bucket, key=event.key, reason=contradiction,
                  upload_id=str(upload.id) if upload else None)
        audit.record(conn, ACTOR, "storage.event_disagreed_with_storage", upload.id if upload else None,
                     reason=contradiction, **_event_detail(event))
        return Recorded(outcome=DISAGREED, duplicate=False, upload=upload, location=location)

    def _applied(self, conn: psycopg.Connection, event: StorageObjectEvent, upload: UploadRow | None,
                 location: dict[str, Any]) -> Recorded:
        detail = _event_detail(event)
        if upload is None:
            audit.record(conn, ACTOR, "storage.orphan_removed" if event.is_removal else "storage.orphan_recorded",
                         None, **detail)
            return Recorded(outcome=ORPHAN, duplicate=False, upload=None, location=location)
        if upload.bucket != event.bucket:
            # A copy of the upload's object elsewhere (the quarantine, or the uploads bucket after a move).
            audit.record(conn, ACTOR, "storage.copy_removed" if event.is_removal else "storage.copy_recorded",
                         upload.id, **detail)
            return Recorded(outcome=APPLIED, duplicate=False, upload=upload, location=location)
        if event.is_removal:
            upload = conn.cursor(row_factory=upload_row).execute(
                "UPDATE uploads SET storage_sequencer = %s, storage_event_time = %s, updated_at = now()"
                " WHERE id = %s RETURNING *", (event.sequencer, event.time, upload.id)).fetchone()
            audit.record(conn, ACTOR, "storage.object_removed", upload.id, status=upload.status, **detail)
            return Recorded(outcome=APPLIED, duplicate=False, upload=upload, location=location)
        before = upload.status
        upload = conn.cursor(row_factory=upload_row).execute(
            "UPDATE uploads SET stored_size = %s, etag = %s, stored_content_type = %s, storage_sequencer = %s,"
            " storage_event_time = %s,"
            # Only the first step is metadata's to take; scanning, verdicts and expiry belong to others.
            " status = CASE WHEN status = 'pending' THEN 'uploaded' ELSE status END,"
            " completed_at = CASE WHEN status = 'pending' THEN coalesce(completed_at, %s) ELSE completed_at END,"
            " updated_at = now() WHERE id = %s RETURNING *",
            (event.size, event.etag, event.content_type, event.sequencer, event.time, event.time,
             upload.id)).fetchone()
        audit.record(conn, ACTOR, "storage.object_recorded", upload.id, status_before=before,
                     status=upload.status, **detail)
        return Recorded(outcome=APPLIED, duplicate=False, upload=upload, location=location)


def _event_detail(event: StorageObjectEvent) -> dict[str, Any]:
    return {"event_id": event.id, "type": event.type, "bucket": event.bucket, "key": event.key, "size": event.size,
            "etag": event.etag, "sequencer": event.sequencer, "event_time": event.time.isoformat()}


def _find_upload(conn: psycopg.Connection, bucket: str, key: str, *, lock: bool = True) -> UploadRow | None:
    """The upload stored at bucket/key; else the one whose object this is a copy of (same server-made key)."""
    suffix = " FOR UPDATE" if lock else ""
    uploads = conn.cursor(row_factory=upload_row)
    row = uploads.execute("SELECT * FROM uploads WHERE bucket = %s AND object_key = %s" + suffix,
                          (bucket, key)).fetchone()
    if row is None:
        rows = uploads.execute("SELECT * FROM uploads WHERE object_key = %s ORDER BY created_at LIMIT 2" + suffix,
                               (key,)).fetchall()
        row = rows[0] if len(rows) == 1 else None  # two uploads with one key in two buckets: not ours to guess
    return row


def _location(conn: psycopg.Connection, bucket: str, key: str, *, lock: bool) -> dict[str, Any] | None:
    return conn.execute("SELECT * FROM storage_objects WHERE bucket = %s AND object_key = %s"
                        + (" FOR UPDATE" if lock else ""), (bucket, key)).fetchone()
