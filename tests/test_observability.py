"""Tracing, logs and metrics (issue 11), on the real local stack.

One upload, started with a W3C `traceparent` of the test's own, must be findable by that trace
id in the logs of presign, the storage adapter, scan and metadata, in the CloudEvents the broker
routed and in the audit log; no log may hold a signed URL or a secret; and the functions'
/metrics must count what happened.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import time
import urllib.request
from pathlib import Path

import flask
import psycopg
import pytest
from cloudevents.http import CloudEvent
from prometheus_client.parser import text_string_to_metric_families

from dropgate_local.client import DropgateClient, call
from dropgate_local.processes import free_port
from shared.platform import logs, metrics, tracing
from shared.platform.http import CloudEventApp, HttpApp, Route, json_response
from tests.test_pipeline import FINAL, dev_token, router_events, wait_for_status  # noqa: F401 - fixture
from tests.test_presign import payload

TRACE_ID = secrets.token_hex(16)
INCOMING = f"00-{TRACE_ID}-{secrets.token_hex(8)}-01"
LOGGED_FUNCTIONS = ("presign", "storage_events", "scan", "metadata")


# ---------------------------------------------------------------------------------------------- pure logic

def test_a_span_continues_a_valid_traceparent_and_starts_a_trace_otherwise() -> None:
    with tracing.span("child", parent=INCOMING) as child:
        assert f"{child.trace_id:032x}" == TRACE_ID
        assert f"{child.span_id:016x}" != INCOMING.split("-")[2]  # a span of its own
        assert tracing.current_traceparent() == tracing.format_traceparent(child)
        with tracing.span("grandchild") as grandchild:
            assert grandchild.trace_id == child.trace_id and grandchild.span_id != child.span_id
    for malformed in (None, "", "garbage", f"00-{'0' * 32}-{'1' * 16}-01", f"00-{TRACE_ID}-{'0' * 16}-01"):
        with tracing.span("root", parent=malformed) as root:
            assert root.is_valid and f"{root.trace_id:032x}" != TRACE_ID
    assert tracing.current_context() is None  # nothing leaks out of a block


def test_events_carry_the_trace_and_inputs_are_never_changed() -> None:
    event = CloudEvent({"type": "t", "source": "s", "id": "1"}, {"a": 1})
    with tracing.span("emit", parent=INCOMING):
        stamped = tracing.with_traceparent(event)
    assert "traceparent" not in event.get_attributes()
    assert tracing.trace_id_of(stamped["traceparent"]) == TRACE_ID
    other = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    same_trace = f"00-{TRACE_ID}-{secrets.token_hex(8)}-01"
    # The extension (the upload's trace) wins over an unrelated transport header...
    assert tracing.parent_of_event(stamped, other) == stamped["traceparent"]
    # ...and a header of the same trace (e.g. the Broker's span) is the closer parent.
    assert tracing.parent_of_event(stamped, same_trace) == same_trace
    assert tracing.parent_of_event(event, other) == other


def test_log_lines_name_the_trace_the_bound_ids_and_never_a_signature(caplog) -> None:
    formatter = logs.JsonFormatter()
    record = logging.LogRecord("dropgate.test", logging.INFO, __file__, 1, "decided", None, None)
    record.fields = {"outcome": "signed", "url": "https://s3/b/k?X-Amz-Credential=AK%2F1&X-Amz-Signature=" + "ab" * 32}
    with tracing.span("request", parent=INCOMING), logs.context(event_id="e-1", upload_id=None):
        logs.bind(upload_id="u-1")
        line = json.loads(formatter.format(record))
    assert (line["trace_id"], line["event_id"], line["upload_id"], line["outcome"]) == (TRACE_ID, "e-1", "u-1",
                                                                                         "signed")
    assert "ab" * 32 not in line["url"] and "X-Amz-Signature=[redacted]" in line["url"]
    assert "AK%2F1" not in line["url"]
    assert "event_id" not in json.loads(formatter.format(record))  # the context ended with its block


def test_metrics_route_on_both_app_kinds_and_its_optional_token() -> None:
    app = flask.Flask(__name__)
    http_app = HttpApp([Route("GET", "/x", lambda request: json_response(200, {}))], health_checks={})
    event_app = CloudEventApp(lambda event: None, health_checks={}, senders=lambda authorization: "test-sender")
    try:
        for handler in (http_app, event_app):
            with app.test_request_context("/metrics", method="GET"):
                response = handler(flask.request)
            assert response.status_code == 200 and b"dropgate_scan_verdicts_total" in response.get_data()
        metrics.configure("metrics-secret")
        with app.test_request_context("/metrics", method="GET"):
            assert http_app(flask.request).status_code == 401
        with app.test_request_context("/metrics", method="GET", headers={"Authorization": "Bearer metrics-secret"}):
            assert http_app(flask.request).status_code == 200
    finally:
        metrics.configure(None)
    with app.test_request_context("/x", method="GET", headers={"traceparent": INCOMING}):
        response = http_app(flask.request)
    assert tracing.trace_id_of(response.headers["traceresponse"]) == TRACE_ID


# ---------------------------------------------------------------------------------------------- the real stack

def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a /metrics answer: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:  # noqa: S310 - loopback
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def traced_upload(presign: str, token: str, data: bytes, content_type: str, filename: str,
                  traceparent: str) -> tuple[dict, list[str]]:
    """The browser's upload, with a traceparent on the request that creates it; also the signed URLs it got."""
    client = DropgateClient(presign, token)
    created = client.create(filename=filename, size=len(data), content_type=content_type,
                            sha256=hashlib.sha256(data).hexdigest(), headers={"traceparent": traceparent})
    assert created.status == 201, created.body
    assert tracing.trace_id_of(created.header("traceresponse")) == tracing.trace_id_of(traceparent)
    record = created.json()
    etags, urls = client.upload_parts(record, data)
    done = client.complete(record["id"], etags)
    assert done.status == 200, done.body
    return record, urls


