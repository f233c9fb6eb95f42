"""The reconciliation pass behind the reconcile function: no file left unscanned when a notification is lost.

Storage notifications are not guaranteed (MinIO without a queue sends each one once, a webhook
receiver can be down, a broker can drop an event), so dropgate does not depend on them. A pass
(`ReconcileJob.run`, or `run_reconcile`) finds the uploads that should have a verdict by now:

1. **awaiting a verdict** (the database alone): uploads `uploaded` for longer than the grace
   period since their completion, and uploads `scanning` unchanged for longer than the scan
   timeout while no scan holds their object's lock (`shared.scanning.service.scan_lock_name`): a scan
   killed midway, or one whose retries ran out;
2. **objects nobody recorded**: `pending` uploads older than the grace period whose object
   storage already holds (HeadObject): the completion reached storage, but neither presign's
   `complete` nor a storage notification ever reached the row. A bounded slice per pass, from
   a saved cursor (`retention_cursors`, `reconcile:pending:<bucket>`).

and re-drives each: it re-emits the canonical "object created" CloudEvent of its object
(`object_created_event`), whose id is derived from bucket, key and ETag, so it is the same
every time for the same object version (and the same as presign's fast path sends). Scan
claims the row or answers with the verdict already written, and waits for a scan that is
running (the object's advisory lock); metadata drops an id it has applied.

Every re-drive counts (`uploads.redrive_attempts`, migration 0005) and is audited
(`reconcile.redriven`, or `reconcile.object_missing` when storage holds no object to announce).
An upload due again after `max_attempts` re-drives is marked `failed` (`scan_verdict` failed,
`status_reason` says why; presign never serves it) and audited (`reconcile.failed`), so no file
stays pending forever. Re-drives of one upload are a grace period apart (`last_redrive_at`).

Every change is one transaction shaped lock -> storage -> rows -> audit -> events -> commit,
as in the retention pass: rows are taken `FOR UPDATE SKIP LOCKED` (two overlapping passes take
disjoint batches), events are handed to `publish` before the commit (a sink that is down rolls
the batch back; a crash after sending re-sends the same ids next time), and every step stops at
its bound and says so in the summary.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from botocore.client import BaseClient
from botocore.exceptions import ClientError
from psycopg_pool import ConnectionPool

from events.notifications import digest
from events.types import ObjectCreated, ScanVerdict
from shared.platform import audit, metrics
from shared.platform.audit import Actor
from shared.platform.logs import log_event
from shared.platform.settings import StorageSettings
from shared.platform.storage import is_missing
from shared.retention.cursors import lock_cursor, save_cursor
from shared.scanning.quarantine import move_to_quarantine
from shared.scanning.service import scan_lock_name
from shared.uploads.model import (
    AWAITING_VERDICT,
    UploadRow,
    UploadStatus,
    upload_row,
    values,
)

logger = logging.getLogger("dropgate.reconcile")

ACTOR: Final = Actor.system("reconcile")
# The eventSource of the events dropgate emits on storage's behalf: source "dropgate:s3..<bucket>".
EVENT_SOURCE: Final = "dropgate:s3"
VERDICT_SOURCE: Final = "dropgate/reconcile"  # functions/reconcile passes "<DROPGATE_EVENT_SOURCE>/reconcile"

# Why an upload is re-driven (audit `reason`, summary counters, metric label).
NO_VERDICT: Final = "no_verdict"  # uploaded, completed longer than the grace period ago
SCAN_STUCK: Final = "scan_stuck"  # scanning, unchanged for longer than the scan timeout, no scan running
NOT_RECORDED: Final = "not_recorded"  # pending, yet storage holds its object: the completion was never recorded
_FAILURE_REASONS: Final = {
    NO_VERDICT: "no scan ever answered",
    SCAN_STUCK: "the scan never finished",
    NOT_RECORDED: "no scan ever answered",
}

_MULTIPART_ETAG: Final = re.compile(r"-\d+$")
_START: Final = {"created_at": "-infinity", "id": str(uuid.UUID(int=0))}  # the pending cursor before the first row

Publish = Callable[[Sequence[ObjectCreated | ScanVerdict]], None]
Clock = Callable[[], datetime]


# -- the canonical "object created" event --

def object_created_id(bucket: str, key: str, etag: str | None) -> str:
    """The id of an object version's canonical "object created" event: the same each time it is sent."""
    return "dropgate-" + digest("ObjectCreated", bucket, key, etag)


