"""storage_events as a real functions-framework process, and SeaweedFS -> adapter -> sink -> metadata end to end.

The sink is a small capture server standing in for the broker ingress (the local router is
someone else's): it records what the adapter POSTs and can fail on purpose, or forward each
event to the metadata function as a Trigger would.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import psycopg
import pytest
from cloudevents.http import CloudEvent, from_http

from dropgate_local.client import call
from dropgate_local.identity import broker_audience, sink_binding_subject
from dropgate_local.processes import free_port
from dropgate_local.stack import LocalStack, StackPorts
from events.types import StorageObjectEvent
from shared.platform import tracing
from shared.platform.auth import bearer_token
from tests.conftest import as_broker
from tests.events import as_plain, load_expected, load_input

WAIT_SECONDS = 45


@dataclass
class Captured:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    reply: tuple[int, dict[str, str], bytes] | None = None  # the subscriber's answer, when forwarding

    @property
    def event(self) -> CloudEvent:
        return from_http(self.headers, self.body)


class CaptureSink:
    """Records every POST; answers `status`, or forwards to a subscriber and answers by its result."""

    def __init__(self) -> None:
        self.received: list[Captured] = []
        self.status = 202
        self.forward_to: str | None = None
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                captured = Captured(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                status = sink.status
                if sink.forward_to and status < 300:
                    captured.reply = sink._forward(captured)
                    status = 202 if 200 <= captured.reply[0] < 300 else 502
                with sink._lock:
                    sink.received.append(captured)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def start(self) -> CaptureSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.received.clear()
        self.status = 202

    def _forward(self, captured: Captured) -> tuple[int, dict[str, str], bytes]:
        headers = {k: v for k, v in captured.headers.items() if k.startswith("ce-") or k == "content-type"}
        headers.update(self.forward_headers())  # as the broker: with the Trigger's token
        reply = call("POST", self.forward_to, data=captured.body, headers=headers, timeout=30)
        return reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.body

    def wait_for(self, predicate: Callable[[Captured], bool], timeout: float = WAIT_SECONDS) -> Captured:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for captured in self.received:
                    if predicate(captured):
                        return captured
            time.sleep(0.1)
        types = [c.headers.get("ce-type") for c in self.received]
        raise AssertionError(f"nothing matching arrived in {timeout}s; got {types}")


def post(url: str, body: bytes, token: str | None) -> Any:
    return call("POST", url, data=body, headers={"Content-Type": "application/json"}, token=token)


def with_dropgate_buckets(body: bytes) -> bytes:
    """A SeaweedFS recording (buckets dg-*) as if made with the stack's bucket names."""
    return body.replace(b"/buckets/dg-uploads", b"/buckets/dropgate-uploads").replace(
        b"/buckets/dg-quarantine", b"/buckets/dropgate-quarantine")


# -- the adapter as a process, with the capture sink as K_SINK --

@pytest.fixture(scope="module")
def capture():
    sink = CaptureSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def sink(capture):
    capture.reset()
    yield capture
    capture.reset()


def start_adapter(stack: LocalStack, label: str, **env: str) -> tuple[str, Any]:
    port = free_port()
    child = stack.start_function("storage_events", port=port, label=label, extra_env=env)
    return f"http://127.0.0.1:{port}", child


@pytest.fixture(scope="module")
def adapter(stack, capture):
    url, child = start_adapter(stack, "storage_events-capture", K_SINK=capture.url)
    yield url
    child.stop()


@pytest.fixture(scope="module")
def token(stack):
    return stack.secrets.webhook_token


@pytest.mark.parametrize("path", ["/minio", "/seaweedfs"])
def test_a_missing_or_wrong_token_is_refused_with_401(adapter, sink, token, path):
    body = load_input("minio", "docs-put")
    for sent in (None, token + "x", ""):
        reply = post(adapter + path, body, sent)
        assert reply.status == 401, reply.body
        assert reply.json()["error"] == "unauthorized"
    reply = call("POST", adapter + path, data=body, headers={"Authorization": f"Basic {token}"})
    assert reply.status == 401
    assert sink.received == []


