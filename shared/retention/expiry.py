"""The retention pass behind the expire function: one bounded, resumable sweep.

A pass (`RetentionJob.run`, or `run_retention`) does four things, in this order:

1. **expire** uploads past retention: `expires_at` has passed, or the upload is
   older than the configured retention (so a wrong `expires_at` can never keep
   a file longer), it is not under legal hold and not already ended. Their
   objects are deleted from the uploads bucket and, for states the scan may have
   moved, from the quarantine bucket; a still-pending upload has its multipart
   upload aborted. Rows become `expired`.
2. **abandon** `pending` uploads older than the stale age (24 h): multipart upload
   aborted, anything stored deleted, rows `abandoned`.
3. **abort foreign multipart uploads**: uploads storage holds in the uploads bucket
   that no live upload owns, older than the stale age.
4. **sweep each bucket** a page at a time from a saved cursor: objects no live
   upload owns (older than a grace period) are deleted; uploads in a state that
   needs an object whose object is in neither bucket become `expired` ("object missing").

Every change is made in a short transaction that first locks what it changes
(`FOR UPDATE SKIP LOCKED`: rows for 1-2, the sweep's cursor row for 3-4), then
changes storage, then writes the rows, one audit entry per action and hands the
batch's `dev.dropgate.upload.*` events to `publish`, then commits. So:

- two overlapping passes never pick the same row or page: each object is deleted
  by one of them, and a held file is never selected at all;
- a pass killed before a commit changes no row: the next pass repeats the batch,
  and repeating a deletion or an abort is harmless (deleting an absent key
  succeeds). The events of a batch may then be sent twice, with the same ids
  (`<upload id>.expired`), which is what at-least-once consumers expect; the one
  thing that can be lost is the audit entry of an orphan deleted right before a
  crash (the next pass no longer sees it);
- every step stops at its bound (rows per run, objects listed per bucket, a time
  budget) and says in the summary whether work remains.

Storage calls that fail as a whole (storage down, 5xx) propagate, so the function
answers 503 and the broker redelivers the ping; a key that DeleteObjects refuses
(e.g. an S3 Object Lock legal hold) leaves its row for the next pass and is reported.
"""

from __future__ import annotations

import logging
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

from events.types import UploadEnded
from shared.platform import audit
from shared.platform.audit import Actor
from shared.platform.logs import log_event
from shared.platform.settings import MAX_RETENTION_DAYS, StorageSettings
from shared.platform.storage import error_code, http_status
from shared.retention.cursors import lock_cursor, save_cursor
from shared.retention.deleter import ObjectDeleter
from shared.uploads.model import (
    COMPLETED,
    GONE,
    QUARANTINED,
    UploadRow,
    UploadStatus,
    upload_row,
    values,
)
from shared.uploads.model import MAY_BE_IN_QUARANTINE as _MAY_BE_IN_QUARANTINE

logger = logging.getLogger("dropgate.retention")

ACTOR: Final = Actor.system("expire")
S3_MAX_LIST_KEYS: Final = 1000

ENDED: Final = values(GONE)
# States in which the upload's bytes must exist somewhere.
NEEDS_OBJECT: Final = values(COMPLETED)
# Where the scan leaves them: infected, rejected and unscannable objects move to the quarantine bucket.
IN_QUARANTINE: Final = values(QUARANTINED)
# States in which a copy may sit in the quarantine bucket (a scan that crashed while moving it, or
# an upload the reconcile pass gave up on, which stayed where it was).
MAY_BE_IN_QUARANTINE: Final = values(_MAY_BE_IN_QUARANTINE)
_MAX_ERRORS_REPORTED: Final = 50
_MISSING_CODES: Final = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchUpload"})

Publish = Callable[[Sequence[UploadEnded]], None]
Clock = Callable[[], datetime]


