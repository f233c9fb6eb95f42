"""Routing as Knative does it: the pure rules (local-dev/routing.py) and the local broker
(local-dev/router.py) running as a real process, delivering over real HTTP to real
subscriber servers (pytest-localserver's WSGIServer). Nothing is mocked.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http
from pytest_localserver.http import WSGIServer
from werkzeug.wrappers import Request

from dropgate_local.identity import (
    ClusterIssuer,
    broker_audience,
    subject,
    trigger_subject,
)
from dropgate_local.processes import ChildProcess, free_port, http_ok
from dropgate_local.router import load_manifests
from dropgate_local.routing import (
    PING_EVENT_TYPE,
    CronSchedule,
    DeliverySpec,
    RoutingError,
    RoutingTable,
    backoff_delays,
    parse_iso8601_duration,
    should_retry,
)

REPO = Path(__file__).resolve().parents[1]
DEV_OVERLAY = REPO / "manifests" / "overlays" / "dev"
S3 = "com.amazonaws.s3."
UPLOADS, QUARANTINE = "dropgate-uploads", "dropgate-quarantine"
PING_SOURCE = "/apis/v1/namespaces/dropgate/pingsources/dropgate-expire"


# ---------------------------------------------------------------- pure rules

@pytest.mark.parametrize(("text", "seconds"), [
    ("PT0.5S", 0.5), ("PT2S", 2), ("PT0,25S", 0.25), ("PT15M", 900), ("PT1H30M", 5400),
    ("P1D", 86400), ("P1W", 604800), ("P1DT1S", 86401), ("pt1s", 1),
])
def test_iso8601_durations(text: str, seconds: float) -> None:
    assert parse_iso8601_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "P", "PT", "2S", "PTS", "-PT1S", "PT1S2", "P1DT", "1 second"])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_iso8601_duration(text)


def _delivery(**spec) -> DeliverySpec:
    return DeliverySpec.from_spec(spec, "test")


def test_backoff_follows_the_knative_dispatcher() -> None:
    # exponential: delay * 2^n, linear: delay * n, n = 0 before the first retry (go-retryablehttp)
    assert backoff_delays(_delivery(retry=4, backoffPolicy="exponential", backoffDelay="PT1S")) == [1, 2, 4, 8]
    assert backoff_delays(_delivery(retry=3, backoffPolicy="exponential", backoffDelay="PT0.2S")) == \
        pytest.approx([0.2, 0.4, 0.8])
    assert backoff_delays(_delivery(retry=4, backoffPolicy="linear", backoffDelay="PT2S")) == [0, 2, 4, 6]
    # without both a policy and a delay Knative retries immediately
    assert backoff_delays(_delivery(retry=2)) == [0, 0]
    assert backoff_delays(_delivery(retry=2, backoffPolicy="linear")) == [0, 0]
    assert backoff_delays(_delivery(retry=0, backoffPolicy="linear", backoffDelay="PT1S")) == []
    assert backoff_delays(None) == []


@pytest.mark.parametrize("spec", [{"retry": -1}, {"retry": "3"}, {"backoffPolicy": "fibonacci"},
                                  {"backoffDelay": "2s"}, {"timeout": "soon"}, {"format": "xml"},
                                  {"deadLetterSink": {"ref": {"kind": "Service"}}}])
def test_malformed_delivery_is_refused(spec: dict) -> None:
    with pytest.raises(RoutingError):
        DeliverySpec.from_spec(spec, "Trigger t")


def test_selective_retry_codes() -> None:
    retried = [None, 500, 502, 503, 504, 404, 408, 409, 429]
    final = [200, 202, 204, 301, 302, 400, 401, 403, 405, 413, 422]
    assert all(should_retry(code) for code in retried)
    assert not any(should_retry(code) for code in final)


def _table(*triggers: dict, broker_delivery: dict | None = None, pings: tuple[dict, ...] = ()) -> RoutingTable:
    docs: list[dict] = [{"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "metadata": {"name": "b"},
                         "spec": {"delivery": broker_delivery} if broker_delivery else {}}]
    for i, trigger in enumerate(triggers):
        docs.append({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "metadata": {"name": f"t{i}"},
                     "spec": {"broker": trigger.get("broker", "b"), "filter": {"attributes": trigger.get("filter", {})},
                              "subscriber": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
                                                     "name": trigger.get("to", f"svc{i}")}},
                              **({"delivery": trigger["delivery"]} if "delivery" in trigger else {})}})
    docs.extend(pings)
    return RoutingTable.from_manifests(docs)


def _names(table: RoutingTable, attributes: dict, broker: str | None = None) -> list[str]:
    return [r.name for r in table.matching_routes(attributes, broker=broker)]


def test_exact_attribute_matching() -> None:
    table = _table({"filter": {"type": "a", "bucket": "x"}}, {"filter": {"type": "a"}}, {"filter": {}})
    event = {"specversion": "1.0", "id": "1", "source": "s", "type": "a", "bucket": "x"}
    assert _names(table, event) == ["t0", "t1", "t2"]
    assert _names(table, {**event, "bucket": "y"}) == ["t1", "t2"]
    assert _names(table, {**event, "bucket": "X"}) == ["t1", "t2"], "matching is case-sensitive"
    assert _names(table, {**event, "type": "b"}) == ["t2"], "an empty filter matches everything"
    no_bucket = {k: v for k, v in event.items() if k != "bucket"}
    assert _names(table, no_bucket) == ["t1", "t2"], "an extension the event lacks fails the filter"


def test_empty_filter_value_means_any_non_empty_value() -> None:
    table = _table({"filter": {"bucket": ""}}, {"filter": {"subject": ""}})
    assert _names(table, {"type": "a", "bucket": "x", "subject": "k"}) == ["t0", "t1"]
    assert _names(table, {"type": "a", "bucket": "", "subject": ""}) == []
    assert _names(table, {"type": "a"}) == [], "an unset context attribute reads as empty"


def test_context_attribute_filter_on_unset_attribute() -> None:
    table = _table({"filter": {"subject": "k"}})
    assert _names(table, {"type": "a", "subject": "k"}) == ["t0"]
    assert _names(table, {"type": "a"}) == []


def test_routes_belong_to_their_broker() -> None:
    table = _table({"filter": {"type": "a"}}, {"filter": {"type": "a"}, "broker": "other"})
    assert _names(table, {"type": "a"}, broker="b") == ["t0"]
    assert _names(table, {"type": "a"}, broker="other") == ["t1"]
    assert _names(table, {"type": "a"}) == ["t0", "t1"]


def test_delivery_falls_back_to_the_broker() -> None:
    broker_delivery = {"retry": 5, "backoffPolicy": "exponential", "backoffDelay": "PT1S",
                       "deadLetterSink": {"ref": {"kind": "Service", "name": "dls"}}}
    table = _table({"filter": {}}, {"filter": {}, "delivery": {"retry": 1}}, broker_delivery=broker_delivery)
    inherited, own = table.routes
    assert inherited.delivery.retry == 5 and backoff_delays(inherited.delivery) == [1, 2, 4, 8, 16]
    assert own.delivery.retry == 1 and own.delivery.backoff_policy is None
    assert own.delivery.dead_letter.name == "dls", "a Trigger without a dead-letter sink uses the Broker's"


def test_unsupported_or_broken_triggers_are_refused() -> None:
    base = {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "metadata": {"name": "t"}}
    with pytest.raises(RoutingError, match="filters"):
        RoutingTable.from_manifests([{**base, "spec": {"broker": "b", "filters": [{"exact": {"type": "a"}}],
                                                       "subscriber": {"uri": "http://x"}}}])
    with pytest.raises(RoutingError, match="subscriber"):
        RoutingTable.from_manifests([{**base, "spec": {"broker": "b"}}])
    with pytest.raises(RoutingError, match="broker"):
        RoutingTable.from_manifests([{**base, "spec": {"subscriber": {"uri": "http://x"}}}])


def test_destinations_resolve_like_knative() -> None:
    table = _table({"filter": {}, "to": "svc"})
    subscriber = table.routes[0].subscriber
    assert subscriber.resolve({"svc": "http://127.0.0.1:9"}) == "http://127.0.0.1:9"
    assert subscriber.resolve({}) is None
    relative = DeliverySpec.from_spec({"deadLetterSink": {"ref": {"name": "svc"}, "uri": "/dead"}}, "t").dead_letter
    assert relative.resolve({"svc": "http://h:1/"}) == "http://h:1/dead"
    absolute = DeliverySpec.from_spec({"deadLetterSink": {"uri": "http://h:2/x"}}, "t").dead_letter
    assert absolute.resolve({}) == "http://h:2/x"


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(("expression", "fires", "silent"), [
    ("0 * * * *", ["2026-03-02T10:00"], ["2026-03-02T10:01", "2026-03-02T10:30"]),
    ("*/15 * * * *", ["2026-03-02T10:00", "2026-03-02T10:45"], ["2026-03-02T10:14"]),
    ("5,10 3 * * *", ["2026-03-02T03:05", "2026-03-02T03:10"], ["2026-03-02T04:05", "2026-03-02T03:06"]),
    ("0 9-17/4 * * *", ["2026-03-02T09:00", "2026-03-02T13:00", "2026-03-02T17:00"], ["2026-03-02T11:00"]),
    ("30 2 * * MON-FRI", ["2026-03-02T02:30", "2026-03-06T02:30"], ["2026-03-07T02:30", "2026-03-08T02:30"]),
    ("0 0 * * 7", ["2026-03-08T00:00"], ["2026-03-09T00:00"]),  # 7 is Sunday, like 0
    ("0 0 1 JAN,jul *", ["2026-01-01T00:00", "2026-07-01T00:00"], ["2026-02-01T00:00"]),
    # both day fields restricted: either matches (1st of the month OR a Monday)
    ("0 0 1 * MON", ["2026-03-01T00:00", "2026-03-02T00:00"], ["2026-03-03T00:00"]),
    # one day field starred: both must match
    ("0 0 1-7 * *", ["2026-03-07T00:00"], ["2026-03-08T00:00"]),
    ("@hourly", ["2026-03-02T10:00"], ["2026-03-02T10:05"]),
    ("@daily", ["2026-03-02T00:00"], ["2026-03-02T01:00"]),
    ("10-20/5 * * * *", ["2026-03-02T10:10", "2026-03-02T10:20"], ["2026-03-02T10:25", "2026-03-02T10:12"]),
    ("5/20 * * * *", ["2026-03-02T10:05", "2026-03-02T10:45"], ["2026-03-02T10:00"]),
])
def test_cron_schedules(expression: str, fires: list[str], silent: list[str]) -> None:
    schedule = CronSchedule.parse(expression)
    assert all(schedule.matches(_at(t)) for t in fires), fires
    assert not any(schedule.matches(_at(t)) for t in silent), silent


def test_cron_time_zones() -> None:
    berlin = CronSchedule.parse("0 9 * * *", timezone="Europe/Berlin")
    assert berlin.matches(_at("2026-01-15T08:00")) and not berlin.matches(_at("2026-01-15T09:00"))
    assert berlin.matches(_at("2026-07-15T07:00")), "summer time"
    prefixed = CronSchedule.parse("CRON_TZ=America/New_York 0 12 * * *")
    assert prefixed.timezone == "America/New_York" and prefixed.matches(_at("2026-01-15T17:00"))


@pytest.mark.parametrize("expression", ["* * * *", "* * * * * *", "60 * * * *", "* 24 * * *", "* * 0 * *",
                                        "*/0 * * * *", "5-3 * * * *", "a * * * *", "* * * 13 *", "1,,2 * * * *"])
def test_malformed_cron_is_refused(expression: str) -> None:
    with pytest.raises(ValueError):
        CronSchedule.parse(expression)


def test_pingsource_objects() -> None:
    ping = {"apiVersion": "sources.knative.dev/v1", "kind": "PingSource",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"schedule": "*/5 * * * *", "contentType": "application/json", "data": "{}",
                     "ceOverrides": {"extensions": {"purpose": "test"}},
                     "sink": {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "b"}}}}
    table = _table(pings=(ping,))
    (parsed,) = table.pings
    assert parsed.event_source == "/apis/v1/namespaces/ns/pingsources/p"
    assert parsed.is_due(_at("2026-03-02T10:05")) and not parsed.is_due(_at("2026-03-02T10:06"))
    assert dict(parsed.extensions) == {"purpose": "test"} and parsed.sink.kind == "Broker"
    with pytest.raises(RoutingError, match="mutually exclusive"):
        _table(pings=({**ping, "spec": {**ping["spec"], "dataBase64": "e30="}},))
    with pytest.raises(RoutingError, match="cron"):
        _table(pings=({**ping, "spec": {**ping["spec"], "schedule": "hourly"}},))


@pytest.fixture(scope="module")
def dev_table() -> RoutingTable:
    return RoutingTable.from_manifests(load_manifests(DEV_OVERLAY))


def _s3_event(name: str, bucket: str) -> dict[str, str]:
    return {"specversion": "1.0", "id": "x", "type": S3 + name, "source": f"minio:s3..{bucket}",
            "subject": "k", "bucket": bucket}


def test_dev_overlay_routes_the_events_contract(dev_table: RoutingTable) -> None:
    """docs/events-contract.md, as the dev overlay's Triggers route it."""
    def subscribers(attributes: dict) -> set[str]:
        return {r.subscriber_service for r in dev_table.matching_routes(attributes, broker="dropgate")}

    for created in ("ObjectCreated:Put", "ObjectCreated:CompleteMultipartUpload"):
        assert subscribers(_s3_event(created, UPLOADS)) == {"dropgate-scan", "dropgate-metadata"}
        assert subscribers(_s3_event(created, QUARANTINE)) == {"dropgate-metadata"}
    for other in ("ObjectCreated:Copy", "ObjectRemoved:Delete"):
        assert subscribers(_s3_event(other, UPLOADS)) == {"dropgate-metadata"}
        assert subscribers(_s3_event(other, QUARANTINE)) == {"dropgate-metadata"}
    assert subscribers(_s3_event("ObjectCreated:Put", "someone-elses-bucket")) == set()
    ping = {"specversion": "1.0", "id": "p", "type": PING_EVENT_TYPE, "source": PING_SOURCE}
    assert subscribers(ping) == {"dropgate-expire"}
    assert subscribers({**ping, "source": "/apis/v1/namespaces/dropgate/pingsources/dropgate-reconcile"}) \
        == {"dropgate-reconcile"}
    assert subscribers({**ping, "source": "/apis/v1/namespaces/dropgate/pingsources/other"}) == set()
    verdict = {"specversion": "1.0", "id": "v", "type": "dev.dropgate.scan.clean", "source": "dropgate/scan"}
    assert subscribers(verdict) == {"dropgate-webhooks"}  # public events go out as signed webhooks only
    assert subscribers({**ping, "source": "/apis/v1/namespaces/dropgate/pingsources/dropgate-webhooks"}) \
        == {"dropgate-webhooks"}
    assert [p.name for p in dev_table.pings] == ["dropgate-expire", "dropgate-reconcile", "dropgate-webhooks"]
    assert all(r.delivery and r.delivery.dead_letter for r in dev_table.routes)


