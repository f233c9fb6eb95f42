"""Steps 3 and 4 of the expire pass: what storage holds that no live upload owns, and rows whose
object storage no longer holds (docs/expire.md). A part of `RetentionJob` (shared/retention/expiry.py),
kept apart because these steps list storage page by page from a saved cursor, where steps 1 and 2
work from the database.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg
from botocore.exceptions import ClientError

from shared.platform import audit
from shared.platform.audit import Actor
from shared.platform.storage import is_missing
from shared.retention.cursors import lock_cursor, read_cursor, save_cursor
from shared.uploads.model import (
    COMPLETED,
    GONE,
    QUARANTINED,
    UploadRow,
    upload_row,
    values,
)

ACTOR: Final = Actor.system("expire")
S3_MAX_LIST_KEYS: Final = 1000
ENDED: Final = values(GONE)
# States in which the upload's bytes must exist somewhere.
NEEDS_OBJECT: Final = values(COMPLETED)
# Where the scan leaves them: infected, rejected and unscannable objects move to the quarantine bucket.
IN_QUARANTINE: Final = values(QUARANTINED)


class StorageSweeps:
    """Needs the job's pool, s3, storage, bounds, summary, clock and its helpers (`_out_of_time`,
    `_abort_multipart`, `_buckets_of`, `_ended`, `_send`, `_objects`): `RetentionJob` provides them."""

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
                page = self._list_page(bucket, start_after, listed)
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
        orphans = self._orphans_among(conn, bucket, contents)
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

    def _list_page(self, bucket: str, start_after: str, listed: int) -> dict[str, Any]:
        """One ListObjectsV2 page after `start_after`, no longer than what is left of the pass's bound."""
        request: dict[str, Any] = {"Bucket": bucket,
                                   "MaxKeys": min(S3_MAX_LIST_KEYS, self.bounds.max_listed_objects - listed)}
        if start_after:
            request["StartAfter"] = start_after
        return self._s3.list_objects_v2(**request)

    def _orphans_among(self, conn: psycopg.Connection, bucket: str,
                       contents: list[dict[str, Any]]) -> list[tuple[dict[str, Any], Any]]:
        """The listed objects the sweep deletes, each with the ended upload that had it (or None); reads only."""
        if not contents:
            return []
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
        return orphans

    def would_delete_orphans(self, bucket: str) -> tuple[list[tuple[dict[str, Any], Any]], bool]:
        """The objects step 4 would delete from `bucket` now, and whether its bound would stop it first.

        Lists from the sweep's saved cursor with the pass's bound and decides with the pass's own rule
        (`_orphans_among`), in READ ONLY transactions; the cursor is read, not locked or moved.
        """
        found: list[tuple[dict[str, Any], Any]] = []
        listed = 0
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            start_after = read_cursor(conn, f"objects:{bucket}").get("start_after", "")
            while listed < self.bounds.max_listed_objects:
                page = self._list_page(bucket, start_after, listed)
                contents = page.get("Contents", [])
                found += self._orphans_among(conn, bucket, contents)
                listed += len(contents)
                if not (page.get("IsTruncated") and contents):
                    return found, False
                start_after = contents[-1]["Key"]
        return found, True

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
                if is_missing(exc):
                    continue
                raise
        return False