def log_lines(path: Path) -> list[dict]:
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            parsed = json.loads(raw)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            lines.append(parsed)
    return lines


def wait_for(condition, timeout: float = 120, what: str = "condition"):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def traced(running_functions, dev_token, stack) -> dict:  # noqa: F811 - the fixture imported above
    """One clean upload made under TRACE_ID, with the metrics of scan and presign before and after it."""
    presign, token = running_functions["presign"], dev_token("observability-alice")
    before = {name: scrape(running_functions[name]) for name in ("scan", "presign")}
    data = b"%PDF-1.7\n" + payload(9 * 1024 * 1024, seed=111)
    record, urls = traced_upload(presign, token, data, "application/pdf", "traced.pdf", INCOMING)
    final = wait_for_status(presign, token, record["id"], FINAL)
    assert final["status"] == "clean"
    # metadata may answer after scan: wait until it recorded the object too.
    wait_for(lambda: any(line.get("upload_id") == record["id"] and line.get("message") == "storage event recorded"
                         for line in log_lines(stack.logs_dir / "metadata.log")), what="metadata's log line")
    after = {name: scrape(running_functions[name]) for name in ("scan", "presign")}
    return {"record": record, "urls": urls, "token": token, "before": before, "after": after}


def test_the_uploads_trace_id_is_in_the_logs_of_presign_the_adapter_scan_and_metadata(traced, stack) -> None:
    upload_id, key = traced["record"]["id"], traced["record"]["key"]
    traced_lines = {name: [line for line in log_lines(stack.logs_dir / f"{name}.log")
                           if line.get("trace_id") == TRACE_ID] for name in LOGGED_FUNCTIONS}
    for name, lines in traced_lines.items():
        assert lines, f"no log line of {name} names trace {TRACE_ID}"
    decisions = {
        "presign": lambda line: line["message"] == "upload created" and line.get("upload_id") == upload_id,
        "storage_events": lambda line: line["message"] == "storage event forwarded" and line.get("key") == key,
        "scan": lambda line: line["message"] == "scan verdict" and line.get("upload_id") == upload_id,
        "metadata": lambda line: line["message"] == "storage event recorded" and line.get("upload_id") == upload_id,
    }
    for name, decision in decisions.items():
        matching = [line for line in traced_lines[name] if decision(line)]
        assert matching, f"{name} logged no decision about {upload_id} under trace {TRACE_ID}"
        assert all(line.get("outcome") for line in matching), f"{name}: a decision without its outcome"
        if name in ("scan", "metadata", "storage_events"):
            assert all(line.get("event_id") for line in matching), f"{name}: a decision without its event id"


