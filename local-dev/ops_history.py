"""`dropgate-dev history <upload-id>`: everything dropgate knows about one upload (docs/operations.md)."""

from __future__ import annotations

import argparse
from typing import Any

import psycopg
from botocore.client import BaseClient
from botocore.exceptions import ClientError
from psycopg.rows import dict_row

from dropgate_local.ops_target import OpsError, Target, get_json, parse_upload_id
from dropgate_local.output import cell, emit, format_table


def upload_history(target: Target, upload_id: str) -> dict[str, Any]:
    """Everything dropgate knows about one upload, from the database, storage and (locally) the broker."""
    parsed = parse_upload_id(upload_id)
    settings = target.settings("storage", "database")
    with psycopg.connect(settings.database.url, row_factory=dict_row) as conn:
        row = conn.execute("SELECT * FROM uploads WHERE id = %s", (parsed,)).fetchone()
        if row is None:
            raise OpsError(f"no upload {upload_id}")
        trail = conn.execute("SELECT at, actor, action, detail, source_ip::text AS source_ip, trace_id"
                             " FROM audit_log WHERE upload_id = %s ORDER BY at, id", (parsed,)).fetchall()
        locations = conn.execute("SELECT * FROM storage_objects WHERE upload_id = %s OR object_key = %s"
                                 " ORDER BY bucket", (parsed, row["object_key"])).fetchall()
        event_ids = [entry["detail"].get("event_id") for entry in trail if entry["detail"].get("event_id")]
        processed = conn.execute("SELECT consumer, event_id, event_type, outcome, processed_at FROM processed_events"
                                 " WHERE event_id = ANY(%s) ORDER BY processed_at", (event_ids,)).fetchall()
    from shared.platform.storage import create_s3_client

    s3 = create_s3_client(settings.storage, max_attempts=1)
    storage = [object_state(s3, bucket, row["object_key"])
               for bucket in (settings.storage.uploads_bucket, settings.storage.quarantine_bucket)]
    if row["status"] == "pending" and row["storage_upload_id"]:
        storage.append(_multipart_state(s3, row))
    return {"upload": row, "audit": trail, "storage": storage, "storage_objects": locations,
            "processed_events": processed, "deliveries": _deliveries(target, row)}


def object_state(s3: BaseClient, bucket: str, key: str) -> dict[str, Any]:
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        # Imported here, as create_s3_client is: boto3 loads only when a command talks to storage.
        from shared.platform.storage import is_missing

        if is_missing(exc):
            return {"bucket": bucket, "key": key, "present": False}
        raise
    try:
        tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key).get("TagSet", [])}
    except ClientError:
        tags = None
    return {"bucket": bucket, "key": key, "present": True, "size": head.get("ContentLength"),
            "etag": head.get("ETag", "").strip('"'), "content_type": head.get("ContentType"),
            "last_modified": head.get("LastModified"), "server_side_encryption": head.get("ServerSideEncryption"),
            "sse_kms_key_id": head.get("SSEKMSKeyId"), "metadata": head.get("Metadata", {}), "tags": tags}


def _multipart_state(s3: BaseClient, row: dict[str, Any]) -> dict[str, Any]:
    try:
        parts = s3.list_parts(Bucket=row["bucket"], Key=row["object_key"], UploadId=row["storage_upload_id"])
    except ClientError as exc:
        return {"bucket": row["bucket"], "multipart_upload": row["storage_upload_id"], "open": False,
                "error": exc.response.get("Error", {}).get("Code")}
    return {"bucket": row["bucket"], "multipart_upload": row["storage_upload_id"], "open": True,
            "parts": [{"number": p["PartNumber"], "size": p["Size"]} for p in parts.get("Parts", [])]}


def _deliveries(target: Target, row: dict[str, Any]) -> list[dict[str, Any]] | None:
    """What the local broker routed about this upload (by subject); None in a cluster (see the Broker's metrics)."""
    if not target.router_url:
        return None
    try:
        events = get_json(f"{target.router_url}/events?limit=1000")["events"]
    except (OSError, ValueError):
        return None
    subjects = {row["object_key"], str(row["id"])}
    return [{"received_at": e["received_at"], "id": e["id"], "type": e["type"], "origin": e["origin"],
             "traceparent": e.get("attributes", {}).get("traceparent"),
             "deliveries": [{"trigger": d["trigger"], "outcome": d["outcome"], "attempts": len(d["attempts"]),
                             "reply_type": d.get("reply_type")} for d in e["deliveries"]]}
            for e in events if e.get("subject") in subjects]