def test_bucket_names_can_be_substituted(dev_table: RoutingTable) -> None:
    renamed = dev_table.with_bucket_names({UPLOADS: "test-up", QUARANTINE: "test-q"})
    assert {r.subscriber_service for r in renamed.matching_routes(_s3_event("ObjectCreated:Put", "test-up"))} == \
        {"dropgate-scan", "dropgate-metadata"}
    assert renamed.matching_routes(_s3_event("ObjectCreated:Put", UPLOADS)) == []
    assert dev_table.matching_routes(_s3_event("ObjectCreated:Put", UPLOADS)), "the original is unchanged"


# ---------------------------------------------------------------- the router as a process

Plan = Callable[[int, dict], tuple[int, dict, bytes]]  # (attempt number from 1, request) -> response


class Subscriber:
    """A WSGI app standing in for one Knative Service: records requests, answers from a per-event plan."""

    def __init__(self, name: str):
        self.name = name
        self.requests: list[dict] = []
        self.plans: dict[str, Plan] = {}
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):  # noqa: ANN001, ANN204 - WSGI
        request = Request(environ)
        body = request.get_data()
        headers = {k.lower(): v for k, v in request.headers.items()}
        event_id = headers.get("ce-id") or _structured_id(body)
        with self._lock:
            record = {"headers": headers, "body": body, "id": event_id, "at": time.monotonic()}
            self.requests.append(record)
            attempt = sum(1 for r in self.requests if r["id"] == event_id)
        status, response_headers, response_body = self.plans.get(event_id, _answer(202))(attempt, record)
        start_response(f"{status} Planned", list(response_headers.items()))
        return [response_body]

    def received(self, event_id: str) -> list[dict]:
        with self._lock:
            return [r for r in self.requests if r["id"] == event_id]


