"""Verdict commands of `dropgate-dev`: rescan (one file, several, or every clean one), release, blocklist.

docs/operations.md says what each decides and why; the decisions themselves live in shared/scanning
(VerdictAdmin) and, for rescans, here: a rescan is a reset plus a re-emitted storage event.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import psycopg
from botocore.client import BaseClient
from cloudevents.http import CloudEvent
from psycopg.rows import dict_row

from dropgate_local.ops_history import object_state
from dropgate_local.ops_target import (
    OpsError,
    Target,
    operator,
    parse_upload_id,
    parse_when,
)
from dropgate_local.output import Progress, Silent, Steps, emit
from events.types import ObjectCreated
from shared.platform import audit, tracing
from shared.platform.audit import Actor
from shared.scanning.service import RESCAN_EXTENSION
from shared.uploads.model import UploadStatus

RESCAN_EVENT_SOURCE: Final = "dropgate:ops"  # the "eventSource" of re-emitted storage events: not storage's
RESCANNABLE: Final = (UploadStatus.CLEAN, UploadStatus.UNSCANNABLE)
RESCAN_COLUMNS: Final = ["upload_id", "outcome", "previous_status", "rescan_id", "detail"]


class EventNotSent(OpsError):
    """The verdict was reset but the broker did not take the event: the file waits for a second try."""


# ---------------------------------------------------------------------------------------------- rescan

class Rescanner:
    """What rescans share: the settings, one S3 client, the broker. Each upload is its own transaction."""

    def __init__(self, target: Target) -> None:
        if not target.broker_url:
            raise OpsError("no broker to send the event to: set K_SINK or pass --broker")
        from shared.platform.storage import create_s3_client

        self.target = target
        self.settings = target.settings("storage", "database")
        self.s3: BaseClient = create_s3_client(self.settings.storage, max_attempts=1)

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.settings.database.url, row_factory=dict_row)

    def rescan(self, conn: psycopg.Connection, upload_id: uuid.UUID, actor: Actor, reason: str) -> dict[str, Any]:
        """Scan a file again: reset its verdict (audited) and re-emit its ObjectCreated event to the broker.

        Only `clean` and `unscannable` files are rescanned: a new signature can only make a clean file
        infected, and an unscannable one may pass now. `infected` and `rejected` files stay in quarantine
        (releasing one is a human decision, not a scan's). `uploaded` (a rescan whose event was lost,
        or a scan that never came) only re-emits. Until the new verdict the file is not downloadable.
        """
        rescan_id = uuid.uuid4().hex[:16]
        with tracing.span("dropgate-dev rescan"):
            with conn.transaction():
                row, state = self._reset(conn, upload_id, actor, reason, rescan_id)
            event = self._event(row, state, rescan_id)
            try:
                self.target.sink().send(event)
            except Exception as exc:
                raise EventNotSent(f"the verdict was reset but the event could not be sent ({type(exc).__name__}: "
                                   f"{exc}); run `dropgate-dev rescan {upload_id}` again to re-emit it") from exc
            trace_id = tracing.current_trace_id()
        return {"upload_id": str(upload_id), "rescan_id": rescan_id, "event_id": event["id"],
                "previous_status": row["status"], "trace_id": trace_id}

    def _reset(self, conn: psycopg.Connection, upload_id: uuid.UUID, actor: Actor, reason: str,
               rescan_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """In the caller's transaction: check the row may be rescanned, clear its verdict, audit; (row, storage)."""
        row = conn.execute("SELECT * FROM uploads WHERE id = %s FOR UPDATE", (upload_id,)).fetchone()
        if row is None:
            raise OpsError(f"no upload {upload_id}")
        status = row["status"]
        if status not in (*RESCANNABLE, UploadStatus.UPLOADED):
            raise OpsError(f"upload {upload_id} is {status}: only clean or unscannable files are rescanned "
                           "(infected and rejected ones stay in quarantine; pending and ended ones have "
                           "nothing to scan; a scanning one is being scanned)")
        state = object_state(self.s3, row["bucket"], row["object_key"])
        if not state["present"] and status == UploadStatus.UNSCANNABLE:  # kept in quarantine; scan reads it there
            state = object_state(self.s3, self.settings.storage.quarantine_bucket, row["object_key"])
        if not state["present"]:
            raise OpsError(f"{row['bucket']}/{row['object_key']} is not in storage; nothing to scan")
        if status in RESCANNABLE:
            conn.execute("UPDATE uploads SET status = %s, scan_verdict = NULL, scan_detail = NULL,"
                         " scanned_at = NULL, updated_at = now() WHERE id = %s", (UploadStatus.UPLOADED, upload_id))
            if (state.get("tags") or {}).get("dropgate-verdict"):
                self.s3.delete_object_tagging(Bucket=state["bucket"], Key=row["object_key"])
        audit.record(conn, actor, "upload.rescan_requested" if status in RESCANNABLE else "upload.rescan_reemitted",
                     upload_id, rescan_id=rescan_id, reason=reason, previous_status=status,
                     previous_verdict=row["scan_verdict"], previous_detail=row["scan_detail"])
        return row, state

    @staticmethod
    def _event(row: dict[str, Any], state: dict[str, Any], rescan_id: str) -> CloudEvent:
        event = ObjectCreated(
            id=f"rescan-{rescan_id}", event_name="ObjectCreated:CompleteMultipartUpload",
            event_source=RESCAN_EVENT_SOURCE, region="", bucket=row["bucket"], key=row["object_key"],
            time=row["storage_event_time"] or datetime.now(UTC), size=row["stored_size"] or state["size"],
            etag=row["etag"], sequencer=row["storage_sequencer"],
            content_type=row["stored_content_type"] or row["content_type"]).to_cloudevent()
        return CloudEvent({**event.get_attributes(), RESCAN_EXTENSION: rescan_id}, event.get_data())