def test_a_malformed_body_is_refused_with_400_naming_the_problems(adapter, sink, token):
    reply = post(adapter + "/minio", b'{"Records": [{"eventName": "s3:ObjectCreated:Put"}]}', token)
    assert reply.status == 400
    detail = reply.json()["detail"]
    assert "Records[0].eventTime" in detail and "Records[0].s3.object.key" in detail
    reply = post(adapter + "/seaweedfs", b"not json", token)
    assert reply.status == 400 and "not JSON" in reply.json()["detail"]
    assert sink.received == []


def test_minio_notifications_reach_the_sink_as_binary_cloudevents(adapter, sink, token):
    reply = post(adapter + "/minio", load_input("minio", "several-records"), token)
    assert reply.status == 200, reply.body
    assert reply.json() == {"accepted": 2, "ignored": 1}
    assert len(sink.received) == 2
    for captured, expected in zip(sink.received, load_expected("minio", "several-records"), strict=True):
        assert captured.headers["content-type"] == "application/json"
        assert captured.headers["ce-specversion"] == "1.0"
        assert json.loads(captured.body) == expected["data"]  # binary mode: the body is the data
        event = StorageObjectEvent.from_cloudevent(captured.event)
        # Every event leaves with the distributed-tracing extension (shared/platform/tracing.py); the pairs predate it.
        assert tracing.parse_traceparent(captured.headers["ce-traceparent"]) is not None
        assert as_plain(replace(event, traceparent=None).to_cloudevent()) == expected


def test_unicode_keys_travel_percent_encoded_in_ce_headers(adapter, sink, token):
    assert post(adapter + "/minio", load_input("minio", "multipart-complete-encoded-key"), token).status == 200
    (captured,) = sink.received
    assert captured.headers["ce-subject"] == "uploads/2026/11/25/Q3%20report+final%20%C3%BC%20%E2%82%AC.pdf"
    assert captured.headers["ce-bucket"] == "dropgate-uploads"
    assert captured.headers["ce-type"] == "com.amazonaws.s3.ObjectCreated:CompleteMultipartUpload"
    assert StorageObjectEvent.from_cloudevent(captured.event).key == "uploads/2026/11/25/Q3 report+final ü €.pdf"


def test_seaweedfs_notifications_are_adapted_and_filtered(adapter, sink, token):
    reply = post(adapter + "/seaweedfs", with_dropgate_buckets(load_input("seaweedfs", "multipart-complete")), token)
    assert reply.json() == {"accepted": 1, "ignored": 0}
    for ignored in ("directory-created", "multipart-part-created", "tagging"):
        reply = post(adapter + "/seaweedfs", with_dropgate_buckets(load_input("seaweedfs", ignored)), token)
        assert (reply.status, reply.json()) == (200, {"accepted": 0, "ignored": 1})
    reply = post(adapter + "/seaweedfs", load_input("seaweedfs", "put-empty"), token)  # bucket dg-uploads: not ours
    assert reply.json() == {"accepted": 0, "ignored": 1}
    (captured,) = sink.received
    assert captured.headers["ce-type"] == "com.amazonaws.s3.ObjectCreated:CompleteMultipartUpload"
    assert captured.headers["ce-source"] == "seaweedfs:s3..dropgate-uploads"


def test_a_sink_answering_5xx_makes_storage_retry_and_the_retry_resends_the_same_ids(adapter, sink, token):
    body = load_input("minio", "several-records")
    sink.status = 500
    reply = post(adapter + "/minio", body, token)
    assert reply.status == 502, reply.body
    assert reply.json()["error"] == "bad_gateway"
    first_ids = [c.headers["ce-id"] for c in sink.received]
    sink.status = 202
    assert post(adapter + "/minio", body, token).status == 200
    retried_ids = [c.headers["ce-id"] for c in sink.received][len(first_ids):]
    assert first_ids == retried_ids[:1] and len(retried_ids) == 2  # stopped at the first failure, then all