@dataclass(frozen=True)
class RetentionBounds:
    """How much one pass may do; every default keeps a pass well inside Knative's 900 s request timeout."""

    batch_size: int = 500  # rows locked and retired per transaction
    max_files: int = 10_000  # rows expired or abandoned per pass
    stale_after: timedelta = timedelta(hours=24)  # a pending upload older than this is abandoned
    orphan_grace: timedelta = timedelta(hours=1)  # objects and row changes younger than this are left alone
    max_listed_objects: int = 10_000  # objects listed per bucket per pass by the sweep
    max_listed_multipart: int = 1_000  # multipart uploads listed per pass
    time_budget: timedelta = timedelta(minutes=10)  # checked between batches and pages

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_files < 1 or self.max_listed_objects < 1 or self.max_listed_multipart < 1:
            raise ValueError("retention bounds must be positive")


@dataclass
class RetentionSummary:
    """What one pass did; logged as one JSON line and returned by the function."""

    run_id: str
    trigger: str | None  # the PingSource event's id
    started_at: datetime  # by the job's clock
    expired: int = 0  # uploads past retention, objects deleted
    abandoned: int = 0  # stale pending uploads, multipart aborted
    objects_missing: int = 0  # uploads marked expired because their object was gone
    orphans_deleted: int = 0  # objects no live upload owned
    multipart_aborted: int = 0  # multipart uploads no live upload owned
    held: int = 0  # due, but under legal hold: kept
    objects_deleted: int = 0  # keys (or versions) DeleteObjects removed or found absent
    delete_requests: int = 0  # DeleteObjects calls
    events: int = 0  # dev.dropgate.upload.* events handed to publish
    error_count: int = 0
    errors: list[str] = field(default_factory=list)  # the first few, for the log and the reply
    more_work: bool = False  # a bound stopped the pass; the next pass continues
    duration_seconds: float = 0.0

    def error(self, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < _MAX_ERRORS_REPORTED:
            self.errors.append(message[:300])

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["duration_seconds"] = round(self.duration_seconds, 3)
        return data


def run_retention(pool: ConnectionPool, s3: BaseClient, storage: StorageSettings, *, retention_days: int,
                  source: str, publish: Publish, clock: Clock = lambda: datetime.now(UTC),
                  bounds: RetentionBounds = RetentionBounds(), trigger: str | None = None) -> RetentionSummary:
    """One pass over everything (see the module docstring)."""
    job = RetentionJob(pool=pool, s3=s3, storage=storage, retention_days=retention_days, source=source,
                       publish=publish, clock=clock, bounds=bounds)
    return job.run(trigger=trigger)


class RetentionJob:
    """One pass's dependencies and state; each public step can also run alone (the tests do)."""

    def __init__(self, *, pool: ConnectionPool, s3: BaseClient, storage: StorageSettings, retention_days: int,
                 source: str, publish: Publish, clock: Clock = lambda: datetime.now(UTC),
                 bounds: RetentionBounds = RetentionBounds()) -> None:
        if not 1 <= retention_days <= MAX_RETENTION_DAYS:
            raise ValueError(f"retention_days must be 1..{MAX_RETENTION_DAYS}")
        self._pool = pool
        self._s3 = s3
        self._storage = storage
        self._retention = timedelta(days=retention_days)
        self._source = source  # "<DROPGATE_EVENT_SOURCE>/expire"
        self._publish = publish
        self.bounds = bounds
        self._objects = ObjectDeleter(s3)
        self._deadline = time.monotonic() + bounds.time_budget.total_seconds()
        self._now = clock()
        self.summary = RetentionSummary(run_id=uuid.uuid4().hex, trigger=None, started_at=self._now)

    def run(self, *, trigger: str | None = None) -> RetentionSummary:
        started = time.monotonic()
        self.summary.trigger = trigger
        try:
            self.count_held()
            self.expire_due()
            self.abandon_stale()
            self.abort_foreign_multipart()
            for bucket in dict.fromkeys((self._storage.uploads_bucket, self._storage.quarantine_bucket)):
                self.sweep_bucket(bucket)
        except Exception as exc:
            self.summary.duration_seconds = time.monotonic() - started
            log_event(logger, "retention pass failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}"[:500],
                      **self.summary.as_dict())
            raise
        self.summary.duration_seconds = time.monotonic() - started
        log_event(logger, "retention pass finished", **self.summary.as_dict())
        return self.summary

    # -- bounds --

    def _out_of_time(self) -> bool:
        if time.monotonic() >= self._deadline:
            self.summary.more_work = True
            return True
        return False

    @property
    def _ceiling(self) -> datetime:
        """Anything created before this is past retention, whatever its expires_at says."""
        return self._now - self._retention

    # -- 1. expire --

    def count_held(self) -> int:
        with self._pool.connection() as conn:
            held = conn.execute(
                "SELECT count(*) AS n FROM uploads WHERE legal_hold AND status <> ALL(%s)"
                " AND (expires_at < %s OR created_at < %s)", (list(ENDED), self._now, self._ceiling)).fetchone()["n"]
        self.summary.held = held
        return held

    def expire_due(self) -> None:
        """Uploads past retention and not held: objects deleted, pending multipart aborted, rows `expired`."""
        # A scan that is running right now is left to finish (next pass): deleting its object under it
        # would let its quarantine copy land after the deletion.
        query = ("SELECT * FROM uploads WHERE NOT legal_hold AND status <> ALL(%(ended)s)"
                 " AND (expires_at < %(now)s OR created_at < %(ceiling)s)"
                 " AND NOT (status = 'scanning' AND updated_at > %(busy_since)s)"
                 " AND id <> ALL(%(skip)s)"
                 " ORDER BY expires_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED")
        params = {"ended": list(ENDED), "now": self._now, "ceiling": self._ceiling,
                  "busy_since": self._now - self.bounds.orphan_grace}
        self._retire_in_batches(query, params, "expired", self._expiry_reason)

    def _expiry_reason(self, row: UploadRow) -> str:
        if row.status == UploadStatus.PENDING:
            return "retention passed before the upload was completed"
        if row.expires_at >= self._now:
            return f"older than the retention of {self._retention.days} days"
        return "retention passed"

    # -- 2. abandon --

    def abandon_stale(self) -> None:
        """Pending uploads older than the stale age: multipart aborted, rows `abandoned`."""
        hours = self.bounds.stale_after.total_seconds() / 3600
        query = ("SELECT * FROM uploads WHERE status = 'pending' AND NOT legal_hold AND created_at < %(stale)s"
                 " AND id <> ALL(%(skip)s) ORDER BY created_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED")
        self._retire_in_batches(query, {"stale": self._now - self.bounds.stale_after}, "abandoned",
                                lambda _row: f"multipart upload not completed within {hours:g} hours")

    # -- 1 and 2: lock a batch, change storage, mark, audit, publish, commit --

    def _retire_in_batches(self, query: str, params: dict[str, Any], outcome: str,
                           reason: Callable[[UploadRow], str]) -> None:
        skip: list[uuid.UUID] = []  # rows this pass could not retire: not picked again by it
        done = self.summary.expired + self.summary.abandoned
        while not self._out_of_time():
            limit = min(self.bounds.batch_size, self.bounds.max_files - done)
            if limit <= 0:
                self.summary.more_work = True
                return
            with self._pool.connection() as conn, conn.transaction():
                rows = conn.cursor(row_factory=upload_row).execute(
                    query, {**params, "skip": skip, "limit": limit}).fetchall()
                if not rows:
                    return
                failed = self._retire(conn, rows, outcome, reason)
            skip.extend(failed)
            done += len(rows)
            if len(rows) < limit:
                return

    def _retire(self, conn: psycopg.Connection, rows: list[UploadRow], outcome: str,
                reason: Callable[[UploadRow], str]) -> list[uuid.UUID]:
        """Storage first (abort, delete), then the rows, audit and events, in the caller's transaction."""
        failed: dict[uuid.UUID, str] = {}
        for row in rows:
            if row.status == UploadStatus.PENDING and row.storage_upload_id:
                problem = self._abort_multipart(row.bucket, row.object_key, row.storage_upload_id)
                if problem:
                    failed[row.id] = problem
        targets: dict[str, list[str]] = {}
        for row in rows:
            if row.id not in failed:
                for bucket in self._buckets_of(row):
                    targets.setdefault(bucket, []).append(row.object_key)
        refused = self._objects.delete(targets, self.summary)
        for row in rows:
            problems = [refused[(bucket, row.object_key)] for bucket in self._buckets_of(row)
                        if (bucket, row.object_key) in refused]
            if problems and row.id not in failed:
                failed[row.id] = "; ".join(problems)
        retired = [row for row in rows if row.id not in failed]
        for row in rows:
            if row.id in failed:
                self.summary.error(f"upload {row.id} ({row.object_key}) not {outcome}: {failed[row.id]}")
        ended = []
        with conn.pipeline():
            for row in retired:
                why = reason(row)
                conn.execute("UPDATE uploads SET status = %s, status_reason = %s, updated_at = now() WHERE id = %s",
                             (outcome, why, row.id))
                audit.record(conn, ACTOR, f"retention.{outcome}", row.id, reason=why, status_before=row.status,
                             key=row.object_key, buckets=self._buckets_of(row),
                             expires_at=row.expires_at.isoformat(), run_id=self.summary.run_id,
                             multipart_aborted=row.status == UploadStatus.PENDING and bool(row.storage_upload_id))
                ended.append(self._ended(row, outcome, why))
        self._send(ended)
        if outcome == "expired":
            self.summary.expired += len(retired)
        else:
            self.summary.abandoned += len(retired)
        return list(failed)

    def _buckets_of(self, row: UploadRow) -> list[str]:
        buckets = [row.bucket]
        if row.status in MAY_BE_IN_QUARANTINE and self._storage.quarantine_bucket != row.bucket:
            buckets.append(self._storage.quarantine_bucket)
        return buckets

    def _ended(self, row: UploadRow, outcome: str, reason: str) -> UploadEnded:
        bucket = self._storage.quarantine_bucket if row.status in IN_QUARANTINE else row.bucket
        # One id per upload and outcome: a batch re-sent after a crash carries the same ids.
        return UploadEnded(id=f"{row.id}.{outcome}", source=self._source, time=self._now, upload_id=row.id,
                           outcome=outcome, bucket=bucket, key=row.object_key, reason=reason, object_deleted=True)

    def _send(self, ended: list[UploadEnded]) -> None:
        if ended:
            self._publish(ended)  # before the commit: a failure rolls the batch back, to be redone
            self.summary.events += len(ended)

    def _abort_multipart(self, bucket: str, key: str, upload_id: str) -> str | None:
        """None when storage no longer holds the multipart upload; else why not (this row waits)."""
        try:
            self._s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if error_code(exc) in _MISSING_CODES:
                return None
            if http_status(exc) >= 500:
                raise
            return f"AbortMultipartUpload: {error_code(exc)}"
        return None

    # -- 3. multipart uploads no live upload owns --

    def abort_foreign_multipart(self) -> None:
        bucket = self._storage.uploads_bucket
        listed = 0
        while listed < self.bounds.max_listed_multipart and not self._out_of_time():
            with self._pool.connection() as conn, conn.transaction():
                cursor = lock_cursor(conn, f"multipart:{bucket}")
                if cursor is None:
                    return  # another pass holds this sweep
                request: dict[str, Any] = {"Bucket": bucket,
                                           "MaxUploads": min(S3_MAX_LIST_KEYS, self.bounds.max_listed_multipart - listed)}
                if cursor.get("key_marker"):
                    request["KeyMarker"] = cursor["key_marker"]
                    if cursor.get("upload_id_marker"):
                        request["UploadIdMarker"] = cursor["upload_id_marker"]
                page = self._s3.list_multipart_uploads(**request)
                uploads = page.get("Uploads", [])
                self._abort_unowned(conn, bucket, uploads)
                truncated = bool(page.get("IsTruncated")) and bool(uploads)
                save_cursor(conn, f"multipart:{bucket}",
                             {"key_marker": page.get("NextKeyMarker") or uploads[-1]["Key"],
                              "upload_id_marker": page.get("NextUploadIdMarker") or uploads[-1]["UploadId"]}
                             if truncated else {})
            listed += len(uploads)
            if not truncated:
                return
        self.summary.more_work = True

    def _abort_unowned(self, conn: psycopg.Connection, bucket: str, uploads: list[dict[str, Any]]) -> None:
        stale = [u for u in uploads if u["Initiated"] < self._now - self.bounds.stale_after]
        if not stale:
            return
        owners = {row.storage_upload_id: row for row in conn.cursor(row_factory=upload_row).execute(
            "SELECT * FROM uploads WHERE storage_upload_id = ANY(%s)", ([u["UploadId"] for u in stale],)).fetchall()}
        for entry in stale:
            owner = owners.get(entry["UploadId"])
            if owner is not None and (owner.legal_hold or owner.status not in ENDED):
                continue  # a live upload's: step 2 abandons it when it is stale and not held
            problem = self._abort_multipart(bucket, entry["Key"], entry["UploadId"])
            if problem:
                self.summary.error(f"multipart upload {entry['UploadId']} of {bucket}/{entry['Key']}: {problem}")
                continue
            audit.record(conn, ACTOR, "retention.multipart_aborted", owner.id if owner else None,
                         bucket=bucket, key=entry["Key"], storage_upload_id=entry["UploadId"],
                         initiated=entry["Initiated"].isoformat(),
                         owner_status=owner.status if owner else None, run_id=self.summary.run_id)
            self.summary.multipart_aborted += 1

    # -- 4. sweep: orphans both ways --

    def sweep_bucket(self, bucket: str) -> None:
        """One bucket, a listing page per transaction, from where the last pass stopped."""
        name = f"objects:{bucket}"
        listed = 0
        while listed < self.bounds.max_listed_objects and not self._out_of_time():
            with self._pool.connection() as conn, conn.transaction():
                cursor = lock_cursor(conn, name)
                if cursor is None:
                    return  # another pass is sweeping this bucket
                start_after = cursor.get("start_after", "")
                request: dict[str, Any] = {"Bucket": bucket,
                                           "MaxKeys": min(S3_MAX_LIST_KEYS, self.bounds.max_listed_objects - listed)}
                if start_after:
                    request["StartAfter"] = start_after
                page = self._s3.list_objects_v2(**request)
                contents = page.get("Contents", [])
                truncated = bool(page.get("IsTruncated")) and bool(contents)
                self._delete_orphans(conn, bucket, contents)
                # Rows are checked over the key range this page covered: (start_after, last key],
                # or to the end of the bucket on the last page.
                end = contents[-1]["Key"] if truncated else None
                resume = self._mark_missing(conn, bucket, start_after, end, {o["Key"] for o in contents})
                next_start = resume or end
                save_cursor(conn, name, {"start_after": next_start} if next_start else {})
            listed += len(contents)
            if next_start is None:
                return  # the whole bucket is swept; the next pass starts again from the beginning
        self.summary.more_work = True

    def _delete_orphans(self, conn: psycopg.Connection, bucket: str, contents: list[dict[str, Any]]) -> None:
        if not contents:
            return
        keys = [o["Key"] for o in contents]
        owners: dict[str, list[UploadRow]] = {}
        for row in conn.cursor(row_factory=upload_row).execute(
                "SELECT * FROM uploads WHERE bucket = ANY(%s) AND object_key = ANY(%s)",
                ([self._storage.uploads_bucket, self._storage.quarantine_bucket, bucket], keys)).fetchall():
            owners.setdefault(row.object_key, []).append(row)
        young = self._now - self.bounds.orphan_grace
        orphans = []
        for obj in contents:
            rows = owners.get(obj["Key"], [])
            if any(row.legal_hold or row.status not in ENDED for row in rows):
                continue  # a live or held upload's object
            if obj["LastModified"] >= young:
                continue  # may belong to something that is happening right now
            orphans.append((obj, rows[0].id if rows else None))
        if not orphans:
            return
        refused = self._objects.delete({bucket: [obj["Key"] for obj, _ in orphans]}, self.summary)
        with conn.pipeline():
            for obj, upload_id in orphans:
                if (bucket, obj["Key"]) in refused:
                    self.summary.error(f"orphan {bucket}/{obj['Key']} not deleted: {refused[(bucket, obj['Key'])]}")
                    continue
                audit.record(conn, ACTOR, "retention.orphan_deleted", upload_id, bucket=bucket, key=obj["Key"],
                             size=obj.get("Size"), last_modified=obj["LastModified"].isoformat(),
                             run_id=self.summary.run_id)
                self.summary.orphans_deleted += 1

    def _mark_missing(self, conn: psycopg.Connection, bucket: str, start_after: str, end: str | None,
                      listed: set[str]) -> str | None:
        """Rows whose object should be in this key range of `bucket` but is in neither bucket: `expired`.

        Returns where the next page must start when more rows were due than one batch.
        """
        if bucket == self._storage.quarantine_bucket:
            where, params = "status = ANY(%(statuses)s)", {"statuses": list(IN_QUARANTINE)}
        else:
            where, params = ("bucket = %(bucket)s AND status = ANY(%(statuses)s)",
                             {"bucket": bucket, "statuses": [s for s in NEEDS_OBJECT if s not in IN_QUARANTINE]})
        if end is not None:
            where += " AND object_key <= %(end)s"
        # Rows that changed within the grace period are left for later: the object may be on its way.
        rows = conn.cursor(row_factory=upload_row).execute(
            f"SELECT * FROM uploads WHERE {where} AND NOT legal_hold AND object_key > %(start)s"  # noqa: S608
            " AND updated_at < %(settled)s AND NOT (object_key = ANY(%(listed)s))"
            " ORDER BY object_key LIMIT %(limit)s FOR UPDATE SKIP LOCKED",
            {**params, "end": end, "start": start_after, "settled": self._now - self.bounds.orphan_grace,
             "listed": list(listed), "limit": self.bounds.batch_size}).fetchall()
        missing = [row for row in rows if not self._object_exists(row)]
        ended = []
        with conn.pipeline():
            for row in missing:
                conn.execute("UPDATE uploads SET status = 'expired', status_reason = 'object missing',"
                             " updated_at = now() WHERE id = %s", (row.id,))
                audit.record(conn, ACTOR, "retention.object_missing", row.id, status_before=row.status,
                             key=row.object_key, buckets=self._buckets_of(row), run_id=self.summary.run_id)
                ended.append(self._ended(row, "expired", "object missing"))
        self._send(ended)
        self.summary.objects_missing += len(missing)
        if len(rows) == self.bounds.batch_size:
            self.summary.more_work = True
            return rows[-1].object_key
        return None

    def _object_exists(self, row: UploadRow) -> bool:
        # The upload's own bucket first, then the quarantine: the scan moves an object by copying it
        # to the quarantine and then deleting it, so in this order a move in flight is always seen.
        for bucket in dict.fromkeys((row.bucket, self._storage.quarantine_bucket)):
            try:
                self._s3.head_object(Bucket=bucket, Key=row.object_key)
                return True
            except ClientError as exc:
                if error_code(exc) in _MISSING_CODES:
                    continue
                raise
        return False
