"""The request plumbing every function shares: routing, JSON errors, CloudEvent parsing."""

import json

import flask
import pytest

from shared.platform.errors import TooManyRequests
from shared.platform.http import CloudEventApp, HttpApp, Route, json_response, read_json

app = flask.Flask(__name__)


def call(handler, method, path, **kwargs):
    with app.test_request_context(path, method=method, **kwargs):
        response = handler(flask.request)
        return response.status_code, response.headers, response.get_data()


def echo_route(request, id):  # noqa: A002 - route parameter name
    return json_response(200, {"id": id, "body": read_json(request)})


def limited(request):
    raise TooManyRequests("10 requests a minute", retry_after_seconds=7)


http_app = HttpApp([Route("POST", "/uploads/{id}", echo_route), Route("GET", "/limited", limited)],
                   health_checks={"always": lambda: None})


def test_route_parameters_and_json_body():
    status, _, body = call(http_app, "POST", "/uploads/abc", json={"a": 1})
    assert status == 200
    assert json.loads(body) == {"id": "abc", "body": {"a": 1}}


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "error"), [
    ("GET", "/nowhere", {}, 404, "not_found"),
    ("GET", "/uploads/abc", {}, 405, "method_not_allowed"),
    ("POST", "/uploads/abc", {"data": "{not json", "content_type": "application/json"}, 400, "bad_request"),
    ("POST", "/uploads/abc", {"data": "[1, 2]", "content_type": "application/json"}, 400, "bad_request"),
    ("POST", "/uploads/abc", {"data": "a=b", "content_type": "text/plain"}, 415, "unsupported_media_type"),
    ("POST", "/uploads/abc", {"data": "{" + " " * 300_000 + "}", "content_type": "application/json"},
     413, "payload_too_large"),
    ("GET", "/limited", {}, 429, "too_many_requests"),
])
def test_errors_are_json_with_a_reason(method, path, kwargs, status, error):
    got_status, headers, body = call(http_app, method, path, **kwargs)
    assert got_status == status
    assert headers["Content-Type"] == "application/json"
    parsed = json.loads(body)
    assert parsed["error"] == error
    assert parsed["detail"]
    if status == 429:
        assert headers["Retry-After"] == "7"


def test_health_reports_each_dependency_and_logs_why(caplog):
    def broken():
        raise ConnectionRefusedError("password=hunter2@db.internal:5432 refused")

    with caplog.at_level("WARNING", logger="dropgate.web"):
        status, _, body = call(HttpApp([], {"db": lambda: None, "s3": broken}), "GET", "/healthz")
    assert status == 503
    # The caller learns which dependency is down, never the exception's text (hosts, credentials...).
    assert json.loads(body)["checks"] == {"db": "ok", "s3": "unavailable"}
    assert "hunter2" not in body.decode() if isinstance(body, bytes) else "hunter2" not in body
    assert any("ConnectionRefusedError" in record.getMessage() or "ConnectionRefusedError" in str(record.__dict__)
               for record in caplog.records)


def test_health_shows_a_not_ready_reason_dropgate_wrote_and_nothing_else():
    from shared.platform.errors import NotReady

    def old_schema():
        raise NotReady("schema at version 5, this code needs 6: run the migration Job")

    def driver_failure():
        raise RuntimeError("connection to db.internal failed for user=admin")

    status, _, body = call(HttpApp([], {"database": old_schema, "s3": driver_failure}), "GET", "/healthz")
    assert status == 503
    assert json.loads(body)["checks"] == {
        "database": "unavailable: schema at version 5, this code needs 6: run the migration Job",
        "s3": "unavailable"}


@pytest.mark.parametrize("kind", ["http", "cloudevent"])
def test_livez_answers_alive_without_asking_any_dependency(kind):
    asked = []

    def dependency():
        asked.append(1)
        raise ConnectionRefusedError("down")

    checks = {"database": dependency}
    app_under_test = (HttpApp([], checks) if kind == "http"
                      else CloudEventApp(lambda event: None, checks, senders=any_sender))
    status, headers, body = call(app_under_test, "GET", "/livez")
    assert (status, json.loads(body), headers["Content-Type"]) == (200, {"status": "alive"}, "application/json")
    assert asked == []
    assert call(app_under_test, "GET", "/healthz")[0] == 503 and asked == [1]


def any_sender(authorization: str | None) -> str:
    """The sender check of these unit tests of the app itself; tests/test_event_auth.py checks the real one."""
    return "test-sender"


def test_an_unauthenticated_cloudevent_is_refused_before_it_is_read():
    from shared.platform.errors import Forbidden, Unauthorized

    seen = []

    def refuse(authorization: str | None) -> str:
        if authorization is None:
            raise Unauthorized("no token")
        raise Forbidden("not you")

    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-type": "t", "ce-source": "s",
               "content-type": "application/json"}
    app = CloudEventApp(seen.append, {}, senders=refuse)
    status, _, body = call(app, "POST", "/", headers=headers, data="{oops")  # malformed too: auth comes first
    assert (status, json.loads(body)["error"]) == (401, "unauthorized")
    status, _, _ = call(app, "POST", "/", headers={**headers, "Authorization": "Bearer x"}, data='{"k": 1}')
    assert status == 403 and seen == []


def test_cloudevent_in_binary_mode_reaches_the_handler_and_the_reply_goes_back_binary():
    from cloudevents.http import CloudEvent

    seen = []

    def handler(event):
        seen.append(event)
        return CloudEvent({"type": "reply.type", "source": "test"}, {"ok": True})

    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-type": "t", "ce-source": "s",
               "content-type": "application/json"}
    status, reply_headers, body = call(CloudEventApp(handler, {}, senders=any_sender), "POST", "/", headers=headers, data='{"k": 1}')
    assert status == 200
    assert seen[0]["id"] == "1" and seen[0].data == {"k": 1}
    assert reply_headers["ce-type"] == "reply.type"
    assert json.loads(body) == {"ok": True}


@pytest.mark.parametrize("headers", [
    {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s"},            # no type
    {"content-type": "application/cloudevents+json"},                      # structured, not JSON
    {"ce-specversion": "0.1", "ce-id": "1", "ce-type": "t", "ce-source": "s"},  # unknown version
])
def test_malformed_cloudevents_get_400_with_a_reason(headers):
    status, _, body = call(CloudEventApp(lambda e: None, {}, senders=any_sender), "POST", "/", headers=headers, data="{oops")
    assert status == 400
    assert json.loads(body)["detail"].startswith("malformed CloudEvent")