def test_a_sink_that_is_down_answers_503(stack, token):
    url, child = start_adapter(stack, "storage_events-sink-down", K_SINK=f"http://127.0.0.1:{free_port()}/")
    try:
        reply = post(url + "/minio", load_input("minio", "several-records"), token)
        assert reply.status == 503, reply.body
        assert reply.json()["error"] == "dependency_unavailable"
        assert "unavailable" in reply.json()["detail"]
    finally:
        child.stop()


def test_without_token_or_sink_configured_notifications_are_refused_with_503(stack, capture, token):
    url, child = start_adapter(stack, "storage_events-no-token", K_SINK=capture.url, DROPGATE_WEBHOOK_TOKEN="")
    try:
        reply = post(url + "/minio", load_input("minio", "docs-put"), token)
        assert reply.status == 503 and "DROPGATE_WEBHOOK_TOKEN is not set" in reply.json()["detail"]
    finally:
        child.stop()
    url, child = start_adapter(stack, "storage_events-no-sink", K_SINK="")
    try:
        reply = post(url + "/minio", load_input("minio", "several-records"), token)
        assert reply.status == 503 and "K_SINK is not set" in reply.json()["detail"]
        reply = post(url + "/minio", load_input("minio", "other-bucket"), token)
        assert reply.json() == {"accepted": 0, "ignored": 1}  # nothing to send: nothing lost
        assert call("GET", url + "/healthz").status == 200  # it serves; it just has nowhere to send
    finally:
        child.stop()


def test_an_oversized_body_is_refused_with_413(adapter, sink, token):
    reply = post(adapter + "/seaweedfs", b" " * (16 * 1024 * 1024 + 1), token)
    assert reply.status == 413
    assert sink.received == []


# -- end to end: a real put into SeaweedFS -> filer webhook -> adapter -> sink -> metadata -> row --

@dataclass
class EndToEnd:
    stack: LocalStack
    sink: CaptureSink
    database_url: str
    s3: Any

    def new_upload(self, key: str) -> uuid.UUID:
        upload_id = uuid.uuid4()
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO uploads (id, owner, bucket, object_key, filename, content_type, declared_size,"
                " part_size, part_count, expires_at) VALUES (%s, 'alice', 'dropgate-uploads', %s, 'f.pdf',"
                " 'application/pdf', 1234, 8388608, 1, now() + interval '30 days')", (upload_id, key))
        return upload_id

    def row(self, sql: str, *params: Any) -> tuple | None:
        with psycopg.connect(self.database_url) as conn:
            return conn.execute(sql, params).fetchone()

    def wait_row(self, sql: str, *params: Any, expect: Callable[[tuple | None], bool]) -> tuple:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            found = self.row(sql, *params)
            if expect(found):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"row never matched; last: {found}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, database_url):
    from shared.platform.storage import create_s3_client

    sink = CaptureSink().start()
    local = LocalStack(tmp_path_factory.mktemp("events-e2e"), StackPorts.allocate())
    try:
        local.start_dev_oidc()  # the issuer of event senders' tokens, as the API server is on a cluster
        local.start_function("storage_events", extra_env={"K_SINK": sink.url})
        local.start_function("metadata", extra_env={"DATABASE_URL": database_url})
        sink.forward_to = local.ports.function_url("metadata")
        sink.forward_headers = lambda: as_broker("metadata", local)
        local.start_storage()
        yield EndToEnd(local, sink, database_url, create_s3_client(local.storage_settings()))
    finally:
        local.stop()
        sink.stop()


