"""`dropgate-dev expire-now [--dry-run]`: run the expire pass now, or list what it would delete (docs/operations.md)."""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from dropgate_local.ops_target import OpsError, Target, get_json, parse_when, post_json
from dropgate_local.output import Progress, Silent, Steps, emit, format_table
from events.types import Ping
from shared.platform import tracing

EXPIRE_PINGSOURCE: Final = "dropgate-expire"
PREVIEW_COLUMNS: Final = ["action", "upload_id", "status", "buckets", "key", "reason"]


# ---------------------------------------------------------------------------------------------- a real pass

def expire_now(target: Target, *, namespace: str, wait: float | None) -> dict[str, Any]:
    """Fire the expire PingSource: through the local router's endpoint, else as a ping event to the Broker."""
    if target.router_url:
        fired = post_json(f"{target.router_url}/pingsources/{EXPIRE_PINGSOURCE}")
        result: dict[str, Any] = {"via": "local router", "ping_id": fired["id"]}
        if wait:
            result["deliveries"] = _wait_for_deliveries(target.router_url, fired["id"], wait)
        return result
    if not target.broker_url:
        raise OpsError("no broker: set K_SINK (the Broker's ingress URL) or pass --broker")
    # The same event Knative's ping adapter sends, so the expire Trigger (type + source) matches it.
    ping = Ping(id=str(uuid.uuid4()), source=f"/apis/v1/namespaces/{namespace}/pingsources/{EXPIRE_PINGSOURCE}",
                time=datetime.now(UTC), task="expire")
    with tracing.span("dropgate-dev expire-now"):
        target.sink().send(ping.to_cloudevent())
    return {"via": "broker", "ping_id": ping.id, "broker": target.broker_url}


def _wait_for_deliveries(router_url: str, event_id: str, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        records = [e for e in get_json(f"{router_url}/events?limit=1000")["events"] if e["id"] == event_id]
        deliveries = [d for e in records for d in e["deliveries"]]
        if (deliveries and all(d["outcome"] != "pending" for d in deliveries)) or time.monotonic() > deadline:
            return [{"trigger": d["trigger"], "outcome": d["outcome"], "attempts": d["attempts"]} for d in deliveries]
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------------- the dry run

def _publish_nothing(_events: Sequence[Any]) -> None:
    # A preview retires nothing, so it has nothing to announce; reaching this is a bug worth an error.
    raise RuntimeError("an expire dry run must not publish events")


def expire_preview(target: Target, *, at: datetime | None = None,
                   progress: Callable[[int], Steps] = Silent) -> dict[str, Any]:
    """What the expire pass would delete if it ran at `at` (default now), changing nothing.

    The pass's own selection (shared.retention: `RetentionJob.would_retire` for steps 1-2,
    `would_delete_orphans` for step 4's orphans) with the function's settings and bounds, in read-only
    transactions. Not previewed: aborting multipart uploads no row owns (step 3) and rows whose object
    is already gone (step 4's "object missing", which deletes nothing).
    """
    from shared.platform.db import create_pool
    from shared.platform.storage import create_s3_client
    from shared.retention.expiry import RetentionBounds, RetentionJob

    settings = target.settings("storage", "database", "limits", "retention")
    when = at or datetime.now(UTC)
    pool = create_pool(settings.database)
    try:
        job = RetentionJob(pool=pool, s3=create_s3_client(settings.storage, max_attempts=1),
                           storage=settings.storage, retention_days=settings.limits.retention_days,
                           source="dropgate-dev/dry-run", publish=_publish_nothing, clock=lambda: when,
                           bounds=RetentionBounds.from_settings(settings.retention))
        buckets = list(dict.fromkeys((settings.storage.uploads_bucket, settings.storage.quarantine_bucket)))
        with progress(2 + len(buckets)) as shown:
            held = job.count_held()
            shown.step()
            due = job.would_retire()
            shown.step()
            orphans, more = [], len(due) >= job.bounds.max_files
            for bucket in buckets:
                found, bounded = job.would_delete_orphans(bucket)
                orphans += [_orphan(bucket, obj, upload_id) for obj, upload_id in found]
                more = more or bounded
                shown.step()
    finally:
        pool.close()
    return {"at": when.isoformat(), "uploads": [_due(d) for d in due], "orphans": orphans, "held": held,
            "more_work": more}


def _due(due: Any) -> dict[str, Any]:
    row = due.row
    return {"upload_id": str(row.id), "outcome": due.outcome, "reason": due.reason, "status": str(row.status),
            "key": row.object_key, "buckets": due.buckets, "created_at": row.created_at.isoformat(),
            "expires_at": row.expires_at.isoformat(),
            "multipart_upload": row.storage_upload_id if row.status == "pending" else None}


def _orphan(bucket: str, obj: dict[str, Any], upload_id: Any) -> dict[str, Any]:
    return {"bucket": bucket, "key": obj["Key"], "size": obj.get("Size"),
            "last_modified": obj["LastModified"].isoformat(), "upload_id": str(upload_id) if upload_id else None}


def format_preview(preview: dict[str, Any]) -> str:
    """One table of everything the pass would delete, then what it would keep or leave for later."""
    rows = [{"action": "expire" if u["outcome"] == "expired" else "abandon", "upload_id": u["upload_id"],
             "status": u["status"], "buckets": ", ".join(u["buckets"]), "key": u["key"], "reason": u["reason"]}
            for u in preview["uploads"]]
    rows += [{"action": "delete orphan", "upload_id": o["upload_id"], "status": None, "buckets": o["bucket"],
              "key": o["key"], "reason": f"no live upload owns it; last modified {o['last_modified']}"}
             for o in preview["orphans"]]
    lines = [f"expire pass at {preview['at']} (dry run: nothing was changed)"]
    lines += format_table(rows, PREVIEW_COLUMNS) if rows else ["nothing to delete"]
    lines.append("")
    lines.append(f"to delete: {len(preview['uploads'])} upload(s), {len(preview['orphans'])} orphan object(s); "
                 f"kept: {preview['held']} upload(s) past retention under legal hold")
    if preview["more_work"]:
        lines.append("a pass stops at its bounds before all of this: the next passes continue")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the command

def run_expire_now(args: argparse.Namespace) -> int:
    target = Target.resolve(args)
    if args.dry_run:
        preview = expire_preview(target, at=parse_when(args.at) if args.at else None,
                                 progress=lambda total: Progress(total, "expire dry run"))
        if args.json:
            emit(preview, as_json=True)
        else:
            print(format_preview(preview), flush=True)
        return 0
    if args.at:
        raise OpsError("--at goes with --dry-run: a real pass runs now")
    emit(expire_now(target, namespace=args.namespace, wait=args.wait), as_json=args.json)
    return 0