def test_every_event_about_the_upload_carries_its_trace(traced, stack, database_url) -> None:
    record = traced["record"]
    seen = [e for e in router_events(stack) if e.get("subject") in (record["key"], record["id"])]
    types = {e["type"]: e for e in seen}
    for wanted in ("com.amazonaws.s3.ObjectCreated:CompleteMultipartUpload", "dev.dropgate.scan.clean",
                   "dev.dropgate.metadata.recorded"):
        assert wanted in types, f"{wanted} not routed; saw {sorted(types)}"
    for event in seen:
        assert tracing.trace_id_of(event["attributes"].get("traceparent")) == TRACE_ID, event["type"]
    # Each hop is a span of its own: the storage event's parent is the adapter's span, not presign's.
    parents = {e["attributes"]["traceparent"].split("-")[2] for e in seen}
    assert INCOMING.split("-")[2] not in parents and len(parents) >= 2
    with psycopg.connect(database_url) as conn:
        actions = dict(conn.execute("SELECT action, trace_id FROM audit_log WHERE upload_id = %s",
                                    (record["id"],)).fetchall())
    for action in ("upload.created", "storage.object_recorded", "scan.verdict"):
        assert actions.get(action) == TRACE_ID, (action, actions)


def test_no_log_holds_a_signed_url_or_a_secret(traced, stack) -> None:
    signatures = [re.search(r"X-Amz-Signature=([0-9a-f]{64})", url).group(1) for url in traced["urls"]]
    assert signatures
    forbidden = [*signatures, stack.secrets.s3_secret_key, stack.secrets.webhook_token, traced["token"]]
    checked = 0
    for path in sorted(stack.logs_dir.glob("*.log")):
        text = path.read_text(errors="replace")
        checked += 1
        for secret in forbidden:
            assert secret not in text, f"{path.name} holds a secret or a signature"
        assert not re.search(r"X-Amz-Signature=[0-9a-fA-F]{16,}", text), f"{path.name} holds a signed URL"
    assert checked >= len(LOGGED_FUNCTIONS)


def test_the_metrics_endpoints_count_the_upload_and_its_verdict(traced, running_functions, stack) -> None:
    before, after = traced["before"], traced["after"]

    def delta(function: str, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[function].get(key, 0) - before[function].get(key, 0)

    assert delta("scan", "dropgate_scan_verdicts_total", verdict="clean") >= 1
    assert delta("scan", "dropgate_scan_bytes_total") >= 9 * 1024 * 1024
    assert delta("scan", "dropgate_scan_duration_seconds_count") >= 1
    assert delta("presign", "dropgate_uploads_created_total") >= 1
    assert delta("presign", "dropgate_uploads_completed_total") >= 1
    assert delta("presign", "dropgate_part_urls_signed_total") >= traced["record"]["part_count"]
    # Every function serves the same text format; the local broker counts its deliveries.
    for name, url in running_functions.items():
        assert ("dropgate_scan_verdicts_total", (("verdict", "clean"),)) in scrape(url), name
    router = scrape(f"http://127.0.0.1:{stack.ports.router}")
    assert any(name == "dropgate_router_deliveries_total" and dict(labels).get("outcome") == "delivered"
               for name, labels in router)


def test_an_exporter_records_the_spans_when_configured(stack, running_functions) -> None:
    """OTEL_TRACES_EXPORTER=console: the SDK exports each span (one JSON line) into the function's log."""
    port = free_port()
    child = stack.start_function("presign", port=port, extra_env={"OTEL_TRACES_EXPORTER": "console"},
                                 label="presign-console-exporter")
    try:
        reply = call("GET", f"http://127.0.0.1:{port}/files", headers={"traceparent": INCOMING})
        assert reply.status == 401  # no token: refused, but inside the request's span all the same
        assert tracing.trace_id_of(reply.header("traceresponse")) == TRACE_ID

        def exported() -> list[dict]:
            return [line for line in log_lines(child.log_path)
                    if line.get("context", {}).get("trace_id") == f"0x{TRACE_ID}"]
        spans = wait_for(exported, timeout=60, what="the exported span")
        assert spans[0]["kind"] == "SpanKind.SERVER"
        assert spans[0]["parent_id"] == f"0x{INCOMING.split('-')[2]}"
    finally:
        child.stop()
        stack.children.pop("presign-console-exporter", None)
