"""The HTTP side of every function: routing, JSON bodies, errors, health.

functions-framework hands each function one `flask.Request`; this module turns
a small route table into that one callable. Every function, HTTP or
CloudEvent, answers `GET /healthz` (Knative's readiness probe) with the state
of the services it really depends on, `GET /livez` (the liveness probe) without
asking any of them, and every error leaves as `{"error", "detail"}` JSON with
the status its exception class carries.

Both kinds also answer `GET /metrics` (Prometheus text, shared/platform/metrics.py), and run each
request or event in a span of its trace (shared/platform/tracing.py): an HTTP request continues
its `traceparent` header and gets a `traceresponse` header back; an event continues its
`traceparent` extension attribute, and a reply event carries the handler's own.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import flask
import werkzeug.exceptions
from cloudevents.conversion import to_binary
from cloudevents.exceptions import GenericException as CloudEventError
from cloudevents.http import CloudEvent, from_http
from opentelemetry.trace import SpanKind

from events.wire import InvalidEvent
from shared.platform import metrics, tracing
from shared.platform.clamd import ScannerUnavailable
from shared.platform.errors import (
    ApiError,
    BadRequest,
    DependencyUnavailable,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    NotReady,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from shared.platform.logs import context, log_event

logger = logging.getLogger("dropgate.web")

MAX_JSON_BODY = 256 * 1024  # API bodies are small; a part list of 10,000 entries fits
HEALTH_PATH = "/healthz"
LIVENESS_PATH = "/livez"

HealthCheck = Callable[[], "str | None"]  # raises when the dependency is not usable; may return a note for /healthz


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> flask.Response:
    response = flask.Response(json.dumps(body, default=str), status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def error_response(error: ApiError) -> flask.Response:
    return json_response(error.status, {"error": error.error, "detail": error.detail}, error.headers)


def client_address(request: flask.Request, trusted_proxy_hops: int = 0) -> str | None:
    """The client's IP address for the audit log: the peer, or with proxies in front, the address the
    outermost trusted proxy saw.

    Each proxy appends the address it was called from to X-Forwarded-For, so only the rightmost
    `trusted_proxy_hops` entries were written by someone we trust; whatever a client puts further left
    is its own claim and is ignored (the leftmost entry is the easiest to forge). With no trusted
    proxy (the default) the header is ignored altogether. Only an address that parses as one is
    kept; anything else is None (it is never echoed back).
    """
    chain = [hop.strip() for hop in request.headers.get("X-Forwarded-For", "").split(",") if hop.strip()]
    chain.append(request.remote_addr or "")
    address = chain[max(0, len(chain) - 1 - trusted_proxy_hops)]
    try:
        ipaddress.ip_address(address or "")
    except ValueError:
        return None
    return address


def require_same_origin_json(request: flask.Request, allowed_origins: tuple[str, ...], *,
                             get_changes_state: bool = False) -> None:
    """A browser sends the token cookie with any request to this site, even one a form on another
    page of the same site posts: a request that changes something must come from an allowed origin
    (`Origin`, which a page cannot forge) and, when it has a body, as JSON (which a form cannot send
    without a CORS preflight). SameSite=Strict alone does not cover sibling subdomains.

    A same-origin GET carries no `Origin`; one that changes something (`get_changes_state`) must then
    carry `Sec-Fetch-Site: same-origin`, which browsers set and no page can (Fetch Metadata, W3C)."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        if get_changes_state and request.headers.get("Sec-Fetch-Site") != "same-origin" and (
                request.headers.get("Origin") not in allowed_origins):
            raise Forbidden("a request authenticated by the token cookie that creates an upload must come from "
                            "this site's own pages (Sec-Fetch-Site: same-origin)")
        return
    origin = request.headers.get("Origin")
    if origin is None or origin not in allowed_origins:
        raise Forbidden("a request authenticated by the token cookie must come from an allowed Origin")
    if request.content_length and request.mimetype != "application/json":
        raise UnsupportedMediaType("a request authenticated by the token cookie must send application/json")


_CONTROL_CHARACTERS: Final = re.compile(r"[\x00-\x1f\x7f]")


def _has_control_characters(request: flask.Request) -> bool:
    return bool(_CONTROL_CHARACTERS.search(request.path)) or any(
        _CONTROL_CHARACTERS.search(key) or _CONTROL_CHARACTERS.search(value)
        for key, values in request.args.lists() for value in values)