def rescan(target: Target, upload_id: str, actor: Actor, reason: str) -> dict[str, Any]:
    """One file: the result, or OpsError saying why it was not rescanned."""
    parsed = parse_upload_id(upload_id)
    rescanner = Rescanner(target)
    with rescanner.connect() as conn:
        return rescanner.rescan(conn, parsed, actor, reason)


def rescan_many(target: Target, upload_ids: list[str], actor: Actor, reason: str,
                progress: Callable[[int], Steps] = Silent) -> list[dict[str, Any]]:
    """Several files, one at a time: a refusal or failure is that file's outcome and the others go on.

    Outcomes: `rescanned`; `refused` (not rescannable now, e.g. infected, gone from storage);
    `failed` (the verdict was reset but the event not sent, or storage/broker trouble: run it again).
    """
    parsed = [parse_upload_id(upload_id) for upload_id in upload_ids]  # a typo stops the batch before any reset
    rescanner = Rescanner(target)
    results = []
    with rescanner.connect() as conn, progress(len(parsed)) as shown:
        for upload_id in parsed:
            results.append(_rescan_outcome(rescanner, conn, upload_id, actor, reason))
            shown.step()
    return results


def _rescan_outcome(rescanner: Rescanner, conn: psycopg.Connection, upload_id: uuid.UUID, actor: Actor,
                    reason: str) -> dict[str, Any]:
    try:
        return {**rescanner.rescan(conn, upload_id, actor, reason), "outcome": "rescanned", "detail": None}
    except EventNotSent as exc:
        return {"upload_id": str(upload_id), "outcome": "failed", "detail": str(exc)}
    except OpsError as exc:
        return {"upload_id": str(upload_id), "outcome": "refused", "detail": str(exc)}
    except Exception as exc:  # noqa: BLE001 - storage or database trouble for this file: said, the batch goes on
        return {"upload_id": str(upload_id), "outcome": "failed", "detail": f"{type(exc).__name__}: {exc}"[:300]}