def object_created_event(upload: UploadRow, head: dict[str, Any], *, found_in: str | None = None) -> ObjectCreated:
    """The "object created" CloudEvent storage would have sent for an upload's object, from its row and HeadObject.

    The same shape scan and metadata accept from storage (`com.amazonaws.s3.ObjectCreated:*`
    of the uploads bucket, even when a crashed scan already moved the object to quarantine:
    scan reads it from there). The id comes from the row's ETag (the one presign's completion
    recorded), so the fast path and every re-drive send one id per object version. `time` is
    storage's LastModified and the event has no sequencer: metadata then orders it by time, so
    a storage notification of the same version (which has a finer time) is never older than it.
    """
    etag = (upload.etag or head.get("ETag") or "").strip('"') or None
    name = "ObjectCreated:CompleteMultipartUpload" if etag and _MULTIPART_ETAG.search(etag) else "ObjectCreated:Put"
    own_bucket = found_in in (None, upload.bucket)
    return ObjectCreated(
        id=object_created_id(upload.bucket, upload.object_key, etag), event_name=name,
        event_source=EVENT_SOURCE, region="", bucket=upload.bucket, key=upload.object_key,
        time=head["LastModified"], size=head.get("ContentLength"), etag=etag, sequencer=None,
        content_type=head.get("ContentType") or upload.content_type,
        version_id=head.get("VersionId") if own_bucket else None,
        # presign stored the upload's trace context with the object: a re-drive continues that trace.
        traceparent=(head.get("Metadata") or {}).get("traceparent"))


def locate_object(s3: BaseClient, storage: StorageSettings, upload: UploadRow) -> tuple[str, dict] | None:
    """(bucket, HeadObject answer) of an upload's object: its own bucket first, then the quarantine.

    In this order a scan's move (copy to quarantine, then delete) is always seen. None when
    storage holds it in neither; storage failures raise.
    """
    for bucket in dict.fromkeys((upload.bucket, storage.quarantine_bucket)):
        try:
            return bucket, s3.head_object(Bucket=bucket, Key=upload.object_key)
        except ClientError as exc:
            if is_missing(exc):
                continue
            raise
    return None


# -- the pass --

@dataclass(frozen=True)
class ReconcileBounds:
    """When an upload is due, how often it is tried, and how much one pass may do."""

    grace: timedelta = timedelta(minutes=10)  # completed without a verdict this long: re-drive; also between re-drives
    scan_timeout: timedelta = timedelta(minutes=30)  # `scanning` unchanged this long with no scan running: stuck
    max_attempts: int = 3  # re-drives before an upload that is due again is marked failed
    batch_size: int = 100  # rows locked per transaction
    max_redrives: int = 1000  # uploads re-driven or failed per pass
    max_checked: int = 1000  # pending uploads looked up in storage per pass
    time_budget: timedelta = timedelta(seconds=240)  # checked between batches

    def __post_init__(self) -> None:
        if min(self.max_attempts, self.batch_size, self.max_redrives, self.max_checked) < 1:
            raise ValueError("reconcile bounds must be positive")


@dataclass
class ReconcileSummary:
    """What one pass did; logged as one JSON line and returned by the function."""

    run_id: str
    trigger: str | None  # the PingSource event's id
    started_at: datetime  # by the pass's clock
    redriven: int = 0  # uploads whose "object created" event was re-emitted
    no_verdict: int = 0  # ... of them: uploaded, no verdict after the grace period
    scan_stuck: int = 0  # ... scanning past the scan timeout with no scan running
    not_recorded: int = 0  # ... pending although storage holds the object
    objects_missing: int = 0  # due, but storage holds no object to announce: the attempt counts, nothing is sent
    failed: int = 0  # marked failed: due again after max_attempts re-drives
    scans_running: int = 0  # due by the clock, but a scan holds the object's lock: left alone
    pending_checked: int = 0  # pending uploads looked up in storage
    events: int = 0  # CloudEvents handed to publish
    more_work: bool = False  # a bound stopped the pass; the next pass continues
    duration_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["duration_seconds"] = round(self.duration_seconds, 3)
        return data