def read_json(request: flask.Request, *, max_bytes: int = MAX_JSON_BODY) -> dict[str, Any]:
    """The request's JSON object, or a 4xx that says what is wrong with it."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
    raw = request.stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
    mimetype = request.mimetype or ""
    if raw and mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(f"expected application/json, got {mimetype}")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError) as exc:
        # ValueError: bad syntax or UTF-8, and integers over Python's 4,300-digit limit; RecursionError:
        # nesting deeper than the parser's stack. Both are the client's input, never a 500.
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object")
    return body


def platform_answer(request: flask.Request, checks: Mapping[str, HealthCheck]) -> flask.Response | None:
    """What every function answers the same way, before its own routes: /healthz, /livez and /metrics."""
    if request.method != "GET":
        return None
    if request.path == HEALTH_PATH:
        return health_response(checks)
    if request.path == LIVENESS_PATH:
        # Answering at all is the proof of life. No dependency is asked: a database that is down must
        # make the pod not-ready (/healthz), never get it restarted, which would cure nothing.
        return json_response(200, {"status": "alive"})
    if request.path == metrics.METRICS_PATH:
        return metrics.metrics_response(request)
    return None


def health_response(checks: Mapping[str, HealthCheck]) -> flask.Response:
    results: dict[str, str] = {}
    healthy = True
    for name, check in checks.items():
        try:
            note = check()
            results[name] = f"ok: {note}" if note else "ok"
        except NotReady as exc:
            healthy = False
            # dropgate's own words (what to do, e.g. run the migration Job): safe to show.
            results[name] = f"unavailable: {exc}"
            log_event(logger, "health check failed", logging.WARNING, check=name, error=str(exc)[:500])
        except Exception as exc:  # noqa: BLE001 - any failure makes the dependency unhealthy
            healthy = False
            # The reason goes to the log only: an exception's text can name hosts, paths or credentials.
            results[name] = "unavailable"
            log_event(logger, "health check failed", logging.WARNING, check=name,
                      error=f"{type(exc).__name__}: {exc}"[:500])
    return json_response(200 if healthy else 503, {"status": "ok" if healthy else "unavailable", "checks": results})


def _undecoded_path(request: flask.Request) -> str:
    """The path as the client sent it, so that a `%2F` inside a segment (an S3 UploadId may hold `/`) stays
    inside it; segments are decoded after matching. WSGI's PATH_INFO is already decoded (PEP 3333); gunicorn
    and werkzeug keep the request line's target in RAW_URI / REQUEST_URI."""
    target = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if not target:
        return request.path
    path = urlsplit(target).path
    return path if unquote(path) == request.path else request.path  # behind a prefix-stripping mount: as decoded


@dataclass(frozen=True)
class Route:
    method: str
    template: str  # "/uploads/{id}/parts"; a {name} matches one path segment
    handler: Callable[..., flask.Response]

    def compile(self) -> re.Pattern[str]:
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.template)
        return re.compile(f"^{pattern}/?$")


def _raised_by(module: str, *names: str) -> tuple[type[BaseException], ...]:
    """The exception classes `names` of `module` if it was imported, else none: what was never imported
    cannot have raised. Cold start: a function without a database or storage (storage_events) never
    imports psycopg or botocore, and this module imports neither for them."""
    loaded = sys.modules.get(module)
    return tuple(getattr(loaded, name) for name in names) if loaded is not None else ()


def dependency_failure(exc: Exception) -> DependencyUnavailable | None:
    """A 503 for the failures of a backing service that a retry can cure; None for bugs."""
    database = _raised_by("psycopg", "OperationalError") + _raised_by("psycopg_pool", "PoolTimeout")
    if isinstance(exc, database):
        return DependencyUnavailable(f"the database is unavailable: {type(exc).__name__}",
                                     headers={"Retry-After": "5"})
    storage = (_raised_by("botocore.exceptions", "BotoCoreError")
               + _raised_by("shared.platform.storage", "IncompleteRead"))
    client_error = _raised_by("botocore.exceptions", "ClientError")
    if isinstance(exc, storage) or (
            isinstance(exc, client_error) and exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500):
        return DependencyUnavailable(f"storage is unavailable: {type(exc).__name__}: {exc}"[:300],
                                     headers={"Retry-After": "5"})
    if isinstance(exc, ScannerUnavailable):
        return DependencyUnavailable(f"the virus scanner is unavailable: {exc}"[:300], headers={"Retry-After": "10"})
    return None


def unexpected_error_response(request: flask.Request, exc: Exception) -> flask.Response:
    dependency = dependency_failure(exc)
    if dependency is not None:
        log_event(logger, "dependency unavailable", logging.WARNING, method=request.method, path=request.path,
                  detail=str(exc)[:500])
        return error_response(dependency)
    logger.exception("unhandled error on %s %s", request.method, request.path)
    return json_response(500, {"error": "internal_error", "detail": "an unexpected error; it has been logged"})


