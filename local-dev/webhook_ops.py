"""`dropgate-dev webhooks`: the webhook delivery log, and replays (docs/webhooks.md).

    dropgate-dev webhooks deliveries [--event-id X] [--endpoint ID] [--state failed]   the delivery log
    dropgate-dev webhooks replay --event-id X [--event-id Y ...] [--endpoint ID]       send events again
    dropgate-dev webhooks replay --since 2026-12-03T10:00Z --until 2026-12-03T12:00Z   ... by time range
    dropgate-dev webhooks endpoints [--endpoint ID]                                    enabled or disabled, and why

A replay makes the chosen deliveries pending and due now (shared/webhooks/log.py, audited), then
wakes the retry sweep: the webhooks function sends them, from where it always sends, with its egress
checks, under the same webhook-id as before. Locally through the router's `POST /pingsources/...`;
on a cluster as the PingSource's event to the Broker (K_SINK, with the operator's token in
DROPGATE_SINK_TOKEN_FILE, as `expire-now` does). A disabled endpoint (its receiver answered 410 Gone, or
an admin disabled it) is not replayed to: naming it is refused with the reason, until an admin enables it.

Where it connects: the local stack's database (`<data-dir>/stack.json`), or with `--environ` the
DATABASE_URL of the environment.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any, Final

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from events.types import Ping
from events.wire import parse_time
from shared.platform.audit import Actor
from shared.platform.delivery import EventSink
from shared.webhooks.log import (
    DeliveryRecord,
    EndpointDisabled,
    ReplaySelection,
    delivery_log,
    endpoints,
    replay,
)
from shared.webhooks.model import DeliveryState

SWEEP_PINGSOURCE: Final = "dropgate-webhooks"
COLUMNS: Final = ["event_id", "event_type", "endpoint_id", "state", "attempts", "last_status", "next_attempt_at",
                  "last_error"]
ENDPOINT_LISTING: Final = ["id", "url", "enabled", "disabled_at", "disabled_reason"]


class WebhookOpsError(RuntimeError):
    """A command that cannot be carried out; the message says why."""


def _connection(args: argparse.Namespace) -> tuple[dict[str, str], str | None]:
    """The environment to connect with, and the local router's URL (None on a cluster)."""
    state_path = args.data_dir / "stack.json"
    if not args.environ and state_path.exists():
        state = json.loads(state_path.read_text())
        return dict(state["env"]), f"http://127.0.0.1:{state['ports']['router']}"
    return dict(os.environ), None


def _pool(env: dict[str, str]) -> ConnectionPool:
    url = env.get("DATABASE_URL")
    if not url:
        raise WebhookOpsError("no database: start the local stack, or set DATABASE_URL and pass --environ")
    return ConnectionPool(url, min_size=1, max_size=2, kwargs={"row_factory": dict_row}, open=True)


def wake_sweep(env: dict[str, str], router_url: str | None, *, namespace: str = "dropgate") -> str:
    """Fire the retry sweep's PingSource now; its ping's id."""
    if router_url:
        request = urllib.request.Request(f"{router_url}/pingsources/{SWEEP_PINGSOURCE}", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())["id"]
    if not env.get("K_SINK"):
        raise WebhookOpsError("no broker to wake the sweep: set K_SINK (the Broker's ingress), or wait for the "
                              "PingSource's next minute")
    # The event Knative's ping adapter sends, so the dropgate-webhooks-ping Trigger (type + source) matches it.
    ping = Ping(id=str(uuid.uuid4()), source=f"/apis/v1/namespaces/{namespace}/pingsources/{SWEEP_PINGSOURCE}",
                time=datetime.now(UTC), task="webhooks-retry")
    EventSink(env["K_SINK"], token_file=env.get("DROPGATE_SINK_TOKEN_FILE")).send(ping.to_cloudevent())
    return ping.id


def _wait_settled(pool: ConnectionPool, records: list[DeliveryRecord], timeout: float) -> list[DeliveryRecord]:
    """The replayed deliveries once none is pending and due-now, or as they stand when the time is up."""
    deadline = time.monotonic() + timeout
    messages = list(dict.fromkeys(r.message_id for r in records))
    replayed_to = {r.endpoint_id for r in records}
    while True:
        current = [r for message in messages for r in delivery_log(pool, event_id=message, limit=1000)
                   if r.endpoint_id in replayed_to]
        if all(r.state != DeliveryState.PENDING or r.attempts > 0 for r in current) or time.monotonic() > deadline:
            return current
        time.sleep(0.5)


def _selection(args: argparse.Namespace) -> ReplaySelection:
    try:
        return ReplaySelection(event_ids=tuple(args.event_id), since=parse_time(args.since) if args.since else None,
                               until=parse_time(args.until) if args.until else None,
                               endpoint_id=uuid.UUID(args.endpoint) if args.endpoint else None)
    except ValueError as exc:
        raise WebhookOpsError(str(exc)) from None