def _structured_id(body: bytes) -> str | None:
    try:
        return json.loads(body).get("id")
    except (ValueError, AttributeError):
        return None


def _answer(*statuses: int, body: bytes = b"") -> Plan:
    """Answer the n-th attempt with statuses[n-1], the last status repeating."""
    return lambda attempt, _request: (statuses[min(attempt, len(statuses)) - 1],
                                      {"Content-Type": "text/plain"}, body)


@pytest.fixture(scope="module")
def subscribers() -> Iterator[dict[str, tuple[Subscriber, WSGIServer]]]:
    servers = {}
    for name in ("dropgate-scan", "dropgate-metadata", "dropgate-expire", "dropgate-webhooks", "dropgate-dead-letter"):
        app = Subscriber(name)
        server = WSGIServer(application=app, threaded=True)  # a retry must not queue behind a slow attempt
        server.start()
        servers[name] = (app, server)
    yield servers
    for _, server in servers.values():
        server.stop()


# Router URL -> (its cluster issuer, a sender its broker admits, the broker's audience): _post signs with it.
_SENDERS: dict[str, tuple[ClusterIssuer, str, str]] = {}
CLUSTER_ISSUER = "http://127.0.0.1:1/cluster"  # the router mints and verifies with the key itself


def _start_router(tmp: Path, manifests: Path, services: dict[str, str], name: str = "router", *,
                  namespace: str = "dropgate", broker: str = "dropgate") -> tuple[ChildProcess, str]:
    port = free_port()
    child = ChildProcess(name, [sys.executable, "-m", "dropgate_local.router", "--port", str(port),
                                "--manifests", str(manifests), "--services", json.dumps(services),
                                "--dead-letter", str(tmp / "dead-letter.jsonl"),
                                "--cluster-issuer", CLUSTER_ISSUER, "--data-dir", str(tmp)],
                         tmp / f"{name}.log").start()
    url = f"http://127.0.0.1:{port}"
    _SENDERS[url] = (ClusterIssuer(tmp, CLUSTER_ISSUER), subject(namespace, "dropgate-operator"),
                     broker_audience(namespace, broker))
    try:
        child.wait_until(lambda: http_ok(f"{url}/healthz"), timeout=60)
    except Exception:
        child.stop()
        raise
    return child, url