def _answer_framework_refusals_as_json() -> None:
    """Make the requests functions-framework itself refuses answer `{error, detail}` JSON too.

    Its router sends every path to the function through a `/<path:path>` rule, which no path with a
    control character (`/uploads/%0A`) matches, so werkzeug would answer those with an HTML page.
    main.py is imported inside the framework's app context, which is when this runs.
    """
    if flask.has_app_context():
        flask.current_app.register_error_handler(werkzeug.exceptions.HTTPException, _framework_refusal)


def _answer_server_refusals_as_json() -> None:
    """gunicorn answers what it refuses before any app runs (a header line over 8190 bytes, too many
    headers, a malformed request line) with an HTML page; every dropgate answer is `{error, detail}`
    JSON, these too. gunicorn's workers call `gunicorn.util.write_error` (workers/base.py handle_error)."""
    try:
        from gunicorn import util as gunicorn_util
    except ImportError:  # not served by gunicorn (tests calling the app directly)
        return

    def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:  # noqa: ANN001 - a socket
        body = json.dumps({"error": re.sub(r"\W+", "_", reason.lower()).strip("_") or "bad_request",
                           "detail": f"the server refused the request: {reason}"}).encode()
        head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
        gunicorn_util.write_nonblock(sock, head + body)

    gunicorn_util.write_error = write_json_error


_answer_server_refusals_as_json()


def _framework_refusal(exc: werkzeug.exceptions.HTTPException) -> flask.Response:
    if flask.has_request_context() and _has_control_characters(flask.request):
        return error_response(BadRequest("control characters in the path or query"))
    status = exc.code or 500
    return json_response(status, {"error": re.sub(r"\W+", "_", (exc.name or "error").lower()),
                                  "detail": exc.description or exc.name})


class HttpApp:
    """Dispatches a request to the route matching its method and path.

    With `cors_origins`, browsers on those origins may call the API: preflight
    requests are answered here, and every answer carries the CORS headers.
    """

    def __init__(self, routes: list[Route], health_checks: Mapping[str, HealthCheck], *,
                 cors_origins: tuple[str, ...] = ()):
        self._routes = [(route, route.compile()) for route in routes]
        self._health_checks = health_checks
        self._cors_origins = frozenset(cors_origins)
        _answer_framework_refusals_as_json()

    def __call__(self, request: flask.Request) -> flask.Response:
        if (answer := platform_answer(request, self._health_checks)) is not None:
            return answer
        if _has_control_characters(request):
            # A NUL in an id would reach the database driver (which refuses it with an error) or a header.
            return self._with_cors(request, error_response(BadRequest("control characters in the path or query")))
        if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
            response = flask.Response(status=204)
        else:
            with tracing.span(f"HTTP {request.method}", parent=request.headers.get(tracing.TRACEPARENT),
                              kind=SpanKind.SERVER, attributes={"http.request.method": request.method,
                                                                "url.path": request.path}), \
                    context(method=request.method, path=request.path):
                response = self._dispatch(request)
                response.headers[tracing.TRACERESPONSE] = tracing.current_traceparent() or ""
        return self._with_cors(request, response)

    def _dispatch(self, request: flask.Request) -> flask.Response:
        template = "unmatched"
        response = None
        started = time.perf_counter()
        try:
            route, params = self._match(request)
            template = route.template
            response = route.handler(request, **params)
            return response
        except ApiError as exc:
            log_event(logger, "request refused", logging.INFO, method=request.method, path=request.path,
                      status=exc.status, error=exc.error, detail=exc.detail, outcome="refused")
            response = error_response(exc)
            return response
        except Exception as exc:  # noqa: BLE001 - every answer is JSON, even for a bug
            response = unexpected_error_response(request, exc)
            return response
        finally:
            metrics.HTTP_REQUESTS.labels(request.method, template,
                                         str(response.status_code) if response is not None else "500").inc()
            metrics.HTTP_DURATION.labels(request.method, template).observe(time.perf_counter() - started)

    def _with_cors(self, request: flask.Request, response: flask.Response) -> flask.Response:
        origin = request.headers.get("Origin")
        if origin and origin in self._cors_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, DELETE, OPTIONS"
            # Uppy-Versions: Uppy's Companion client sends it (@uppy/companion-client RequestClient).
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Uppy-Versions"
            response.headers["Access-Control-Expose-Headers"] = "Retry-After, traceresponse"
            response.headers["Access-Control-Max-Age"] = "600"
        return response

    def _match(self, request: flask.Request) -> tuple[Route, dict[str, str]]:
        allowed: list[str] = []
        path = _undecoded_path(request)
        for route, pattern in self._routes:
            found = pattern.match(path)
            if found:
                if route.method == request.method:
                    return route, {name: unquote(value) for name, value in found.groupdict().items()}
                allowed.append(route.method)
        if allowed:
            raise MethodNotAllowed(f"{request.method} not allowed on {request.path}; use {', '.join(allowed)}",
                                   headers={"Allow": ", ".join(allowed)})
        raise NotFound(f"no such endpoint: {request.method} {request.path}")


