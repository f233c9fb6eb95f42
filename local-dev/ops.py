"""Operator commands of `dropgate-dev` (docs/operations.md):

    dropgate-dev history <upload-id>        the row, the audit trail, what storage holds now, the broker's deliveries
    dropgate-dev replay-dead-letters        re-post dead-lettered events to the broker (same ids: consumers dedupe)
    dropgate-dev rescan <upload-id>         scan a clean/unscannable file again (after a signature update), audited
    dropgate-dev release <upload-id>        let an unscannable/rejected file be downloaded (--reason), audited
    dropgate-dev blocklist list|add|remove  the known-bad SHA-256 list; add quarantines stored files, audited
    dropgate-dev expire-now                 run the expire pass now (the dropgate-expire PingSource)

Where they connect: with a local stack (`<data-dir>/stack.json` exists) to its database,
storage and broker; otherwise, or with `--environ`, to what the environment says, as the
functions read it (`DATABASE_URL`, `DROPGATE_S3_*`, `K_SINK` = the Broker's ingress).
"""

from __future__ import annotations

import argparse
import fcntl
import getpass
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import psycopg
from botocore.client import BaseClient
from botocore.exceptions import ClientError
from cloudevents.http import CloudEvent, from_http
from psycopg.rows import dict_row

from events.types import ObjectCreated, Ping
from shared.platform import audit, tracing
from shared.platform.audit import Actor
from shared.platform.delivery import EventSink
from shared.platform.errors import ApiError
from shared.platform.settings import Settings
from shared.scanning.service import RESCAN_EXTENSION
from shared.uploads.model import UploadStatus

EXPIRE_PINGSOURCE: Final = "dropgate-expire"
RESCAN_EVENT_SOURCE: Final = "dropgate:ops"  # the "eventSource" of re-emitted storage events: not storage's
RESCANNABLE: Final = (UploadStatus.CLEAN, UploadStatus.UNSCANNABLE)
# Knative's delivery bookkeeping, not part of the event: dropped before a replay.
_DELIVERY_EXTENSIONS: Final = ("knativeerrordest", "knativeerrorcode", "knativeerrordata", "knativearrivaltime",
                               "knativebrokerttl")


class OpsError(RuntimeError):
    """A command that cannot be carried out; the message says why and what to do."""


@dataclass(frozen=True)
class Target:
    """What the commands talk to: the functions' environment, the broker ingress, the local router."""

    env: Mapping[str, str]
    broker_url: str | None  # K_SINK: the Broker's ingress (the local router's in a local stack)
    router_url: str | None  # the local router's own API (/events, /pingsources); None in a cluster
    dead_letter_file: Path | None
    # The token the broker's ingress requires (Knative authentication-oidc). On a cluster:
    # `kubectl create token dropgate-operator --audience eventing.knative.dev/broker/dropgate/dropgate > f`
    # and DROPGATE_SINK_TOKEN_FILE=f; in a local stack, minted for the same operator account.
    sink_token_file: str | None = None

    @classmethod
    def resolve(cls, args: argparse.Namespace) -> Target:
        state_path = args.data_dir / "stack.json"
        if not args.environ and state_path.exists():
            state = json.loads(state_path.read_text())
            router = f"http://127.0.0.1:{state['ports']['router']}"
            env = dict(state["env"])
            dead_letters = args.data_dir.resolve() / "logs" / "dead-letter.jsonl"
            token = str(operator_token_file(args.data_dir.resolve(), state["ports"]["dev_oidc"]))
        else:
            env, router, dead_letters = dict(os.environ), None, None
            token = env.get("DROPGATE_SINK_TOKEN_FILE")
        broker = args.broker or env.get("K_SINK") or None
        return cls(env=env, broker_url=broker, router_url=args.router or router, dead_letter_file=dead_letters,
                   sink_token_file=token)

    def sink(self) -> EventSink:
        return EventSink(self.broker_url, token_file=self.sink_token_file)

    def settings(self, *sections: str) -> Settings:
        return Settings.from_env(sections, self.env)


OPERATOR_SERVICE_ACCOUNT = "dropgate-operator"  # manifests/base/eventing/eventpolicy.yaml allows it


