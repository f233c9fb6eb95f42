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
from shared.platform.logs import log_event
from shared.platform.settings import (
    MAX_RETENTION_DAYS,
    RetentionSettings,
    StorageSettings,
)
from shared.platform.storage import error_code, http_status, is_missing
from shared.retention.deleter import ObjectDeleter
from shared.retention.sweeps import (
    ACTOR,
    ENDED,
    IN_QUARANTINE,
    StorageSweeps,
)
from shared.uploads.model import MAY_BE_IN_QUARANTINE as _MAY_BE_IN_QUARANTINE
from shared.uploads.model import (
    UploadRow,
    UploadStatus,
    upload_row,
    values,
)

logger = logging.getLogger("dropgate.retention")

# States in which a copy may sit in the quarantine bucket (a scan that crashed while moving it, or
# an upload the reconcile pass gave up on, which stayed where it was).
MAY_BE_IN_QUARANTINE: Final = values(_MAY_BE_IN_QUARANTINE)
_MAX_ERRORS_REPORTED: Final = 50
# Appended by the pass to its selections; a preview runs them without it, so it neither waits for nor
# holds rows a real pass is retiring (a preview's lock would make a concurrent pass skip them).
LOCK_FOR_PASS: Final = " FOR UPDATE SKIP LOCKED"

Publish = Callable[[Sequence[UploadEnded]], None]
Clock = Callable[[], datetime]


@dataclass(frozen=True)
class RetentionBounds:
    """How much one pass may do; every default keeps a pass inside Knative's default 300 s response-start timeout."""

    batch_size: int = 500  # rows locked and retired per transaction
    max_files: int = 10_000  # rows expired or abandoned per pass
    stale_after: timedelta = timedelta(hours=24)  # a pending upload older than this is abandoned
    orphan_grace: timedelta = timedelta(hours=1)  # objects and row changes younger than this are left alone
    max_listed_objects: int = 10_000  # objects listed per bucket per pass by the sweep
    max_listed_multipart: int = 1_000  # multipart uploads listed per pass
    time_budget: timedelta = timedelta(seconds=240)  # checked between batches and pages

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_files < 1 or self.max_listed_objects < 1 or self.max_listed_multipart < 1:
            raise ValueError("retention bounds must be positive")

    @classmethod
    def from_settings(cls, settings: RetentionSettings) -> RetentionBounds:
        """The bounds the expire function runs with; `dropgate-dev expire-now --dry-run` previews with the same."""
        return cls(batch_size=settings.batch_size, max_files=settings.max_files,
                   stale_after=timedelta(seconds=settings.stale_upload_seconds),
                   orphan_grace=timedelta(seconds=settings.orphan_grace_seconds),
                   max_listed_objects=settings.max_listed_objects,
                   time_budget=timedelta(seconds=settings.time_budget_seconds))


@dataclass(frozen=True)
class Due:
    """An upload a pass would retire now, and the buckets whose copy of its key it would delete."""

    row: UploadRow
    outcome: str  # expired, abandoned
    reason: str
    buckets: list[str]


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


class RetentionJob(StorageSweeps):
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
        query, params = self._due_selection()
        self._retire_in_batches(query + LOCK_FOR_PASS, params, "expired", self._expiry_reason)

    def _due_selection(self) -> tuple[str, dict[str, Any]]:
        """Step 1's query (without its lock) and parameters; `skip` and `limit` are the caller's."""
        # A scan that is running right now is left to finish (next pass): deleting its object under it
        # would let its quarantine copy land after the deletion.
        query = ("SELECT * FROM uploads WHERE NOT legal_hold AND status <> ALL(%(ended)s)"
                 " AND (expires_at < %(now)s OR created_at < %(ceiling)s)"
                 " AND NOT (status = 'scanning' AND updated_at > %(busy_since)s)"
                 " AND id <> ALL(%(skip)s)"
                 " ORDER BY expires_at LIMIT %(limit)s")
        return query, {"ended": list(ENDED), "now": self._now, "ceiling": self._ceiling,
                       "busy_since": self._now - self.bounds.orphan_grace}

    def _expiry_reason(self, row: UploadRow) -> str:
        if row.status == UploadStatus.PENDING:
            return "retention passed before the upload was completed"
        if row.expires_at >= self._now:
            return f"older than the retention of {self._retention.days} days"
        return "retention passed"

    # -- 2. abandon --

    def abandon_stale(self) -> None:
        """Pending uploads older than the stale age: multipart aborted, rows `abandoned`."""
        query, params = self._stale_selection()
        self._retire_in_batches(query + LOCK_FOR_PASS, params, "abandoned", self._abandon_reason)

    def _stale_selection(self) -> tuple[str, dict[str, Any]]:
        """Step 2's query (without its lock) and parameters; `skip` and `limit` are the caller's."""
        query = ("SELECT * FROM uploads WHERE status = 'pending' AND NOT legal_hold AND created_at < %(stale)s"
                 " AND id <> ALL(%(skip)s) ORDER BY created_at LIMIT %(limit)s")
        return query, {"stale": self._now - self.bounds.stale_after}

    def _abandon_reason(self, _row: UploadRow) -> str:
        return f"multipart upload not completed within {self.bounds.stale_after.total_seconds() / 3600:g} hours"

    # -- a preview of 1 and 2 --

    def would_retire(self) -> list[Due]:
        """The uploads steps 1 and 2 would retire now, in the pass's order and bound; reads, changes nothing.

        The pass's own queries, unlocked, in a READ ONLY transaction (the database refuses any write).
        A row step 1 takes is not offered to step 2, as the pass's step 1 would have ended it by then.
        Time budgets and storage refusals are not foreseen: a real pass may retire fewer.
        """
        due: list[Due] = []
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            for (query, params), outcome, reason in ((self._due_selection(), "expired", self._expiry_reason),
                                                     (self._stale_selection(), "abandoned", self._abandon_reason)):
                limit = self.bounds.max_files - len(due)
                if limit <= 0:
                    break
                rows = conn.cursor(row_factory=upload_row).execute(
                    query, {**params, "skip": [d.row.id for d in due], "limit": limit}).fetchall()
                due += [Due(row, outcome, reason(row), self._buckets_of(row)) for row in rows]
        return due

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
            if is_missing(exc):
                return None
            if http_status(exc) >= 500:
                raise
            return f"AbortMultipartUpload: {error_code(exc)}"
        return None