def format_history(history: dict[str, Any]) -> str:
    """The history as a person reads it: the row, then the audit trail, storage and deliveries as tables."""
    lines = [*_row_lines(history["upload"]), "", "audit trail:"]
    trail = [{"at": f"{e['at']:%Y-%m-%d %H:%M:%S.%f}", "action": e["action"], "actor": e["actor"],
              "trace": e["trace_id"], "detail": e["detail"]} for e in history["audit"]]
    lines += _indented(format_table(trail, ["at", "action", "actor", "trace", "detail"]))
    lines += ["", "storage now:", *(f"  {_storage_line(state)}" for state in history["storage"])]
    lines += ["", "storage as the metadata function recorded it:"]
    lines += _indented(format_table(history["storage_objects"],
                                    ["bucket", "present", "size", "sequencer", "last_event_type"]))
    if history["deliveries"] is not None:
        lines += ["", "local broker deliveries:"]
        lines += _indented(format_table([{"received": e["received_at"], "type": e["type"], "origin": e["origin"],
                                          "routes": _routes(e["deliveries"])} for e in history["deliveries"]],
                                        ["received", "type", "origin", "routes"]))
    return "\n".join(lines)


def _row_lines(row: dict[str, Any]) -> list[str]:
    return [(f"upload {row['id']}  owner {cell(row['owner'])}  {cell(repr(row['filename']))}  "
             f"{row['declared_size']} bytes  {cell(row['content_type'])}"),
            f"  status {row['status']}" + (f" ({cell(row['status_reason'])})" if row["status_reason"] else "")
            + f"  verdict {row['scan_verdict'] or '-'}"
            + (f" [{cell(row['scan_detail'])}]" if row["scan_detail"] else "")
            + f"  legal hold {'yes' if row['legal_hold'] else 'no'}",
            f"  {row['bucket']}/{cell(row['object_key'])}  multipart {row['storage_upload_id']}",
            (f"  created {row['created_at']}  completed {row['completed_at'] or '-'}  "
             f"scanned {row['scanned_at'] or '-'}  expires {row['expires_at']}"),
            f"  sha256 {row['sha256'] or row['declared_sha256'] or '-'}  etag {row['etag'] or '-'}"]


def _storage_line(state: dict[str, Any]) -> str:
    if "multipart_upload" in state:
        parts = state.get("parts")
        return (f"multipart upload {state['multipart_upload']}: "
                + (f"open, {len(parts)} parts stored" if state["open"] else f"gone ({state.get('error')})"))
    if not state["present"]:
        return f"{state['bucket']}/{cell(state['key'])}: absent"
    # Tags and metadata are written by uploaders' clients: cell() escapes what a terminal would obey.
    return (f"{state['bucket']}/{cell(state['key'])}: present, {state['size']} bytes, ETag {state['etag']}, "
            f"encryption {state['server_side_encryption'] or 'none'}"
            + (f" (key {state['sse_kms_key_id']})" if state.get("sse_kms_key_id") else "")
            + f", tags {cell(repr(state['tags']))}, metadata {cell(repr(state['metadata']))}")


def _routes(deliveries: list[dict[str, Any]]) -> str:
    return "; ".join(f"{d['trigger']}: {d['outcome']} after {d['attempts']} attempt(s)"
                     + (f", replied {d['reply_type']}" if d["reply_type"] else "")
                     for d in deliveries) or "no Trigger matched"


def _indented(lines: list[str]) -> list[str]:
    return [f"  {line}" for line in lines]


def run_history(args: argparse.Namespace) -> int:
    history = upload_history(Target.resolve(args), args.upload_id)
    if args.json:
        emit(history, as_json=True)
    else:
        print(format_history(history), flush=True)
    return 0