@dataclass
class _Outcome:
    """What one batch did, counted into the summary (and the metrics) only once it committed."""

    events: list[ObjectCreated | ScanVerdict] = field(default_factory=list)
    redriven: dict[str, int] = field(default_factory=dict)  # reason -> uploads re-driven with an event
    missing: dict[str, int] = field(default_factory=dict)  # reason -> attempts without an object to announce
    failed: dict[str, int] = field(default_factory=dict)  # reason -> uploads marked failed
    failures: list[dict[str, Any]] = field(default_factory=list)  # what to log about each, once committed
    scans_running: int = 0


def run_reconcile(pool: ConnectionPool, s3: BaseClient, storage: StorageSettings, *, publish: Publish,
                  clock: Clock = lambda: datetime.now(UTC), bounds: ReconcileBounds = ReconcileBounds(),
                  trigger: str | None = None, verdict_source: str = VERDICT_SOURCE) -> ReconcileSummary:
    """One pass over everything (see the module docstring)."""
    return ReconcileJob(pool=pool, s3=s3, storage=storage, publish=publish, clock=clock, bounds=bounds,
                        verdict_source=verdict_source).run(trigger=trigger)


class ReconcileJob:
    """One pass's dependencies and state; each step can also run alone (the tests do)."""

    def __init__(self, *, pool: ConnectionPool, s3: BaseClient, storage: StorageSettings, publish: Publish,
                 clock: Clock = lambda: datetime.now(UTC), bounds: ReconcileBounds = ReconcileBounds(),
                 verdict_source: str = VERDICT_SOURCE) -> None:
        self._pool = pool
        self._verdict_source = verdict_source  # the CloudEvents source of the verdicts it gives up with
        self._s3 = s3
        self._storage = storage
        self._publish = publish
        self.bounds = bounds
        self._now = clock()
        self._deadline = time.monotonic() + bounds.time_budget.total_seconds()
        self.summary = ReconcileSummary(run_id=uuid.uuid4().hex, trigger=None, started_at=self._now)

    @property
    def _bucket(self) -> str:
        return self._storage.uploads_bucket

    @property
    def _settled(self) -> datetime:
        """Anything that happened before this has had its grace period."""
        return self._now - self.bounds.grace

    def run(self, *, trigger: str | None = None) -> ReconcileSummary:
        started = time.monotonic()
        self.summary.trigger = trigger
        try:
            self.redrive_awaiting()
            self.redrive_unrecorded()
        except Exception as exc:
            self.summary.duration_seconds = time.monotonic() - started
            log_event(logger, "reconciliation pass failed", logging.WARNING,
                      error=f"{type(exc).__name__}: {exc}"[:500], **self.summary.as_dict())
            raise
        self.summary.duration_seconds = time.monotonic() - started
        log_event(logger, "reconciliation pass finished", **self.summary.as_dict())
        return self.summary

    # -- bounds --

    def _room(self, wanted: int) -> int:
        """How many more uploads this pass may act on, at most `wanted`; 0 (and more_work) when out of budget."""
        done = self.summary.redriven + self.summary.objects_missing + self.summary.failed
        room = min(wanted, self.bounds.max_redrives - done)
        if room <= 0 or time.monotonic() >= self._deadline:
            self.summary.more_work = True
            return 0
        return room

    # -- 1. uploads awaiting a verdict --

    def redrive_awaiting(self) -> None:
        """`uploaded` past the grace period, `scanning` past the scan timeout: re-driven, or failed when spent."""
        query = ("SELECT * FROM uploads WHERE bucket = %(bucket)s AND ("
                 " (status = 'uploaded' AND coalesce(completed_at, updated_at) < %(settled)s)"
                 " OR (status = 'scanning' AND updated_at < %(stuck)s))"
                 " AND (last_redrive_at IS NULL OR last_redrive_at < %(settled)s) AND id <> ALL(%(skip)s)"
                 " ORDER BY coalesce(last_redrive_at, completed_at, created_at) LIMIT %(limit)s"
                 " FOR UPDATE SKIP LOCKED")
        skip: list[uuid.UUID] = []  # every row is looked at once per pass, whatever became of it
        while limit := self._room(self.bounds.batch_size):
            with self._pool.connection() as conn, conn.transaction():
                rows = conn.cursor(row_factory=upload_row).execute(
                    query, {"bucket": self._bucket, "settled": self._settled, "skip": skip,
                            "stuck": self._now - self.bounds.scan_timeout, "limit": limit}).fetchall()
                outcome = _Outcome()
                for row in rows:
                    reason = NO_VERDICT if row.status == UploadStatus.UPLOADED else SCAN_STUCK
                    self._settle(conn, row, reason, outcome, located=None)
                self._send(outcome)
            self._count(outcome)
            skip.extend(row.id for row in rows)
            if len(rows) < limit:
                return

    # -- 2. objects storage holds that no row recorded --

    def redrive_unrecorded(self) -> None:
        """`pending` uploads whose object is in storage (the completion was lost): a bounded, resumable slice."""
        name = f"reconcile:pending:{self._bucket}"
        while self.summary.pending_checked < self.bounds.max_checked:
            limit = self._room(min(self.bounds.batch_size, self.bounds.max_checked - self.summary.pending_checked))
            if not limit:
                return
            with self._pool.connection() as conn, conn.transaction():
                position = lock_cursor(conn, name)
                if position is None:
                    return  # another pass is on this slice
                after = {**_START, **position}
                rows = conn.cursor(row_factory=upload_row).execute(
                    "SELECT * FROM uploads WHERE bucket = %(bucket)s AND status = 'pending'"
                    " AND created_at < %(settled)s AND (last_redrive_at IS NULL OR last_redrive_at < %(settled)s)"
                    " AND (created_at, id) > (%(after_created)s::timestamptz, %(after_id)s::uuid)"
                    " ORDER BY created_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED",
                    {"bucket": self._bucket, "settled": self._settled, "after_created": after["created_at"],
                     "after_id": after["id"], "limit": limit}).fetchall()
                outcome = _Outcome()
                for row in rows:
                    # A pending upload's object can be in no other bucket: no scan has moved it yet.
                    head = self._head(row.bucket, row.object_key)
                    if head is not None and head["LastModified"] < self._settled:
                        self._settle(conn, row, NOT_RECORDED, outcome, located=(row.bucket, head))
                self._send(outcome)
                more = len(rows) == limit
                save_cursor(conn, name, {"created_at": rows[-1].created_at.isoformat(),
                                          "id": str(rows[-1].id)} if more else {})
            self._count(outcome)
            self.summary.pending_checked += len(rows)
            if not more:
                return  # the end: the next pass starts from the oldest pending upload again
        self.summary.more_work = True

    # -- one due upload --

    def _settle(self, conn: psycopg.Connection, row: UploadRow, reason: str, outcome: _Outcome, *,
                located: tuple[str, dict] | None) -> None:
        """Re-drive one due upload, or mark it failed when its attempts are spent; in the caller's transaction."""
        # Held until the commit: a scan that starts meanwhile waits for this batch, and one that runs
        # now (its process alive, whatever the row's age says) is left alone.
        free = conn.execute("SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0)) AS free",
                            (scan_lock_name(row.bucket, row.object_key),)).fetchone()["free"]
        if not free:
            outcome.scans_running += 1
            return
        if located is None:
            located = locate_object(self._s3, self._storage, row)
        if row.redrive_attempts >= self.bounds.max_attempts:
            text, verdict = self._fail(conn, row, reason, located)
            if verdict is not None:
                outcome.events.append(verdict)
            outcome.failed[reason] = outcome.failed.get(reason, 0) + 1
            outcome.failures.append({"upload_id": str(row.id), "status_before": row.status, "reason": text})
            return
        attempt = row.redrive_attempts + 1
        conn.execute("UPDATE uploads SET redrive_attempts = %s, last_redrive_at = %s, updated_at = now()"
                     " WHERE id = %s", (attempt, self._now, row.id))
        if located is None:
            audit.record(conn, ACTOR, "reconcile.object_missing", row.id, reason=reason, attempt=attempt,
                         status=row.status, key=row.object_key, run_id=self.summary.run_id)
            outcome.missing[reason] = outcome.missing.get(reason, 0) + 1
            return
        found_in, head = located
        event = object_created_event(row, head, found_in=found_in)
        audit.record(conn, ACTOR, "reconcile.redriven", row.id, reason=reason, attempt=attempt,
                     status=row.status, event_id=event.id, event_type=event.type, bucket=found_in,
                     key=row.object_key, run_id=self.summary.run_id)
        outcome.events.append(event)
        outcome.redriven[reason] = outcome.redriven.get(reason, 0) + 1

    def _fail(self, conn: psycopg.Connection, row: UploadRow, reason: str,
              located: tuple[str, dict] | None) -> tuple[str, ScanVerdict | None]:
        """Mark the upload unscannable, its object quarantined like scan's; (the reason, its verdict event)."""
        why = _FAILURE_REASONS[reason] if located is not None else "the object is missing from storage"
        text = f"not scanned after {row.redrive_attempts} re-drives: {why}"
        bucket = row.bucket  # where the object is after this: the row keeps naming the uploads bucket, as scan's do
        if located is not None:
            found_in, head = located
            # Like every verdict that is not clean: the bytes leave the uploads bucket first (docs/scan.md).
            bucket = self._storage.quarantine_bucket
            if found_in != bucket:
                move_to_quarantine(self._s3, self._storage, row.object_key, source_bucket=found_in,
                                   version_id=head.get("VersionId"), legal_hold=row.legal_hold)
        # Scanner errors past the retry budget mean "not fully scanned": unscannable, never clean
        # (docs/scan.md). scan_detail too: a late delivery that finds this verdict replies with it.
        changed = conn.execute(
            "UPDATE uploads SET status = %(status)s, scan_verdict = %(status)s, scan_detail = %(text)s,"
            " status_reason = %(text)s, updated_at = now() WHERE id = %(id)s AND status = ANY(%(awaiting)s)",
            {"status": UploadStatus.UNSCANNABLE, "text": text, "id": row.id,
             "awaiting": values(AWAITING_VERDICT)}).rowcount
        audit.record(conn, ACTOR, "reconcile.failed", row.id, reason=text, cause=reason, status_before=row.status,
                     attempts=row.redrive_attempts, key=row.object_key, object_found=located is not None,
                     run_id=self.summary.run_id)
        if not changed:
            return text, None
        # The verdict event scan would have sent, with scan's id for it: subscribers see one verdict per upload.
        return text, ScanVerdict(
            id=f"{row.id}.scan", source=self._verdict_source, time=self._now, upload_id=row.id,
            verdict="unscannable", bucket=bucket, key=row.object_key,
            size=located[1].get("ContentLength") if located else None, reason=text)

    def _head(self, bucket: str, key: str) -> dict[str, Any] | None:
        try:
            return self._s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise

    def _send(self, outcome: _Outcome) -> None:
        """Hand the batch's events over before its commit: a sink that is down rolls the batch back."""
        if outcome.events:
            self._publish(outcome.events)

    def _count(self, outcome: _Outcome) -> None:
        summary = self.summary
        summary.events += len(outcome.events)
        summary.scans_running += outcome.scans_running
        for reason, count in outcome.redriven.items():
            summary.redriven += count
            setattr(summary, reason, getattr(summary, reason) + count)
        summary.objects_missing += sum(outcome.missing.values())
        summary.failed += sum(outcome.failed.values())
        for failure in outcome.failures:
            log_event(logger, "upload failed: never scanned", logging.WARNING, outcome="failed",
                      run_id=summary.run_id, **failure)
        for name, counts in (("redriven", outcome.redriven), ("object_missing", outcome.missing),
                             ("failed", outcome.failed)):
            for reason, count in counts.items():
                metrics.RECONCILE_UPLOADS.labels(name, reason).inc(count)