def clean_uploads(target: Target, *, since: datetime | None, owner: str | None, limit: int | None) -> list[str]:
    """The uploads `rescan --all-clean` takes: clean, optionally created since a time or by one owner, oldest first."""
    query = "SELECT id FROM uploads WHERE status = %(clean)s"
    params: dict[str, Any] = {"clean": UploadStatus.CLEAN, "since": since, "owner": owner, "limit": limit}
    if since is not None:
        query += " AND created_at >= %(since)s"
    if owner is not None:
        query += " AND owner = %(owner)s"
    query += " ORDER BY created_at, id" + (" LIMIT %(limit)s" if limit is not None else "")
    with psycopg.connect(target.settings("database").database.url) as conn:
        return [str(row[0]) for row in conn.execute(query, params).fetchall()]


def run_rescan(args: argparse.Namespace) -> int:
    target = Target.resolve(args)
    if args.all_clean == bool(args.upload_ids):
        raise OpsError("name the uploads to rescan, or pass --all-clean (with --since, --owner, --limit to narrow it)")
    if not args.all_clean and (args.since or args.owner or args.limit is not None):
        raise OpsError("--since, --owner and --limit choose uploads for --all-clean")
    if len(args.upload_ids) == 1:  # the single form keeps its shape: one JSON object, exit 2 when refused
        emit(rescan(target, args.upload_ids[0], operator(args), args.reason), as_json=args.json,
             columns=["upload_id", "previous_status", "rescan_id", "event_id", "trace_id"])
        return 0
    ids = args.upload_ids or clean_uploads(target, since=parse_when(args.since) if args.since else None,
                                           owner=args.owner, limit=args.limit)
    results = rescan_many(target, ids, operator(args), args.reason, progress=lambda total: Progress(total, "rescan"))
    emit(results, as_json=args.json, columns=RESCAN_COLUMNS, empty="no clean uploads to rescan")
    return 0 if all(r["outcome"] == "rescanned" for r in results) else 1


# ---------------------------------------------------------------------------------------------- release, blocklist

def _verdict_admin(target: Target):  # -> shared.scanning.verdicts.VerdictAdmin, on a small pool of its own
    from shared.platform.db import create_pool
    from shared.platform.storage import create_s3_client
    from shared.scanning.verdicts import VerdictAdmin

    settings = target.settings("storage", "database")
    return VerdictAdmin(storage=settings.storage, pool=create_pool(settings.database),
                        s3=create_s3_client(settings.storage, max_attempts=1),
                        event_source=f"{target.env.get('DROPGATE_EVENT_SOURCE', 'dropgate')}/ops")


def run_release(args: argparse.Namespace) -> int:
    admin = _verdict_admin(Target.resolve(args))
    try:
        row = admin.release(args.upload_id, operator(args), args.reason)
    finally:
        admin.pool.close()
    emit({"upload_id": str(row.id), "status": str(row.status), "status_reason": row.status_reason}, as_json=args.json)
    return 0


def run_blocklist(args: argparse.Namespace) -> int:
    target = Target.resolve(args)
    admin = _verdict_admin(target)
    try:
        if args.action == "list":
            emit([entry.public() for entry in admin.listed()], as_json=args.json,
                 columns=["sha256", "added_at", "added_by", "reason"], empty="the blocklist is empty")
        elif args.action == "remove":
            if not admin.unblock(args.sha256, operator(args)):
                raise OpsError(f"{args.sha256} is not on the blocklist")
            emit({"sha256": args.sha256, "removed": True}, as_json=args.json)
        else:
            emit(_block(target, admin, args), as_json=args.json)
    finally:
        admin.pool.close()
    return 0


def _block(target: Target, admin: Any, args: argparse.Namespace) -> dict[str, Any]:
    added, events = admin.block(args.sha256, args.reason, operator(args))
    if events:
        if not target.broker_url:
            raise OpsError(f"{len(events)} files were quarantined but no broker was given to tell "
                           "subscribers: set K_SINK or pass --broker")
        target.sink().send_all(event.to_cloudevent() for event in events)
    return {"sha256": args.sha256, "added": added, "quarantined": [str(event.upload_id) for event in events]}
