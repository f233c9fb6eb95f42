"""A local stand-in for the OIDC provider: one RSA key, its JWKS, and tokens signed with it.

Production trusts Keycloak (or any OIDC provider) through its JWKS URL; the
local stack points presign at this server instead, so the verification code
path is the same. Tokens carry roles where Keycloak puts them
(`realm_access.roles`).

    python -m dropgate_local.devauth serve --data-dir .dropgate --port 8779
    dropgate-dev token --sub alice --roles uploader

`POST /dev-oidc/token {"sub": "alice", "roles": ["uploader"]}` mints the same kind of
token for the uploader page's dev sign-in. LOCAL DEVELOPMENT ONLY: it signs a token for
anyone who asks, so it answers only on loopback and only to pages served from loopback
origins (CORS). Production has no such endpoint: the page gets its token from the real
identity provider.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dropgate_local.processes import serve_until_interrupted

DEV_AUDIENCE = "dropgate"
DEV_TOKEN_TTL_SECONDS = 3600
DEV_ROLES = ("uploader", "admin")
# Pages the dev token endpoint answers (CORS): served from this machine's loopback only.
_LOOPBACK_ORIGIN = re.compile(r"^http://(127\.0\.0\.1|localhost|\[::1\])(:\d{1,5})?$")
_SUBJECT = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class DevSigningKey:
    private_key: rsa.RSAPrivateKey

    @classmethod
    def load_or_create(cls, key_dir: Path) -> DevSigningKey:
        """The same key across restarts, so tokens minted earlier stay valid."""
        path = key_dir / "private.pem"
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            return cls(key)  # type: ignore[arg-type]
        key_dir.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)
        return cls(key)

    @property
    def public_jwk(self) -> dict[str, str]:
        numbers = self.private_key.public_key().public_numbers()
        jwk = {"e": _b64url_uint(numbers.e), "kty": "RSA", "n": _b64url_uint(numbers.n)}
        # RFC 7638 thumbprint as kid: stable for the key, changes when the key does.
        thumbprint = hashlib.sha256(json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()).digest()
        kid = base64.urlsafe_b64encode(thumbprint).rstrip(b"=").decode()
        return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [self.public_jwk]}

    def mint(self, *, subject: str, roles: list[str], issuer: str, audience: str = DEV_AUDIENCE,
             ttl_seconds: int = 3600, now: float | None = None, extra: dict | None = None) -> str:
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": issuer, "aud": audience, "sub": subject, "iat": issued, "nbf": issued,
            "exp": issued + ttl_seconds, "jti": str(uuid.uuid4()),
            "preferred_username": subject, "realm_access": {"roles": roles},
        }
        claims.update(extra or {})
        return jwt.encode(claims, self.private_key, algorithm="RS256", headers={"kid": self.public_jwk["kid"]})


def issuer_url(host: str, port: int) -> str:
    return f"http://{host}:{port}/dev-oidc"


def jwks_url(host: str, port: int) -> str:
    return f"{issuer_url(host, port)}/jwks.json"


def token_url(host: str, port: int) -> str:
    return f"{issuer_url(host, port)}/token"


def mint_dev_token(key: DevSigningKey, body: object, issuer: str) -> tuple[int, dict]:
    """The answer to `POST /dev-oidc/token`: (status, JSON body)."""
    if not isinstance(body, dict):
        return 400, {"error": "bad_request", "detail": "expected a JSON object {sub, roles}"}
    subject, roles = body.get("sub"), body.get("roles", ["uploader"])
    if not isinstance(subject, str) or not _SUBJECT.match(subject):
        return 400, {"error": "bad_request", "detail": "sub: 1-64 letters, digits or . _ @ -"}
    if not isinstance(roles, list) or not all(isinstance(role, str) and role in DEV_ROLES for role in roles):
        return 400, {"error": "bad_request", "detail": f"roles: a list of {', '.join(DEV_ROLES)}"}
    token = key.mint(subject=subject, roles=roles, issuer=issuer, ttl_seconds=DEV_TOKEN_TTL_SECONDS)
    return 200, {"access_token": token, "token_type": "Bearer", "expires_in": DEV_TOKEN_TTL_SECONDS}


def serve(key: DevSigningKey, host: str, port: int, cluster_key: DevSigningKey | None = None) -> ThreadingHTTPServer:
    """The users' issuer at /dev-oidc; with `cluster_key`, also the local cluster's service-account
    issuer at /cluster (dropgate_local.identity), at the paths the Kubernetes API server uses."""
    issuer = issuer_url(host, port)
    cluster = f"http://{host}:{port}/cluster"
    cluster_documents = {} if cluster_key is None else {
        "/cluster/openid/v1/jwks": cluster_key.jwks(),
        "/cluster/.well-known/openid-configuration": {"issuer": cluster, "jwks_uri": f"{cluster}/openid/v1/jwks",
                                                      "id_token_signing_alg_values_supported": ["RS256"]},
    }
    documents = {
        **cluster_documents,
        "/dev-oidc/jwks.json": key.jwks(),
        "/dev-oidc/.well-known/openid-configuration": {"issuer": issuer, "jwks_uri": f"{issuer}/jwks.json",
                                                       "id_token_signing_alg_values_supported": ["RS256"]},
        "/healthz": {"status": "ok"},
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            document = documents.get(self.path)
            self._json(200 if document is not None else 404,
                       document if document is not None else {"error": "not_found"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/dev-oidc/token":
                return self._json(404, {"error": "not_found"})
            if not _LOOPBACK_ORIGIN.match(f"http://{self.headers.get('Host', '')}"):
                # A loopback Host only: a DNS-rebound name pointing here gets nothing.
                return self._json(403, {"error": "forbidden", "detail": "local development only"})
            length = int(self.headers.get("Content-Length") or 0)
            if length > 4096:
                return self._json(413, {"error": "payload_too_large", "detail": "at most 4 KiB"})
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except (UnicodeDecodeError, json.JSONDecodeError):
                return self._json(400, {"error": "bad_request", "detail": "malformed JSON"})
            return self._json(*mint_dev_token(key, body, issuer))

        def do_OPTIONS(self) -> None:  # noqa: N802 - CORS preflight of the token endpoint
            self.send_response(204 if self.path == "/dev-oidc/token" else 404)
            self._cors()
            self.send_header("Access-Control-Allow-Methods", "POST")
            self.send_header("Access-Control-Allow-Headers", "Content-Type")
            self.send_header("Access-Control-Max-Age", "600")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _cors(self) -> None:
            origin = self.headers.get("Origin", "")
            if _LOOPBACK_ORIGIN.match(origin):
                self.send_header("Access-Control-Allow-Origin", origin)
                self.send_header("Vary", "Origin")

        def _json(self, status: int, document: object) -> None:
            body = json.dumps(document).encode()
            self.send_response(status)
            self._cors()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
            pass

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dropgate_local.devauth")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser("serve", help="serve the dev JWKS")
    serve_cmd.add_argument("--data-dir", type=Path, required=True)
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    key = DevSigningKey.load_or_create(args.data_dir / "dev-oidc")
    server = serve(key, args.host, args.port, cluster_key=DevSigningKey.load_or_create(args.data_dir / "cluster-oidc"))
    return serve_until_interrupted(server)


if __name__ == "__main__":
    raise SystemExit(main())