def operator_token_file(data_dir: Path, dev_oidc_port: int) -> Path:
    """A fresh broker token for the operator account of a local stack, as `kubectl create token` gives one."""
    from dropgate_local.identity import (
        ClusterIssuer,
        broker_audience,
        cluster_issuer_url,
        subject,
        write_token,
    )

    path = data_dir / "tokens" / f"{OPERATOR_SERVICE_ACCOUNT}.token"
    issuer = ClusterIssuer(data_dir, cluster_issuer_url("127.0.0.1", dev_oidc_port))
    write_token(path, issuer.mint(subject("dropgate", OPERATOR_SERVICE_ACCOUNT), broker_audience("dropgate", "dropgate")))
    return path


def _operator(args: argparse.Namespace) -> Actor:
    return Actor(f"operator:{args.operator or getpass.getuser()}")


def _get_json(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - an operator-given URL
        return json.loads(response.read())


def _post_json(url: str, timeout: float = 10) -> Any:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - an operator-given URL
        return json.loads(response.read())


def _print(value: Any, as_json: bool, text: str) -> None:
    print(json.dumps(value, indent=2, default=str) if as_json else text, flush=True)


# ---------------------------------------------------------------------------------------------- history

def upload_history(target: Target, upload_id: str) -> dict[str, Any]:
    """Everything dropgate knows about one upload, from the database, storage and (locally) the broker."""
    try:
        parsed = uuid.UUID(upload_id)
    except ValueError:
        raise OpsError(f"{upload_id!r} is not an upload id (a UUID)") from None
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
    storage = [_object_state(s3, bucket, row["object_key"])
               for bucket in (settings.storage.uploads_bucket, settings.storage.quarantine_bucket)]
    if row["status"] == "pending" and row["storage_upload_id"]:
        storage.append(_multipart_state(s3, row))
    return {"upload": row, "audit": trail, "storage": storage, "storage_objects": locations,
            "processed_events": processed, "deliveries": _deliveries(target, row)}


def _object_state(s3: BaseClient, bucket: str, key: str) -> dict[str, Any]:
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
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
        events = _get_json(f"{target.router_url}/events?limit=1000")["events"]
    except (OSError, ValueError):
        return None
    subjects = {row["object_key"], str(row["id"])}
    return [{"received_at": e["received_at"], "id": e["id"], "type": e["type"], "origin": e["origin"],
             "traceparent": e.get("attributes", {}).get("traceparent"),
             "deliveries": [{"trigger": d["trigger"], "outcome": d["outcome"], "attempts": len(d["attempts"]),
                             "reply_type": d.get("reply_type")} for d in e["deliveries"]]}
            for e in events if e.get("subject") in subjects]


def format_history(history: dict[str, Any]) -> str:
    row = history["upload"]
    lines = [f"upload {row['id']}  owner {row['owner']}  {row['filename']!r}  {row['declared_size']} bytes  "
             f"{row['content_type']}",
             f"  status {row['status']}" + (f" ({row['status_reason']})" if row["status_reason"] else "")
             + f"  verdict {row['scan_verdict'] or '-'}" + (f" [{row['scan_detail']}]" if row["scan_detail"] else "")
             + f"  legal hold {'yes' if row['legal_hold'] else 'no'}",
             f"  {row['bucket']}/{row['object_key']}  multipart {row['storage_upload_id']}",
             f"  created {row['created_at']}  completed {row['completed_at'] or '-'}  "
             f"scanned {row['scanned_at'] or '-'}  expires {row['expires_at']}",
             f"  sha256 {row['sha256'] or row['declared_sha256'] or '-'}  etag {row['etag'] or '-'}",
             "", "audit trail:"]
    for entry in history["audit"]:
        detail = json.dumps(entry["detail"], default=str, separators=(",", ":"))
        lines.append(f"  {entry['at']:%Y-%m-%d %H:%M:%S.%f}  {entry['action']:<30} {entry['actor']:<22} "
                     f"trace {entry['trace_id'] or '-':<32}  {detail}")
    lines += ["", "storage now:"]
    for state in history["storage"]:
        if "multipart_upload" in state:
            parts = state.get("parts")
            lines.append(f"  multipart upload {state['multipart_upload']}: "
                         + (f"open, {len(parts)} parts stored" if state["open"] else f"gone ({state.get('error')})"))
        elif state["present"]:
            lines.append(f"  {state['bucket']}/{state['key']}: present, {state['size']} bytes, ETag {state['etag']}, "
                         f"encryption {state['server_side_encryption'] or 'none'}"
                         + (f" (key {state['sse_kms_key_id']})" if state.get("sse_kms_key_id") else "")
                         + f", tags {state['tags']}, metadata {state['metadata']}")
        else:
            lines.append(f"  {state['bucket']}/{state['key']}: absent")
    lines += ["", "storage as the metadata function recorded it:"]
    for location in history["storage_objects"]:
        lines.append(f"  {location['bucket']}: {'present' if location['present'] else 'removed'}, "
                     f"{location['size']} bytes, sequencer {location['sequencer']}, last {location['last_event_type']}")
    if history["deliveries"] is not None:
        lines += ["", "local broker deliveries:"]
        for event in history["deliveries"]:
            routes = "; ".join(f"{d['trigger']}: {d['outcome']} after {d['attempts']} attempt(s)"
                               + (f", replied {d['reply_type']}" if d["reply_type"] else "")
                               for d in event["deliveries"]) or "no Trigger matched"
            lines.append(f"  {event['received_at']}  {event['type']}  ({event['origin']})  {routes}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- dead letters

def _parse_dead_letter(line: bytes) -> CloudEvent:
    """A dead-lettered event without Knative's delivery extensions: the router's file or a JobSink log line."""
    document = json.loads(line)
    if isinstance(document, dict) and "specversion" not in document and isinstance(document.get("event"), dict):
        document = document["event"]  # manifests/base/eventing/dead-letter.yaml logs {"event": {...}}
    event = from_http({"content-type": "application/cloudevents+json"}, json.dumps(document).encode())
    attributes = {k: v for k, v in event.get_attributes().items() if k not in _DELIVERY_EXTENSIONS}
    return CloudEvent(attributes, event.get_data())


@dataclass
class Replayed:
    id: str
    type: str | None
    outcome: str  # replayed, failed, kept (filtered out or dry run), unreadable
    detail: str | None = None


def replay_dead_letters(path: Path, broker_url: str | None, *, ids: Iterable[str] = (),
                        dry_run: bool = False, token_file: str | None = None) -> list[Replayed]:
    """Take the file's lines under its lock, re-post the chosen events, put back what was not replayed.

    Replayed lines go to `<file>.replayed`, with the time, so what was replayed stays on record.
    """
    if not path.exists():
        return []
    if not broker_url and not dry_run:
        raise OpsError("no broker to replay to: set K_SINK or pass --broker")
    wanted = set(ids)
    with path.open("r+b") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        lines = [line for line in file.read().splitlines() if line.strip()]
        if not dry_run:
            file.seek(0)
            file.truncate()
    results, keep, done = [], [], []
    sink = EventSink(broker_url, token_file=token_file)
    for line in lines:
        try:
            event = _parse_dead_letter(line)
        except (ValueError, TypeError, KeyError) as exc:
            results.append(Replayed("?", None, "unreadable", str(exc)[:200]))
            keep.append(line)
            continue
        if dry_run or (wanted and event["id"] not in wanted):
            results.append(Replayed(event["id"], event["type"], "kept"))
            keep.append(line)
            continue
        try:
            with tracing.span("dropgate-dev replay-dead-letters", parent=tracing.event_traceparent(event)):
                sink.send(event)
        except Exception as exc:  # noqa: BLE001 - reported per event, the line goes back into the file
            results.append(Replayed(event["id"], event["type"], "failed", f"{type(exc).__name__}: {exc}"[:300]))
            keep.append(line)
            continue
        results.append(Replayed(event["id"], event["type"], "replayed"))
        done.append(line)
    if not dry_run:
        _append_locked(path, keep)
        stamp = datetime.now(UTC).isoformat()
        _append_locked(path.with_name(path.name + ".replayed"),
                       [json.dumps({"replayed_at": stamp, "event": json.loads(line)}).encode() for line in done])
    return results


def _append_locked(path: Path, lines: list[bytes]) -> None:
    if not lines:
        return
    with path.open("ab") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        file.write(b"".join(line + b"\n" for line in lines))


# ---------------------------------------------------------------------------------------------- rescan

def rescan(target: Target, upload_id: str, actor: Actor, reason: str) -> dict[str, Any]:
    """Scan a file again: reset its verdict (audited) and re-emit its ObjectCreated event to the broker.

    Only `clean` and `failed` files are rescanned: a new signature can only make a clean file
    infected, and a failed one may pass now. `infected` and `rejected` files stay in quarantine
    (releasing one is a human decision, not a scan's). `uploaded` (a rescan whose event was lost,
    or a scan that never came) only re-emits. Until the new verdict the file is not downloadable.
    """
    try:
        parsed = uuid.UUID(upload_id)
    except ValueError:
        raise OpsError(f"{upload_id!r} is not an upload id (a UUID)") from None
    if not target.broker_url:
        raise OpsError("no broker to send the event to: set K_SINK or pass --broker")
    settings = target.settings("storage", "database")
    from shared.platform.storage import create_s3_client

    s3 = create_s3_client(settings.storage, max_attempts=1)
    rescan_id = uuid.uuid4().hex[:16]
    with tracing.span("dropgate-dev rescan"), psycopg.connect(settings.database.url, row_factory=dict_row) as conn:
        with conn.transaction():
            row = conn.execute("SELECT * FROM uploads WHERE id = %s FOR UPDATE", (parsed,)).fetchone()
            if row is None:
                raise OpsError(f"no upload {upload_id}")
            status = row["status"]
            if status not in (*RESCANNABLE, "uploaded"):
                raise OpsError(f"upload {upload_id} is {status}: only clean or unscannable files are rescanned "
                               "(infected and rejected ones stay in quarantine; pending and ended ones have "
                               "nothing to scan; a scanning one is being scanned)")
            state = _object_state(s3, row["bucket"], row["object_key"])
            if not state["present"] and status == UploadStatus.UNSCANNABLE:  # kept in quarantine; scan reads it there
                state = _object_state(s3, settings.storage.quarantine_bucket, row["object_key"])
            if not state["present"]:
                raise OpsError(f"{row['bucket']}/{row['object_key']} is not in storage; nothing to scan")
            if status in RESCANNABLE:
                conn.execute("UPDATE uploads SET status = 'uploaded', scan_verdict = NULL, scan_detail = NULL,"
                             " scanned_at = NULL, updated_at = now() WHERE id = %s", (parsed,))
                if (state.get("tags") or {}).get("dropgate-verdict"):
                    s3.delete_object_tagging(Bucket=state["bucket"], Key=row["object_key"])
            audit.record(conn, actor, "upload.rescan_requested" if status in RESCANNABLE else "upload.rescan_reemitted",
                         parsed, rescan_id=rescan_id, reason=reason, previous_status=status,
                         previous_verdict=row["scan_verdict"], previous_detail=row["scan_detail"])
        event = ObjectCreated(
            id=f"rescan-{rescan_id}", event_name="ObjectCreated:CompleteMultipartUpload",
            event_source=RESCAN_EVENT_SOURCE, region="", bucket=row["bucket"], key=row["object_key"],
            time=row["storage_event_time"] or datetime.now(UTC), size=row["stored_size"] or state["size"],
            etag=row["etag"], sequencer=row["storage_sequencer"],
            content_type=row["stored_content_type"] or row["content_type"]).to_cloudevent()
        event = CloudEvent({**event.get_attributes(), RESCAN_EXTENSION: rescan_id}, event.get_data())
        try:
            target.sink().send(event)
        except Exception as exc:
            raise OpsError(f"the verdict was reset but the event could not be sent ({type(exc).__name__}: {exc}); "
                           f"run `dropgate-dev rescan {upload_id}` again to re-emit it") from exc
        trace_id = tracing.current_trace_id()
    return {"upload_id": str(parsed), "rescan_id": rescan_id, "event_id": event["id"], "previous_status": status,
            "trace_id": trace_id}


# ---------------------------------------------------------------------------------------------- expire now

def expire_now(target: Target, *, namespace: str, wait: float | None) -> dict[str, Any]:
    """Fire the expire PingSource: through the local router's endpoint, else as a ping event to the Broker."""
    if target.router_url:
        fired = _post_json(f"{target.router_url}/pingsources/{EXPIRE_PINGSOURCE}")
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
        records = [e for e in _get_json(f"{router_url}/events?limit=1000")["events"] if e["id"] == event_id]
        deliveries = [d for e in records for d in e["deliveries"]]
        if deliveries and all(d["outcome"] != "pending" for d in deliveries):
            return [{"trigger": d["trigger"], "outcome": d["outcome"], "attempts": d["attempts"]} for d in deliveries]
        if time.monotonic() > deadline:
            return [{"trigger": d["trigger"], "outcome": d["outcome"], "attempts": d["attempts"]} for d in deliveries]
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------------- the commands

def _run_history(args: argparse.Namespace) -> int:
    history = upload_history(Target.resolve(args), args.upload_id)
    _print(history, args.json, format_history(history))
    return 0


def _run_replay(args: argparse.Namespace) -> int:
    target = Target.resolve(args)
    path = args.file or target.dead_letter_file
    if path is None:
        raise OpsError("no dead-letter file: pass --file (e.g. the JobSink's logs saved one JSON line per event)")
    results = replay_dead_letters(path, target.broker_url, ids=args.id, dry_run=args.dry_run,
                                  token_file=target.sink_token_file)
    _print([r.__dict__ for r in results], args.json,
           "\n".join(f"{r.outcome:<10} {r.id}  {r.type or ''}" + (f"  {r.detail}" if r.detail else "")
                     for r in results) or f"no dead-lettered events in {path}")
    return 1 if any(r.outcome == "failed" for r in results) else 0


def _run_rescan(args: argparse.Namespace) -> int:
    result = rescan(Target.resolve(args), args.upload_id, _operator(args), args.reason)
    _print(result, args.json, f"rescan {result['rescan_id']} of {result['upload_id']} (was {result['previous_status']}):"
                              f" event {result['event_id']} sent; trace {result['trace_id']}")
    return 0


def _verdict_admin(target: Target):  # noqa: ANN202 - shared.scanning.verdicts.VerdictAdmin, on a small pool of its own
    from shared.platform.db import create_pool
    from shared.platform.storage import create_s3_client
    from shared.scanning.verdicts import VerdictAdmin

    settings = target.settings("storage", "database")
    return VerdictAdmin(storage=settings.storage, pool=create_pool(settings.database),
                        s3=create_s3_client(settings.storage, max_attempts=1),
                        event_source=f"{target.env.get('DROPGATE_EVENT_SOURCE', 'dropgate')}/ops")


def _run_release(args: argparse.Namespace) -> int:
    admin = _verdict_admin(Target.resolve(args))
    try:
        row = admin.release(args.upload_id, _operator(args), args.reason)
    finally:
        admin.pool.close()
    _print({"upload_id": str(row.id), "status": str(row.status), "status_reason": row.status_reason}, args.json,
           f"{row.id} released: {row.status_reason}")
    return 0


def _run_blocklist(args: argparse.Namespace) -> int:
    target = Target.resolve(args)
    admin = _verdict_admin(target)
    try:
        if args.action == "list":
            entries = [entry.public() for entry in admin.listed()]
            _print(entries, args.json, "\n".join(f"{e['sha256']}  {e['added_at']}  {e['added_by']}: {e['reason']}"
                                                 for e in entries) or "the blocklist is empty")
        elif args.action == "remove":
            if not admin.unblock(args.sha256, _operator(args)):
                raise OpsError(f"{args.sha256} is not on the blocklist")
            _print({"sha256": args.sha256, "removed": True}, args.json, f"{args.sha256} removed")
        else:
            added, events = admin.block(args.sha256, args.reason, _operator(args))
            if events:
                if not target.broker_url:
                    raise OpsError(f"{len(events)} files were quarantined but no broker was given to tell "
                                   "subscribers: set K_SINK or pass --broker")
                target.sink().send_all(event.to_cloudevent() for event in events)
            quarantined = [str(event.upload_id) for event in events]
            _print({"sha256": args.sha256, "added": added, "quarantined": quarantined}, args.json,
                   f"{args.sha256} {'added' if added else 'was listed already'}; "
                   f"{len(quarantined)} stored files quarantined" + "".join(f"\n  {i}" for i in quarantined))
    finally:
        admin.pool.close()
    return 0


def _run_expire_now(args: argparse.Namespace) -> int:
    result = expire_now(Target.resolve(args), namespace=args.namespace, wait=args.wait)
    _print(result, args.json, json.dumps(result, indent=2, default=str))
    return 0


def _guarded(run):  # noqa: ANN001, ANN202 - wraps a command
    def command(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (OpsError, ApiError) as exc:  # ApiError: the shared checks' 4xx (bad hash, wrong state)
            print(f"dropgate-dev {args.command}: {exc}", file=sys.stderr)
            return 2
    return command


def register(sub: argparse._SubParsersAction) -> None:
    """Add the operator commands to `dropgate-dev`'s subcommands."""
    def common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--environ", action="store_true",
                            help="connect as the environment says (DATABASE_URL, DROPGATE_S3_*, K_SINK), "
                                 "not to the local stack")
        parser.add_argument("--broker", help="the Broker's ingress URL (default: K_SINK)")
        parser.add_argument("--router", help="the local router's URL (default: the local stack's)")
        parser.add_argument("--json", action="store_true", help="print JSON")
        return parser

    history = common(sub.add_parser("history", help="an upload's row, audit trail, storage state and deliveries"))
    history.add_argument("upload_id")
    history.set_defaults(run=_guarded(_run_history))

    replay = common(sub.add_parser("replay-dead-letters", help="re-post dead-lettered events to the broker"))
    replay.add_argument("--file", type=Path, help="dead-letter file (default: the local stack's)")
    replay.add_argument("--id", action="append", default=[], help="replay only this event id (repeatable)")
    replay.add_argument("--dry-run", action="store_true", help="list, replay nothing")
    replay.set_defaults(run=_guarded(_run_replay))

    release = common(sub.add_parser("release", help="let an unscannable or rejected file be downloaded (audited)"))
    release.add_argument("upload_id")
    release.add_argument("--reason", required=True, help="why; recorded in the audit log")
    release.add_argument("--operator", help="who decides (default: the login name); recorded in the audit log")
    release.set_defaults(run=_guarded(_run_release))

    blocked = common(sub.add_parser("blocklist", help="known-bad SHA-256 values: list, add (quarantines stored "
                                                      "files with it), remove"))
    blocked.add_argument("action", choices=("list", "add", "remove"))
    blocked.add_argument("sha256", nargs="?", help="the whole file's SHA-256 (add, remove)")
    blocked.add_argument("--reason", help="why (add); recorded with the entry and in the audit log")
    blocked.add_argument("--operator", help="who decides (default: the login name); recorded in the audit log")
    blocked.set_defaults(run=_guarded(_run_blocklist))

    again = common(sub.add_parser("rescan", help="scan a clean or unscannable file again, e.g. after a signature update"))
    again.add_argument("upload_id")
    again.add_argument("--reason", default="signature update", help="recorded in the audit log")
    again.add_argument("--operator", help="who asks (default: the login name); recorded in the audit log")
    again.set_defaults(run=_guarded(_run_rescan))

    expire = common(sub.add_parser("expire-now", help="run the expire pass now (fires the dropgate-expire PingSource)"))
    expire.add_argument("--namespace", default="dropgate", help="the PingSource's namespace (broker mode)")
    expire.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                        help="local router: wait up to this long for the delivery's outcome")
    expire.set_defaults(run=_guarded(_run_expire_now))


__all__ = ["OpsError", "Target", "expire_now", "format_history", "register", "replay_dead_letters", "rescan",
           "upload_history"]
