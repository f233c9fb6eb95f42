"""The low findings of the in-cluster probe (issue 18, item 5), each answered with a 4xx and a reason."""

from __future__ import annotations

import base64
import json
import uuid

import flask
import pytest

from dropgate_local.client import DropgateClient, call
from dropgate_local.devauth import DevSigningKey, issuer_url
from shared.platform.http import client_address


@pytest.fixture(scope="module")
def owner_token(stack, running_functions):  # noqa: ANN201
    key = DevSigningKey.load_or_create(stack.data_dir / "dev-oidc")
    return key.mint(subject="hardening-owner", roles=["uploader"], issuer=issuer_url("127.0.0.1", stack.ports.dev_oidc))


def _b64(document: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("header", [
    {"alg": "RS256\r\nX-Injected: 1", "kid": "k"},
    {"alg": "RS256", "kid": "k\r\nSet-Cookie: a=b"},
    {"alg": "\u2603", "kid": "\u2603"},
    {"alg": ["RS256"], "kid": {"nested": True}},
])
def test_odd_alg_and_kid_are_a_401_and_echo_nothing(running_functions, header: dict) -> None:
    token = f"{_b64(header)}.{_b64({'sub': 'x'})}.c2ln"
    reply = call("GET", f"{running_functions['presign']}/files", headers={"Authorization": f"Bearer {token}"})
    assert reply.status == 401, reply.body
    assert reply.json()["error"] == "unauthorized"
    assert reply.headers.get("WWW-Authenticate") == 'Bearer error="invalid_token"'
    assert "X-Injected" not in reply.headers and "Set-Cookie" not in reply.headers


@pytest.mark.parametrize("path", ["/uploads/%00", "/uploads/abc%00def", "/uploads/a%0Ab/parts",
                                  "/s3/multipart/x%00y?key=uploads/k", "/s3/multipart/xy?key=uploads/k%00",
                                  "/files?owner=%1Bme"])
def test_control_characters_in_a_route_are_a_400(running_functions, owner_token, path: str) -> None:
    reply = call("GET", running_functions["presign"] + path, headers={"Authorization": f"Bearer {owner_token}"})
    assert reply.status == 400, (path, reply.status, reply.body)
    assert "control characters" in reply.json()["detail"]


def test_the_client_address_trusts_only_the_configured_proxies() -> None:
    app = flask.Flask(__name__)

    def address(forwarded: str | None, peer: str, hops: int) -> str | None:
        headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
        with app.test_request_context("/", headers=headers, environ_base={"REMOTE_ADDR": peer}):
            return client_address(flask.request, hops)

    assert address("6.6.6.6", "10.0.0.5", 0) == "10.0.0.5"  # no trusted proxy: the header is a client's claim
    assert address("6.6.6.6, 203.0.113.7", "10.0.0.5", 1) == "203.0.113.7"  # what our ingress saw
    assert address("6.6.6.6, 203.0.113.7, 10.0.0.9", "10.0.0.5", 2) == "203.0.113.7"
    assert address(None, "10.0.0.5", 2) == "10.0.0.5"  # fewer hops than trusted: the earliest known address
    assert address("not-an-ip, 203.0.113.7", "10.0.0.5", 2) is None


def test_cookie_authentication_needs_an_allowed_origin_and_json(stack, running_functions, owner_token) -> None:
    presign = running_functions["presign"]
    origin = stack.function_env()["DROPGATE_ALLOWED_ORIGINS"].split(",")[0]
    body = json.dumps({"filename": "c.bin", "size": 1024, "content_type": "application/octet-stream"}).encode()
    cookie = {"Cookie": f"dropgate_token={owner_token}"}
    no_origin = call("POST", f"{presign}/uploads", data=body, headers={**cookie, "Content-Type": "application/json"})
    assert no_origin.status == 403 and "Origin" in no_origin.json()["detail"]
    elsewhere = call("POST", f"{presign}/uploads", data=body,
                     headers={**cookie, "Content-Type": "application/json", "Origin": "https://evil.example"})
    assert elsewhere.status == 403
    as_form = call("POST", f"{presign}/uploads", data=body,
                   headers={**cookie, "Content-Type": "text/plain", "Origin": origin})
    assert as_form.status == 415
    allowed = call("POST", f"{presign}/uploads", data=body,
                   headers={**cookie, "Content-Type": "application/json", "Origin": origin})
    assert allowed.status == 201, allowed.body
    # The bearer header needs neither (no browser attaches it by itself); reading needs neither.
    assert DropgateClient(presign, owner_token).status(allowed.json()["id"]).status == 200
    assert call("GET", f"{presign}/uploads/{allowed.json()['id']}", headers=cookie).status == 200
    assert call("GET", f"{presign}/uploads/{uuid.uuid4()}", headers=cookie).status == 404


def _raw(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("request_bytes", [
    b"GET /files HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",  # a header line over gunicorn's 8190
    b"GET /files HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n",  # > 100
    b"BR\x00KEN /files HTTP/1.1\r\nHost: x\r\n\r\n",  # not a request line
])
def test_what_the_http_server_refuses_is_json_too(running_functions, request_bytes: bytes) -> None:
    for function in ("presign", "scan"):
        status, headers, body = _raw(running_functions[function], request_bytes)
        assert 400 <= status < 500, (function, status, body[:200])
        assert headers["content-type"] == "application/json", (function, headers, body[:200])
        assert json.loads(body)["detail"].startswith("the server refused the request")


def test_no_server_banner_names_a_version(running_functions) -> None:
    import re

    for function in ("presign", "scan", "metadata"):
        reply = call("GET", f"{running_functions[function]}/healthz")
        assert not re.search(r"\d", reply.headers.get("Server", "")), (function, reply.headers.get("Server"))