def test_a_put_into_seaweedfs_reaches_the_sink_and_the_metadata_row(e2e):
    key = f"uploads/2026/11/25/{uuid.uuid4()}"
    upload_id = e2e.new_upload(key)
    etag = e2e.s3.put_object(Bucket="dropgate-uploads", Key=key, Body=b"%PDF-1.7 " + b"x" * 1225,
                             ContentType="application/pdf")["ETag"].strip('"')

    captured = e2e.sink.wait_for(lambda c: c.headers.get("ce-subject") == key)
    event = StorageObjectEvent.from_cloudevent(captured.event)
    assert event.type == "com.amazonaws.s3.ObjectCreated:Put"
    assert (event.bucket, event.size, event.etag, event.content_type) == ("dropgate-uploads", 1234, etag,
                                                                         "application/pdf")
    assert captured.headers["ce-source"] == "seaweedfs:s3..dropgate-uploads"
    # storage_events presents its SinkBinding's token, for the broker's audience (Knative's /oidc/token).
    claims = jwt.decode(bearer_token(captured.headers.get("authorization")), options={"verify_signature": False})
    assert (claims["aud"], claims["sub"]) == (broker_audience("dropgate", "dropgate"),
                                              sink_binding_subject("dropgate", "dropgate-storage-events-sink"))
    assert captured.reply[0] == 200 and captured.reply[1]["ce-type"] == "dev.dropgate.metadata.recorded"
    assert captured.reply[1]["ce-subject"] == str(upload_id)

    status, size, stored_etag, content_type = e2e.wait_row(
        "SELECT status, stored_size, etag, stored_content_type FROM uploads WHERE id = %s", upload_id,
        expect=lambda r: r is not None and r[0] == "uploaded")
    assert (size, stored_etag, content_type) == (1234, etag, "application/pdf")

    e2e.s3.delete_object(Bucket="dropgate-uploads", Key=key)
    removed = e2e.sink.wait_for(lambda c: c.headers.get("ce-subject") == key
                                and c.headers["ce-type"] == "com.amazonaws.s3.ObjectRemoved:Delete")
    assert removed.reply[0] == 200
    present, last_type = e2e.row("SELECT present, last_event_type FROM storage_objects"
                                 " WHERE bucket = 'dropgate-uploads' AND object_key = %s", key)
    assert (present, last_type) == (False, "com.amazonaws.s3.ObjectRemoved:Delete")


def test_a_multipart_upload_arrives_once_completed_and_never_as_parts(e2e):
    key = f"uploads/2026/11/25/{uuid.uuid4()}"
    upload_id = e2e.new_upload(key)
    started = e2e.s3.create_multipart_upload(Bucket="dropgate-uploads", Key=key, ContentType="application/pdf")
    parts = []
    for number, body in ((1, b"a" * (5 * 1024 * 1024)), (2, b"b" * 100)):
        part = e2e.s3.upload_part(Bucket="dropgate-uploads", Key=key, UploadId=started["UploadId"],
                                  PartNumber=number, Body=body)
        parts.append({"PartNumber": number, "ETag": part["ETag"]})
    done = e2e.s3.complete_multipart_upload(Bucket="dropgate-uploads", Key=key, UploadId=started["UploadId"],
                                            MultipartUpload={"Parts": parts})
    captured = e2e.sink.wait_for(lambda c: c.headers.get("ce-subject") == key)
    event = StorageObjectEvent.from_cloudevent(captured.event)
    assert event.type == "com.amazonaws.s3.ObjectCreated:CompleteMultipartUpload"
    assert event.etag == done["ETag"].strip('"') and event.etag.endswith("-2")
    assert event.size == 5 * 1024 * 1024 + 100
    e2e.wait_row("SELECT status FROM uploads WHERE id = %s", upload_id, expect=lambda r: r == ("uploaded",))
    time.sleep(1)  # the staging area's deletions come after the completion
    subjects = [c.headers.get("ce-subject", "") for c in e2e.sink.received]
    assert not any(".uploads" in s for s in subjects)
    assert subjects.count(key) == 1