# A handler answers with a CloudEvent or nothing: Knative's broker takes a 2xx reply only when its body
# is empty or a CloudEvent (knative/eventing pkg/broker/filter/filter_handler.go writeResponse).
CloudEventHandler = Callable[[CloudEvent], "CloudEvent | None"]
# `Authorization` header -> the sender's subject, or Unauthorized / Forbidden (shared/platform/auth.py).
SenderCheck = Callable[[str | None], str]


class CloudEventApp:
    """Receives one CloudEvent (binary or structured mode), replies with an optional CloudEvent.

    A reply travels back to the broker in binary mode, which is how Knative
    routes a subscriber's answer as a new event.
    """

    def __init__(self, handler: CloudEventHandler, health_checks: Mapping[str, HealthCheck],
                 senders: SenderCheck):
        self._handler = handler
        self._health_checks = health_checks
        self._senders = senders
        _answer_framework_refusals_as_json()

    def __call__(self, request: flask.Request) -> flask.Response:
        if (answer := platform_answer(request, self._health_checks)) is not None:
            return answer
        try:
            if request.method != "POST":
                raise MethodNotAllowed("CloudEvents are delivered with POST", headers={"Allow": "POST"})
            sender = self._authenticated_sender(request)
            event = parse_cloudevent(request)
        except ApiError as exc:
            log_event(logger, "event refused", logging.WARNING, path=request.path,
                      event_id=request.headers.get("ce-id"), status=exc.status, error=exc.error, detail=exc.detail)
            return error_response(exc)
        parent = tracing.parent_of_event(event, request.headers.get(tracing.TRACEPARENT))
        with tracing.span(f"{event['type']} process", parent=parent, kind=SpanKind.CONSUMER,
                          attributes={"cloudevents.event_id": event["id"], "cloudevents.event_type": event["type"]}), \
                context(event_id=event["id"], event_type=event["type"], sender=sender):
            response = self._handle(request, event)
        metrics.EVENTS_RECEIVED.labels(event["type"], str(response.status_code)).inc()
        return response

    def _authenticated_sender(self, request: flask.Request) -> str:
        """The sender's subject; nothing of the event is read before it is known (401/403 otherwise)."""
        try:
            return self._senders(request.headers.get("Authorization"))
        except (Unauthorized, Forbidden) as exc:
            metrics.EVENTS_REFUSED.labels(str(exc.status)).inc()
            raise

    def _handle(self, request: flask.Request, event: CloudEvent) -> flask.Response:
        try:
            reply = self._handler(event)
        except InvalidEvent as exc:
            # Not retryable: the broker sends a 4xx straight to the dead-letter sink.
            log_event(logger, "event refused", logging.WARNING, path=request.path, event_id=exc.event_id,
                      status=400, detail=str(exc))
            return error_response(BadRequest(str(exc)))
        except ApiError as exc:
            log_event(logger, "event refused", logging.WARNING, path=request.path,
                      event_id=request.headers.get("ce-id"), status=exc.status, error=exc.error, detail=exc.detail)
            return error_response(exc)
        except Exception as exc:  # noqa: BLE001 - a 5xx makes the broker redeliver
            return unexpected_error_response(request, exc)
        if reply is None:
            return flask.Response(status=204)
        headers, body = to_binary(tracing.with_traceparent(reply))
        return flask.Response(body, status=200, headers=headers)


def parse_cloudevent(request: flask.Request) -> CloudEvent:
    """The CloudEvent in the request, or 400 naming what is missing or malformed."""
    body = request.get_data()
    if len(body) > 1024 * 1024:
        raise PayloadTooLarge("CloudEvent larger than 1 MiB")
    try:
        return from_http(dict(request.headers), body)
    except CloudEventError as exc:
        raise BadRequest(f"malformed CloudEvent: {exc}") from None
    except (ValueError, TypeError, RecursionError) as exc:  # RecursionError: a structured body nested too deep
        raise BadRequest(f"malformed CloudEvent: {exc}") from None