def _emit(result: Any, as_json: bool, columns: list[str] | None = None) -> None:
    from dropgate_local.output import emit

    emit(result, as_json=as_json, columns=columns)


def _run_replay(args: argparse.Namespace) -> int:
    selection = _selection(args)
    env, router = _connection(args)
    actor = Actor(f"operator:{args.operator or getpass.getuser()}")
    with _pool(env) as pool:
        try:
            replayed = replay(pool, selection, actor)
        except EndpointDisabled as exc:
            raise WebhookOpsError(str(exc)) from None
        records = replayed.records
        if replayed.skipped_disabled:
            print(f"left out {len(replayed.skipped_disabled)} disabled endpoint(s), enable them first: "
                  f"{', '.join(map(str, replayed.skipped_disabled))}", file=sys.stderr)
        if not records:
            raise WebhookOpsError("nothing to replay: no recorded event matches, or no enabled endpoint wants them")
        if not args.no_sweep:
            ping_id = wake_sweep(env, router)
            print(f"replaying {len(records)} deliveries; sweep woken (ping {ping_id})", file=sys.stderr)
            if args.wait:
                records = _wait_settled(pool, records, args.wait)
        _emit([r.as_dict() for r in records], args.json, COLUMNS)
    return 0


def _endpoint_argument(args: argparse.Namespace) -> uuid.UUID | None:
    try:
        return uuid.UUID(args.endpoint) if args.endpoint else None
    except ValueError:
        raise WebhookOpsError(f"--endpoint {args.endpoint!r} is not an endpoint id (a UUID)") from None


def _run_deliveries(args: argparse.Namespace) -> int:
    env, _ = _connection(args)
    endpoint = _endpoint_argument(args)
    with _pool(env) as pool:
        records = delivery_log(pool, event_id=args.event_id, endpoint_id=endpoint,
                               state=DeliveryState(args.state) if args.state else None, limit=args.limit)
    _emit([r.as_dict() for r in records], args.json, COLUMNS)
    return 0


def _run_endpoints(args: argparse.Namespace) -> int:
    env, _ = _connection(args)
    endpoint = _endpoint_argument(args)
    with _pool(env) as pool:
        listed = endpoints(pool, endpoint)
    # Endpoint.public() never holds a secret, so neither does this listing.
    _emit([{name: e.public()[name] for name in ENDPOINT_LISTING} for e in listed], args.json, ENDPOINT_LISTING)
    return 0


def _guarded(run):
    def command(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except WebhookOpsError as exc:
            print(f"dropgate-dev webhooks {args.webhooks_command}: {exc}", file=sys.stderr)
            return 2
    return command


def register(sub: argparse._SubParsersAction) -> None:
    """Add `webhooks replay`, `webhooks deliveries` and `webhooks endpoints` to `dropgate-dev`'s subcommands."""
    webhooks = sub.add_parser("webhooks", help="the webhook delivery log, and replays (docs/webhooks.md)")
    commands = webhooks.add_subparsers(dest="webhooks_command", required=True)

    def common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--environ", action="store_true",
                            help="connect as the environment says (DATABASE_URL, K_SINK), not to the local stack")
        parser.add_argument("--endpoint", help="only this endpoint (its id)")
        parser.add_argument("--json", action="store_true", help="print JSON")
        return parser

    again = common(commands.add_parser("replay", help="send events again: by id, or by the time they happened"))
    again.add_argument("--event-id", action="append", default=[],
                       help="a CloudEvent id or webhook-id (repeatable)")
    again.add_argument("--since", help="RFC 3339 time: events that happened at or after it")
    again.add_argument("--until", help="RFC 3339 time: events that happened before it")
    again.add_argument("--operator", help="who asks (default: the login name); recorded in the audit log")
    again.add_argument("--no-sweep", action="store_true", help="only requeue; the PingSource's next minute sends")
    again.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                       help="wait up to this long for the sweep's attempts, then print the deliveries")
    again.set_defaults(run=_guarded(_run_replay))

    log = common(commands.add_parser("deliveries", help="the delivery log: state, attempts, last answer"))
    log.add_argument("--event-id", default=None, help="one event (CloudEvent id or webhook-id)")
    log.add_argument("--state", choices=[s.value for s in DeliveryState], default=None)
    log.add_argument("--limit", type=int, default=100)
    log.set_defaults(run=_guarded(_run_deliveries))

    listing = common(commands.add_parser("endpoints", help="the registered endpoints: enabled or disabled, and why"))
    listing.set_defaults(run=_guarded(_run_endpoints))