@pytest.fixture(scope="module")
def router(subscribers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The local broker on the real dev overlay, its subscribers the local test servers."""
    tmp = tmp_path_factory.mktemp("router")
    services = {name: server.url for name, (_, server) in subscribers.items()}
    child, url = _start_router(tmp, DEV_OVERLAY, services)
    yield {"url": url, "dead_letter": tmp / "dead-letter.jsonl", "services": services, "tmp": tmp,
           "apps": {name: app for name, (app, _) in subscribers.items()}, "child": child}
    child.stop()


def _post(url: str, headers: dict[str, str], body: bytes | None, *, signed: bool = True) -> tuple[int, dict]:
    """POST to a router, by default with a token of a sender its broker admits (as a real sender has)."""
    router = next((r for r in _SENDERS if url.startswith(r)), None)
    if signed and router is not None and "Authorization" not in headers:
        issuer, sender, audience = _SENDERS[router]
        headers = {**headers, "Authorization": f"Bearer {issuer.mint(sender, audience)}"}
    request = urllib.request.Request(url, data=body or b"", headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


def _send(router_url: str, attributes: dict, data=None, *, structured: bool = False,  # noqa: ANN001
          event_id: str | None = None) -> str:
    event = CloudEvent({"id": event_id or str(uuid.uuid4()), **attributes}, data)
    headers, body = to_structured(event) if structured else to_binary(event)
    status, answer = _post(router_url + "/", dict(headers), body)
    assert status == 202, answer
    assert answer["id"] == event["id"]
    return event["id"]


def _storage_event(router_url: str, name: str, bucket: str, **kwargs) -> str:  # noqa: ANN003
    return _send(router_url, {"type": S3 + name, "source": f"minio:s3..{bucket}", "subject": "a/b c.pdf",
                              "bucket": bucket, "datacontenttype": "application/json"},
                 {"bucket": bucket, "key": "a/b c.pdf", "size": 10}, **kwargs)


def _record(router_url: str, event_id: str) -> dict | None:
    return next((e for e in _get(f"{router_url}/events?limit=1000")["events"] if e["id"] == event_id), None)


def _settled(router_url: str, event_id: str, timeout: float = 20) -> dict:
    """The /events record of an event once none of its deliveries is pending any more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = _record(router_url, event_id)
        if record and all(d["outcome"] != "pending" for d in record["deliveries"]):
            return record
        time.sleep(0.05)
    raise AssertionError(f"event {event_id} not settled: {_record(router_url, event_id)}")


def _dead_letters(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_health_and_routes(router) -> None:
    health = _get(f"{router['url']}/healthz")
    assert health["status"] == "ok" and health["brokers"] == ["dropgate"]
    assert health["triggers"] == 24 and health["pingsources"] == ["dropgate-expire", "dropgate-reconcile",
                                                                  "dropgate-webhooks"]
    routes = {r["name"]: r for r in _get(f"{router['url']}/routes")["triggers"]}
    assert routes["dropgate-scan-put"]["url"] == router["services"]["dropgate-scan"]
    assert routes["dropgate-scan-put"]["backoff"] == pytest.approx([0.2, 0.4, 0.8])


@pytest.mark.parametrize(("headers", "body"), [
    ({"Content-Type": "application/json"}, b'{"no": "cloudevent"}'),
    ({"Content-Type": "application/cloudevents+json"}, b"{not json"),
    ({"Content-Type": "application/cloudevents+json"}, b'{"specversion": "1.0", "id": "1", "source": "s"}'),
    ({"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s"}, b""),
    ({"ce-specversion": "0.1", "ce-id": "1", "ce-source": "s", "ce-type": "t"}, b""),
])
def test_malformed_events_are_refused_with_json(router, headers: dict, body: bytes) -> None:
    status, answer = _post(router["url"] + "/", headers, body)
    assert status == 400
    assert answer["error"] == "malformed_cloudevent" and answer["detail"]


def test_unknown_paths(router) -> None:
    assert _post(router["url"] + "/nowhere", {"ce-specversion": "1.0"}, b"")[0] == 404
    assert _post(router["url"] + "/pingsources/nope", {}, b"")[0] == 404
    event = CloudEvent({"type": S3 + "ObjectCreated:Put", "source": "s", "bucket": UPLOADS})
    headers, body = to_binary(event)
    assert _post(router["url"] + "/dropgate/dropgate", dict(headers), body)[0] == 202, "Knative's ingress path"


def test_event_reaches_exactly_the_matching_subscribers(router) -> None:
    apps, url = router["apps"], router["url"]
    put = _storage_event(url, "ObjectCreated:Put", UPLOADS)
    multipart = _storage_event(url, "ObjectCreated:CompleteMultipartUpload", UPLOADS, structured=True)
    removed = _storage_event(url, "ObjectRemoved:Delete", QUARANTINE)
    foreign = _storage_event(url, "ObjectCreated:Put", "someone-elses-bucket")
    verdict = _send(url, {"type": "dev.dropgate.scan.clean", "source": "dropgate/scan", "subject": "u1"})
    for event_id in (put, multipart, removed, foreign, verdict):
        record = _settled(url, event_id)
        assert all(d["outcome"] == "delivered" for d in record["deliveries"]), record

    def got(event_id: str) -> dict[str, int]:
        return {name: len(app.received(event_id)) for name, app in apps.items() if app.received(event_id)}

    assert got(put) == {"dropgate-scan": 1, "dropgate-metadata": 1}
    assert got(multipart) == {"dropgate-scan": 1, "dropgate-metadata": 1}
    assert got(removed) == {"dropgate-metadata": 1}
    assert got(foreign) == {} and _record(url, foreign)["deliveries"] == []
    assert got(verdict) == {"dropgate-webhooks": 1}  # public events: only the webhooks function

    (delivered,) = apps["dropgate-scan"].received(multipart)
    headers = delivered["headers"]
    assert headers["ce-type"] == S3 + "ObjectCreated:CompleteMultipartUpload", "structured in, binary out"
    assert headers["ce-bucket"] == UPLOADS and headers["ce-subject"] == "a/b c.pdf"
    assert headers["prefer"] == "reply" and "ce-knativearrivaltime" in headers
    assert "ce-knativebrokerttl" not in headers
    assert json.loads(delivered["body"]) == {"bucket": UPLOADS, "key": "a/b c.pdf", "size": 10}


def test_failing_twice_then_succeeding_gets_three_deliveries(router) -> None:
    apps, url = router["apps"], router["url"]
    event_id = str(uuid.uuid4())
    apps["dropgate-scan"].plans[event_id] = _answer(503, 500, 200)
    event = CloudEvent({"id": event_id, "type": S3 + "ObjectCreated:Put", "source": "s", "bucket": UPLOADS}, {"k": 1})
    headers, body = to_binary(event)
    assert _post(url + "/", dict(headers), body)[0] == 202
    record = _settled(url, event_id)
    scan = next(d for d in record["deliveries"] if d["trigger"] == "dropgate-scan-put")
    assert [a["status"] for a in scan["attempts"]] == [503, 500, 200] and scan["outcome"] == "delivered"
    attempts = apps["dropgate-scan"].received(event_id)
    assert len(attempts) == 3
    # the dev overlay's exponential backoff: 0.2 s, then 0.4 s
    assert attempts[1]["at"] - attempts[0]["at"] >= 0.18
    assert attempts[2]["at"] - attempts[1]["at"] >= 0.38
    assert len(apps["dropgate-metadata"].received(event_id)) == 1, "other Triggers are not retried"
    assert all(entry["id"] != event_id for entry in _dead_letters(router["dead_letter"]))


def test_always_failing_subscriber_ends_in_the_dead_letter_sink(router) -> None:
    apps, url = router["apps"], router["url"]
    event_id = str(uuid.uuid4())
    apps["dropgate-metadata"].plans[event_id] = _answer(500, body=b"database unavailable")
    event = CloudEvent({"id": event_id, "type": S3 + "ObjectRemoved:Delete", "source": "s", "subject": "k",
                        "bucket": UPLOADS, "datacontenttype": "application/json"}, {"key": "k"})
    headers, body = to_binary(event)
    assert _post(url + "/", dict(headers), body)[0] == 202
    record = _settled(url, event_id)
    (delivery,) = record["deliveries"]
    assert delivery["outcome"] == "dead-lettered"
    assert [a["status"] for a in delivery["attempts"]] == [500] * 4, "retry 3 in the dev overlay"
    assert len(apps["dropgate-metadata"].received(event_id)) == 4

    (line,) = [e for e in _dead_letters(router["dead_letter"]) if e["id"] == event_id]
    assert line["type"] == S3 + "ObjectRemoved:Delete" and line["bucket"] == UPLOADS
    assert line["knativeerrorcode"] == 500
    assert line["knativeerrordest"] == router["services"]["dropgate-metadata"]
    assert base64.b64decode(line["knativeerrordata"]) == b"database unavailable"
    assert line["data"] == {"key": "k"}

    # The Trigger's deadLetterSink (JobSink dropgate-dead-letter) maps to a local service here: it got the event too.
    (dead,) = apps["dropgate-dead-letter"].received(event_id)
    assert dead["headers"]["ce-knativeerrorcode"] == "500"
    assert dead["headers"]["ce-knativeerrordest"] == router["services"]["dropgate-metadata"]
    assert delivery["dead_letter"]["status"] == 202


def test_client_errors_are_not_retried(router) -> None:
    apps, url = router["apps"], router["url"]
    event_id = str(uuid.uuid4())
    apps["dropgate-scan"].plans[event_id] = _answer(400, body=b'{"error": "bad_request"}')
    event = CloudEvent({"id": event_id, "type": S3 + "ObjectCreated:Put", "source": "s", "bucket": UPLOADS})
    headers, body = to_binary(event)
    _post(url + "/", dict(headers), body)
    record = _settled(url, event_id)
    scan = next(d for d in record["deliveries"] if d["trigger"] == "dropgate-scan-put")
    assert [a["status"] for a in scan["attempts"]] == [400] and scan["outcome"] == "dead-lettered"
    (line,) = [e for e in _dead_letters(router["dead_letter"]) if e["id"] == event_id]
    assert line["knativeerrorcode"] == 400


def test_reply_is_ingested_and_routed(router) -> None:
    apps, url = router["apps"], router["url"]
    event_id, reply_id = str(uuid.uuid4()), str(uuid.uuid4())
    reply = CloudEvent({"id": reply_id, "type": S3 + "ObjectCreated:Copy", "source": "minio:s3..q",
                        "subject": "moved.pdf", "bucket": QUARANTINE}, {"key": "moved.pdf"})
    reply_headers, reply_body = to_binary(reply)
    apps["dropgate-scan"].plans[event_id] = lambda _n, _r: (200, dict(reply_headers), reply_body)
    event = CloudEvent({"id": event_id, "type": S3 + "ObjectCreated:Put", "source": "s", "bucket": UPLOADS})
    headers, body = to_binary(event)
    _post(url + "/", dict(headers), body)

    original = _settled(url, event_id)
    scan = next(d for d in original["deliveries"] if d["trigger"] == "dropgate-scan-put")
    assert scan["reply_id"] == reply_id
    routed = _settled(url, reply_id)
    assert routed["origin"] == "reply:dropgate-scan-put"
    assert [d["trigger"] for d in routed["deliveries"]] == ["dropgate-metadata-quarantine-copy"]
    (received,) = apps["dropgate-metadata"].received(reply_id)
    assert received["headers"]["ce-subject"] == "moved.pdf"
    assert routed["attributes"]["knativebrokerttl"] == 254, "one hop used"
    assert apps["dropgate-scan"].received(reply_id) == []


def test_a_malformed_reply_is_a_502_and_the_retry_gets_through(router) -> None:
    """Knative's filter answers a reply that does not decode with 502 (filter_handler.go): a failed attempt."""
    apps, url = router["apps"], router["url"]
    event_id = str(uuid.uuid4())
    apps["dropgate-scan"].plans[event_id] = lambda attempt, _r: (
        (200, {"ce-specversion": "1.0", "ce-id": "r"}, b"") if attempt == 1 else (204, {}, b""))
    event = CloudEvent({"id": event_id, "type": S3 + "ObjectCreated:Put", "source": "s", "bucket": UPLOADS})
    headers, body = to_binary(event)
    _post(url + "/", dict(headers), body)
    record = _settled(url, event_id)
    scan = next(d for d in record["deliveries"] if d["trigger"] == "dropgate-scan-put")
    assert [a["status"] for a in scan["attempts"]] == [502, 204] and scan["outcome"] == "delivered"
    assert scan["attempts"][0]["error"].startswith("malformed reply")
    assert all(entry["id"] != event_id for entry in _dead_letters(router["dead_letter"]))


def test_a_reply_that_is_not_a_cloudevent_is_dead_lettered(tmp_path: Path, subscribers) -> None:
    """A 2xx with a body that is no CloudEvent is a 502, as on Knative: retried, then dead-lettered."""
    (tmp_path / "m").mkdir()
    apps = {name: app for name, (app, _) in subscribers.items()}
    docs = [
        {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "metadata": {"name": "test"}},
        {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "metadata": {"name": "chatty"},
         "spec": {"broker": "test", "filter": {"attributes": {"type": "test.chatty"}},
                  "subscriber": {"ref": {"kind": "Service", "name": "dropgate-metadata"}},
                  "delivery": {"retry": 2, "backoffPolicy": "linear", "backoffDelay": "PT0.1S",
                               "deadLetterSink": {"uri": subscribers["dropgate-dead-letter"][1].url + "/dlq"}}}},
    ]
    (tmp_path / "m" / "objects.yaml").write_text(yaml.safe_dump_all(docs))
    services = {"dropgate-metadata": subscribers["dropgate-metadata"][1].url}
    child, url = _start_router(tmp_path, tmp_path / "m", services, name="router-chatty", namespace="default",
                               broker="test")
    try:
        chatty, quiet = str(uuid.uuid4()), str(uuid.uuid4())
        apps["dropgate-metadata"].plans[chatty] = lambda _n, _r: (200, {"Content-Type": "application/json"},
                                                                   b'{"expired": 2}')  # expire's old summary
        apps["dropgate-metadata"].plans[quiet] = lambda _n, _r: (200, {"Content-Type": "application/json"}, b"")
        _send(url, {"type": "test.chatty", "source": "s"}, event_id=chatty)
        _send(url, {"type": "test.chatty", "source": "s"}, event_id=quiet)
        (delivery,) = _settled(url, chatty)["deliveries"]
        assert [a["status"] for a in delivery["attempts"]] == [502, 502, 502] and delivery["outcome"] == "dead-lettered"
        assert len(apps["dropgate-metadata"].received(chatty)) == 3
        (line,) = [e for e in _dead_letters(tmp_path / "dead-letter.jsonl") if e["id"] == chatty]
        assert line["knativeerrorcode"] == 502
        assert base64.b64decode(line["knativeerrordata"]).startswith(b"received a non-empty response not recognized")
        (quiet_delivery,) = _settled(url, quiet)["deliveries"]  # an empty 2xx body is a fine answer
        assert quiet_delivery["outcome"] == "delivered" and len(quiet_delivery["attempts"]) == 1
    finally:
        child.stop()


def _slow_then(seconds: float, status: int) -> Plan:
    """The first attempt outlives `seconds`, every later one answers `status` at once."""
    def plan(attempt: int, _request: dict) -> tuple[int, dict, bytes]:
        if attempt == 1:
            time.sleep(seconds)
        return status, {}, b""
    return plan


def test_an_attempt_is_cut_where_the_services_timeouts_cut_it(tmp_path: Path, subscribers) -> None:
    """Knative's queue-proxy answers 504 once a request outlives its Revision's timeoutSeconds or
    responseStartTimeoutSeconds; the broker retries it. A Trigger's shorter delivery.timeout ends
    the attempt first, with no response at all (a dispatcher error), also retried."""
    (tmp_path / "m").mkdir()
    apps = {name: app for name, (app, _) in subscribers.items()}

    def service(name: str, **limits: int) -> dict:
        return {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": name},
                "spec": {"template": {"spec": {**limits, "containers": [{"image": "dropgate"}]}}}}

    def trigger(name: str, subscriber: str, **delivery: str) -> dict:
        return {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "metadata": {"name": name},
                "spec": {"broker": "test", "filter": {"attributes": {"type": f"test.{name}"}},
                         "subscriber": {"ref": {"kind": "Service", "name": subscriber}},
                         "delivery": {"retry": 1, "backoffPolicy": "linear", "backoffDelay": "PT0.1S", **delivery}}}
    docs = [{"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "metadata": {"name": "test"}},
            service("dropgate-scan", timeoutSeconds=1),
            service("dropgate-metadata", timeoutSeconds=30, responseStartTimeoutSeconds=1),
            service("dropgate-expire", timeoutSeconds=30),
            trigger("request", "dropgate-scan", timeout="PT10S"),  # the Service's 1 s comes first
            trigger("response-start", "dropgate-metadata"),
            trigger("trigger-first", "dropgate-expire", timeout="PT1S")]
    (tmp_path / "m" / "objects.yaml").write_text(yaml.safe_dump_all(docs))
    services = {name: subscribers[name][1].url for name in ("dropgate-scan", "dropgate-metadata", "dropgate-expire")}
    child, url = _start_router(tmp_path, tmp_path / "m", services, name="router-timeouts", namespace="default",
                               broker="test")
    try:
        sent = {}
        for name, app in (("request", "dropgate-scan"), ("response-start", "dropgate-metadata"),
                          ("trigger-first", "dropgate-expire")):
            sent[name] = event_id = str(uuid.uuid4())
            apps[app].plans[event_id] = _slow_then(2.5, 204)
            _send(url, {"type": f"test.{name}", "source": "s"}, event_id=event_id)
        for name in ("request", "response-start"):
            (delivery,) = _settled(url, sent[name])["deliveries"]
            assert [a["status"] for a in delivery["attempts"]] == [504, 204], (name, delivery)
            assert delivery["attempts"][0]["error"] == "cut off after 1 s by the Service's timeout"
            assert delivery["outcome"] == "delivered"
        (delivery,) = _settled(url, sent["trigger-first"])["deliveries"]
        assert [a["status"] for a in delivery["attempts"]] == [None, 204]
        assert delivery["attempts"][0]["error"].startswith("TimeoutError")
    finally:
        child.stop()


def test_ping_on_demand_reaches_expire(router) -> None:
    apps, url = router["apps"], router["url"]
    status, answer = _post(f"{url}/pingsources/dropgate-expire", {}, b"")
    assert status == 202
    record = _settled(url, answer["id"])
    assert record["origin"] == "ping:dropgate-expire"
    assert [d["trigger"] for d in record["deliveries"]] == ["dropgate-expire-ping"]
    (received,) = apps["dropgate-expire"].received(answer["id"])
    event = from_http(received["headers"], received["body"])
    assert event["type"] == PING_EVENT_TYPE
    assert event["source"] == PING_SOURCE
    assert received["headers"]["content-type"] == "application/json"
    assert json.loads(received["body"]) == {"task": "expire"}
    for name in ("dropgate-scan", "dropgate-metadata"):
        assert apps[name].received(answer["id"]) == []


def test_routing_comes_from_the_manifests_given(tmp_path: Path, subscribers) -> None:
    """Another manifest set, another routing: linear backoff, connection errors, a URI dead-letter sink."""
    (tmp_path / "m").mkdir()
    apps = {name: app for name, (app, _) in subscribers.items()}
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    dead_letter_uri = subscribers["dropgate-dead-letter"][1].url + "/dlq"
    docs = [
        {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "metadata": {"name": "test"}},
        {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "metadata": {"name": "to-metadata"},
         "spec": {"broker": "test", "filter": {"attributes": {"type": "test.linear"}},
                  "subscriber": {"ref": {"kind": "Service", "name": "dropgate-metadata"}},
                  "delivery": {"retry": 2, "backoffPolicy": "linear", "backoffDelay": "PT0.3S"}}},
        {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "metadata": {"name": "to-nowhere"},
         "spec": {"broker": "test", "filter": {"attributes": {"type": "test.refused"}},
                  "subscriber": {"ref": {"kind": "Service", "name": "closed"}},
                  "delivery": {"retry": 1, "deadLetterSink": {"uri": dead_letter_uri}}}},
    ]
    (tmp_path / "m" / "objects.yaml").write_text(yaml.safe_dump_all(docs))
    services = {"dropgate-metadata": subscribers["dropgate-metadata"][1].url, "closed": closed}
    child, url = _start_router(tmp_path, tmp_path / "m", services, name="router-custom", namespace="default",
                               broker="test")
    try:
        linear = str(uuid.uuid4())
        apps["dropgate-metadata"].plans[linear] = _answer(500, 500, 204)
        _send(url, {"type": "test.linear", "source": "s"}, event_id=linear)
        refused = _send(url, {"type": "test.refused", "source": "s"})
        unrouted = _send(url, {"type": S3 + "ObjectCreated:Put", "source": "s", "bucket": UPLOADS})

        record = _settled(url, linear)
        assert [a["status"] for a in record["deliveries"][0]["attempts"]][-1] == 204
        attempts = apps["dropgate-metadata"].received(linear)
        assert len(attempts) == 3
        assert attempts[2]["at"] - attempts[1]["at"] >= 0.28, "linear: 0, then 0.3 s"

        record = _settled(url, refused)
        (delivery,) = record["deliveries"]
        assert [a["status"] for a in delivery["attempts"]] == [None, None], "connection errors are retried"
        assert delivery["outcome"] == "dead-lettered"
        (line,) = [e for e in _dead_letters(tmp_path / "dead-letter.jsonl") if e["id"] == refused]
        assert line["knativeerrorcode"] == 500 and line["knativeerrordest"] == closed
        assert base64.b64decode(line["knativeerrordata"]).startswith(b"dispatch error:")
        (dead,) = apps["dropgate-dead-letter"].received(refused)
        assert dead["headers"]["ce-knativeerrorcode"] == "500"

        assert _settled(url, unrouted)["deliveries"] == [], "the dev Triggers are not loaded here"
    finally:
        child.stop()


# ---------------------------------------------------------------- identity, as Knative's authentication-oidc

def test_the_ingress_takes_only_authenticated_senders_its_policy_allows(router) -> None:
    issuer, _, audience = _SENDERS[router["url"]]
    event = CloudEvent({"id": str(uuid.uuid4()), "type": "t", "source": "s"}, None)
    headers, body = to_binary(event)
    assert _post(router["url"] + "/", dict(headers), body, signed=False)[0] == 401
    expired = issuer.mint(subject("dropgate", "dropgate-operator"), audience, ttl_seconds=-3600)
    assert _post(router["url"] + "/", {**headers, "Authorization": f"Bearer {expired}"}, body)[0] == 401
    other_audience = issuer.mint(subject("dropgate", "dropgate-operator"), "dropgate-scan")
    assert _post(router["url"] + "/", {**headers, "Authorization": f"Bearer {other_audience}"}, body)[0] == 401
    # Same namespace, valid token, but not in the dev overlay's EventPolicy: refused (no allow-same-namespace).
    stranger = issuer.mint(subject("dropgate", "default"), audience)
    status, answer = _post(router["url"] + "/", {**headers, "Authorization": f"Bearer {stranger}"}, body)
    assert status == 403 and "EventPolicy" in answer["detail"]
    assert _record(router["url"], event["id"]) is None  # never accepted
    assert _post(router["url"] + "/", dict(headers), body)[0] == 202


def test_deliveries_carry_the_triggers_token_for_the_subscribers_audience(router) -> None:
    import jwt

    issuer, _, _ = _SENDERS[router["url"]]
    event_id = _storage_event(router["url"], "ObjectCreated:Put", UPLOADS)
    _settled(router["url"], event_id)
    (delivery,) = router["apps"]["dropgate-scan"].received(event_id)
    token = delivery["headers"]["authorization"].removeprefix("Bearer ")
    claims = jwt.decode(token, issuer.key.private_key.public_key(), algorithms=["RS256"], audience="dropgate-scan",
                        issuer=CLUSTER_ISSUER)
    assert claims["sub"] == trigger_subject("dropgate", "dropgate-scan-put")
