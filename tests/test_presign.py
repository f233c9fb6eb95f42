"""presign against real SeaweedFS and PostgreSQL, with the JWKS served by pytest-localserver.

Every upload here goes the way a browser's does: presign signs, the test PUTs
the bytes straight to SeaweedFS with the signed URL, presign completes.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pytest_localserver.http import ContentServer

from dropgate_local.client import DropgateClient, Reply, b64sha, call, put_part, split
from dropgate_local.processes import free_port
from shared.platform.storage import create_s3_client
from tests.conftest import UNWATCHED_ENV

MIB = 1024 * 1024
PRESIGN_MAIN = Path(__file__).resolve().parents[1] / "functions" / "presign" / "main.py"


class IdentityProvider:
    """A test OIDC provider: RSA keys whose JWKS a pytest-localserver ContentServer publishes."""

    issuer = "https://id.example.test/realms/dropgate"
    audience = "dropgate-api"

    def __init__(self, server: ContentServer) -> None:
        self.server = server
        self.keys: list[tuple[str, rsa.RSAPrivateKey]] = []
        self.add_key()

    @property
    def jwks_url(self) -> str:
        return f"{self.server.url}/protocol/openid-connect/certs"

    def add_key(self) -> str:
        kid = f"key-{len(self.keys) + 1}-{uuid.uuid4().hex[:6]}"
        self.keys.append((kid, rsa.generate_private_key(public_exponent=65537, key_size=2048)))
        jwks = {"keys": [{**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())),
                          "kid": key_id, "use": "sig", "alg": "RS256"} for key_id, key in self.keys]}
        self.server.serve_content(json.dumps(jwks), headers={"Content-Type": "application/json"})
        return kid

    def token(self, subject: str, roles: tuple[str, ...] = ("uploader",), *, key: rsa.RSAPrivateKey | None = None,
              kid: str | None = None, lifetime: int = 300, **claims: object) -> str:
        now = int(time.time())
        payload = {"iss": self.issuer, "aud": self.audience, "sub": subject, "iat": now, "exp": now + lifetime,
                   "realm_access": {"roles": list(roles)}, **claims}
        default_kid, default_key = self.keys[-1]
        return jwt.encode(payload, key or default_key, algorithm="RS256", headers={"kid": kid or default_kid})


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    server = ContentServer()
    server.start()
    yield IdentityProvider(server)
    server.stop()


def presign_env(idp: IdentityProvider) -> dict[str, str]:
    return {
        "DROPGATE_OIDC_ISSUER": idp.issuer,
        "DROPGATE_OIDC_AUDIENCE": idp.audience,
        "DROPGATE_OIDC_JWKS_URL": idp.jwks_url,
        "DROPGATE_JWKS_REFRESH_COOLDOWN": "0",
        "DROPGATE_MAX_OPEN_UPLOADS": "5",
        "DROPGATE_MAX_BYTES_PER_DAY": "3GiB",
        "DROPGATE_RATE_LIMIT_PER_MINUTE": "40",
        "DROPGATE_ALLOWED_CONTENT_TYPES": "application/octet-stream,application/pdf,image/*,text/plain",
        **UNWATCHED_ENV,
    }


@pytest.fixture(scope="module")
def presign(stack, database_url, unwatched, idp) -> str:
    port = free_port()
    stack.start_function("presign", port=port, extra_env=presign_env(idp), label="presign-api-tests")
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def s3(unwatched):  # noqa: ANN201 - boto3 client
    return create_s3_client(unwatched)


def user() -> str:
    """A fresh subject per test, so per-user quotas of one test never touch another's."""
    return f"user-{uuid.uuid4().hex[:10]}"


def payload(size: int, seed: int = 1) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * (MIB // 32)
    return (block * (size // len(block) + 1))[:size]


def create(presign: str, token: str, data: bytes, **fields: object) -> Reply:
    defaults = {"filename": "report.pdf", "size": len(data), "content_type": "application/pdf",
                "sha256": hashlib.sha256(data).hexdigest()}
    return DropgateClient(presign, token).create(**{**defaults, **fields})


def upload_parts(presign: str, token: str, upload: dict, data: bytes, numbers: list[int] | None = None) -> dict[int, str]:
    etags, _ = DropgateClient(presign, token).upload_parts(upload, data, numbers)
    return etags


def complete(presign: str, token: str, upload_id: str, etags: dict[int, str]) -> Reply:
    return DropgateClient(presign, token).complete(upload_id, etags)


def set_status(database_url: str, upload_id: str, status: str) -> None:
    """Puts a row where the scan (or expire) would; the scan itself is tested in its own module."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE uploads SET status = %s WHERE id = %s", (status, upload_id))


def row(database_url: str, upload_id: str) -> dict:
    with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute("SELECT * FROM uploads WHERE id = %s", (upload_id,)).fetchone()


# -- the whole path --

def test_30_mb_file_uploaded_in_parts_through_signed_urls(presign, idp, s3, unwatched, database_url) -> None:
    token = idp.token(user())
    data = payload(30 * 1000 * 1000)
    created = create(presign, token, data)
    assert created.status == 201, created.body
    upload = created.json()
    assert upload["status"] == "pending"
    assert upload["part_size"] == 8 * MIB and upload["part_count"] == 4
    assert "report" not in upload["key"]  # the key is the server's, never the user's filename

    etags = upload_parts(presign, token, upload, data)
    done = complete(presign, token, upload["id"], etags)
    assert done.status == 200, done.body
    assert done.json()["status"] == "uploaded"

    stored = s3.get_object(Bucket=unwatched.uploads_bucket, Key=upload["key"])
    assert stored["ContentLength"] == len(data)
    assert hashlib.sha256(stored["Body"].read()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert stored["Metadata"]["upload-id"] == upload["id"]

    with psycopg.connect(database_url) as conn:
        # The user's own actions; with the event pipeline running, system:* entries (scan, metadata) follow.
        actions = [r[0] for r in conn.execute(
            "SELECT action FROM audit_log WHERE upload_id = %s AND actor NOT LIKE 'system:%%' ORDER BY id",
            (upload["id"],))]
        assert actions == ["upload.created", "upload.completed"]
        assert conn.execute("SELECT source_ip::text FROM audit_log WHERE upload_id = %s LIMIT 1",
                            (upload["id"],)).fetchone()[0].startswith("127.0.0.1")

    again = complete(presign, token, upload["id"], etags)  # a retried completion changes nothing
    assert again.status == 200 and again.json()["status"] == "uploaded"


def test_resume_after_dropping_half_the_parts(presign, idp) -> None:
    token = idp.token(user())
    data = payload(4 * 8 * MIB + 123, seed=2)
    upload = create(presign, token, data).json()
    first_half = upload_parts(presign, token, upload, data, numbers=[1, 3])

    # A reload: the client only knows the upload id and asks what storage holds.
    status = call("GET", f"{presign}/uploads/{upload['id']}", token=token)
    assert status.status == 200
    held = {part["number"]: part for part in status.json()["parts"]}
    assert sorted(held) == [1, 3]
    assert held[1]["size"] == 8 * MIB and held[1]["etag"] == first_half[1]

    rest = upload_parts(presign, token, upload, data, numbers=[2, 4, 5])
    done = complete(presign, token, upload["id"], {**first_half, **rest})
    assert done.status == 200, done.body


def test_storage_refuses_a_part_of_the_wrong_length_or_content(presign, idp, s3, unwatched) -> None:
    token = idp.token(user())
    data = payload(10 * MIB, seed=3)
    upload = create(presign, token, data).json()
    first = data[:8 * MIB]
    signed = call("POST", f"{presign}/uploads/{upload['id']}/parts", token=token,
                  json_body={"parts": [{"number": 1, "sha256": b64sha(first)}, {"number": 2}]}).json()["parts"]
    assert signed[0]["headers"] == {"Content-Length": str(8 * MIB), "x-amz-checksum-sha256": b64sha(first)}
    assert signed[1]["headers"] == {"Content-Length": str(2 * MIB)}

    too_short = put_part(signed[0], first[:-1])
    assert too_short.status == 403 and b"SignatureDoesNotMatch" in too_short.body
    wrong_content = put_part(signed[0], payload(8 * MIB, seed=99))
    assert wrong_content.status == 400 and b"BadDigest" in wrong_content.body
    too_long = put_part(signed[1], data[8 * MIB:] + b"x")
    assert too_long.status == 403

    parts = s3.list_parts(Bucket=unwatched.uploads_bucket, Key=upload["key"], UploadId=upload["upload_id"])
    assert parts.get("Parts", []) == []


def test_storage_that_requires_part_checksums_gets_one_on_every_part(stack, database_url, idp, s3, unwatched) -> None:
    """DROPGATE_S3_PART_CHECKSUMS=required (AWS S3): uploads are created with ChecksumAlgorithm=SHA256,
    a part request without its sha256 is refused, and completion names each part's checksum."""
    port = free_port()
    child = stack.start_function("presign", port=port, label="presign-part-checksums",
                                 extra_env={**presign_env(idp), "DROPGATE_S3_PART_CHECKSUMS": "required"})
    try:
        url, token = f"http://127.0.0.1:{port}", idp.token(user())
        data = payload(10 * MIB, seed=11)
        upload = create(url, token, data).json()
        bare = DropgateClient(url, token).sign(upload["id"], {1: None})
        assert bare.status == 400 and "part 1 needs its sha256" in bare.json()["detail"]
        etags = upload_parts(url, token, upload, data)
        # SeaweedFS's ListParts does not report part checksums, so the completion must name them.
        client = DropgateClient(url, token)
        unnamed = client.complete(upload["id"], etags)
        assert unnamed.status == 400 and "part 1 needs its sha256 at completion" in unnamed.json()["detail"]
        wrong = client.complete(upload["id"], etags, {1: b64sha(data[8 * MIB:]), 2: b64sha(data[8 * MIB:])})
        assert wrong.status == 400 and "storage refused the complete multipart upload" in wrong.json()["detail"]
        assert row(database_url, upload["id"])["status"] == "pending"  # a corrected completion may follow
        done = client.complete(upload["id"], etags, {1: b64sha(data[:8 * MIB]), 2: b64sha(data[8 * MIB:])})
        assert done.status == 200, done.body
        assert s3.get_object(Bucket=unwatched.uploads_bucket, Key=upload["key"])["Body"].read() == data
        # Storage kept the object's composite SHA-256 (of the two parts' checksums): the upload was a SHA-256 one.
        composite = base64.b64encode(hashlib.sha256(
            hashlib.sha256(data[:8 * MIB]).digest() + hashlib.sha256(data[8 * MIB:]).digest()).digest()).decode()
        head = s3.head_object(Bucket=unwatched.uploads_bucket, Key=upload["key"], ChecksumMode="ENABLED")
        assert head.get("ChecksumSHA256") == f"{composite}-2", head
    finally:
        child.stop()


# -- authentication --

@pytest.mark.parametrize("case", ["missing", "not_bearer", "forged", "expired", "wrong_audience", "wrong_issuer",
                                  "alg_none", "hs256_with_public_key", "unknown_kid", "garbage"])
def test_bad_tokens_are_refused(presign, idp, case: str) -> None:
    subject = user()
    kid, key = idp.keys[-1]
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    claims = {"iss": idp.issuer, "aud": idp.audience, "sub": subject, "iat": now, "exp": now + 300}
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    headers: dict[str, str] = {}
    match case:
        case "missing":
            pass
        case "not_bearer":
            headers["Authorization"] = "Basic YWxpY2U6c2VjcmV0"
        case "forged":
            headers["Authorization"] = f"Bearer {idp.token(subject, key=other_key, kid=kid)}"
        case "expired":
            headers["Authorization"] = f"Bearer {idp.token(subject, lifetime=-120)}"
        case "wrong_audience":
            headers["Authorization"] = f"Bearer {idp.token(subject, aud='another-client')}"
        case "wrong_issuer":
            headers["Authorization"] = f"Bearer {idp.token(subject, iss='https://evil.example.test')}"
        case "alg_none":
            headers["Authorization"] = f"Bearer {jwt.encode(claims, None, algorithm='none', headers={'kid': kid})}"
        case "hs256_with_public_key":
            # The classic RS/HS confusion: HMAC keyed with the public key a verifier might hand over.
            header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
            body = base64.urlsafe_b64encode(json.dumps(claims).encode())
            signing_input = header.rstrip(b"=") + b"." + body.rstrip(b"=")
            import hmac
            signature = base64.urlsafe_b64encode(hmac.new(public_pem, signing_input, hashlib.sha256).digest())
            headers["Authorization"] = f"Bearer {(signing_input + b'.' + signature.rstrip(b'=')).decode()}"
        case "unknown_kid":
            headers["Authorization"] = f"Bearer {idp.token(subject, key=other_key, kid='not-published')}"
        case "garbage":
            headers["Authorization"] = "Bearer not.a.jwt"
    reply = call("POST", f"{presign}/uploads", headers=headers,
                 json_body={"filename": "a.txt", "size": 10, "content_type": "text/plain"})
    assert reply.status == 401, (case, reply.body)
    assert reply.json()["error"] == "unauthorized"
    assert reply.header("WWW-Authenticate", ).startswith("Bearer")


def test_a_rotated_key_is_fetched_when_a_token_names_it(presign, idp) -> None:
    subject = user()
    assert call("GET", f"{presign}/files?mine", token=idp.token(subject)).status == 200  # caches the JWKS
    idp.add_key()  # the provider rotates; presign has not seen the new key yet
    reply = call("GET", f"{presign}/files?mine", token=idp.token(subject))
    assert reply.status == 200, reply.body


def test_a_verified_token_is_remembered_only_for_itself_and_never_past_its_expiry(idp) -> None:
    """The verified-token cache (shared/platform/auth.py) saves the signature check, never a rule."""
    from shared.platform.auth import JwtPolicy, JwtVerifier, _VerifiedTokens
    from shared.platform.errors import Unauthorized

    verifier = JwtVerifier(JwtPolicy(issuer=idp.issuer, audience=idp.audience, jwks_url=idp.jwks_url,
                                     algorithms=("RS256",), leeway_seconds=0, refresh_cooldown_seconds=0))
    subject = user()
    token = idp.token(subject, lifetime=2)
    assert verifier.claims(token)["sub"] == subject
    assert verifier.claims(token)["sub"] == subject  # remembered
    head, body, signature = token.split(".")
    tampered = f"{head}.{body}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    with pytest.raises(Unauthorized):
        verifier.claims(tampered)
    other_subject = base64.urlsafe_b64encode(json.dumps({**jwt.decode(token, options={"verify_signature": False}),
                                                          "sub": "someone-else"}).encode()).rstrip(b"=").decode()
    with pytest.raises(Unauthorized):  # the claims of a remembered token with another subject
        verifier.claims(f"{head}.{other_subject}.{signature}")
    time.sleep(3.1)
    with pytest.raises(Unauthorized, match="expired"):
        verifier.claims(token)
    remembered = _VerifiedTokens(capacity=2)
    for name in ("a", "b", "c"):
        remembered.put(name, {"sub": name, "exp": time.time() + 60})
    assert remembered.get("a", 0) is None and remembered.get("c", 0) == {"sub": "c", "exp": pytest.approx(
        time.time() + 60, abs=5)}


def test_roles_are_required(presign, idp) -> None:
    no_roles = idp.token(user(), roles=())
    reply = call("POST", f"{presign}/uploads", token=no_roles,
                 json_body={"filename": "a.txt", "size": 10, "content_type": "text/plain"})
    assert reply.status == 403 and "uploader" in reply.json()["detail"]


# -- ownership --

def test_another_users_upload_is_invisible(presign, idp) -> None:
    alice, bob = idp.token(user()), idp.token(user())
    data = payload(6 * MIB, seed=4)
    upload = create(presign, alice, data).json()
    for method, path, body in [("GET", f"/uploads/{upload['id']}", None),
                               ("POST", f"/uploads/{upload['id']}/parts", {"parts": [{"number": 1}]}),
                               ("POST", f"/uploads/{upload['id']}/complete", {"parts": [{"number": 1, "etag": "x"}]}),
                               ("DELETE", f"/uploads/{upload['id']}", None),
                               ("GET", f"/files/{upload['id']}/download", None)]:
        reply = call(method, presign + path, token=bob, json_body=body)
        assert reply.status == 404, (method, path, reply.body)
    assert call("GET", f"{presign}/files?mine", token=bob).json()["files"] == []
    mine = call("GET", f"{presign}/files?mine", token=alice).json()["files"]
    assert [f["id"] for f in mine] == [upload["id"]]
    assert call("GET", f"{presign}/files?owner=*", token=bob).status == 403  # only admins list everyone's


# -- limits --

def test_size_and_type_limits(presign, idp) -> None:
    token = idp.token(user())
    too_big = call("POST", f"{presign}/uploads", token=token,
                   json_body={"filename": "big.bin", "size": 1024 ** 3 + 1, "content_type": "application/octet-stream"})
    assert too_big.status == 413
    wrong_type = call("POST", f"{presign}/uploads", token=token,
                      json_body={"filename": "x.exe", "size": 100, "content_type": "application/x-msdownload"})
    assert wrong_type.status == 415 and "not accepted" in wrong_type.json()["detail"]
    image = call("POST", f"{presign}/uploads", token=token,
                 json_body={"filename": "cat.png", "size": 100, "content_type": "image/png"})
    assert image.status == 201  # image/* is allowed


def open_multipart_uploads(s3, bucket: str) -> set[str]:
    """UploadIds of every multipart upload storage holds open in `bucket` (all pages)."""
    found: set[str] = set()
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        found |= {upload["UploadId"] for upload in page.get("Uploads", [])}
    return found


def test_open_uploads_limit_answers_429(presign, idp, s3, unwatched) -> None:
    token = idp.token(user())
    for _ in range(5):
        assert create(presign, token, b"x" * 100).status == 201
    # create asks storage for the multipart upload while the database checks the quota: a refusal must
    # abort it, or every refused request would leave one behind.
    before = open_multipart_uploads(s3, unwatched.uploads_bucket)
    reply = create(presign, token, b"x" * 100)
    assert reply.status == 429 and int(reply.header("Retry-After")) > 0
    assert "open" in reply.json()["detail"]
    assert open_multipart_uploads(s3, unwatched.uploads_bucket) == before


def test_bytes_per_day_limit_answers_429(presign, idp, s3, unwatched) -> None:
    token = idp.token(user())
    body = {"filename": "big.bin", "size": 1024 ** 3, "content_type": "application/octet-stream"}
    for _ in range(3):
        assert call("POST", f"{presign}/uploads", token=token, json_body=body).status == 201
    before = open_multipart_uploads(s3, unwatched.uploads_bucket)
    reply = call("POST", f"{presign}/uploads", token=token, json_body=body)
    assert reply.status == 429 and int(reply.header("Retry-After")) >= 60
    assert "24 hours" in reply.json()["detail"]
    assert open_multipart_uploads(s3, unwatched.uploads_bucket) == before


def test_request_rate_limit_answers_429(presign, idp) -> None:
    token = idp.token(user())
    # The limit counts per clock minute (shared/uploads/limits.py): all 46 requests must fall in one.
    if (second := time.time() % 60) > 40:
        time.sleep(60.5 - second)
    statuses = [call("GET", f"{presign}/files?mine", token=token).status for _ in range(45)]
    assert statuses.count(200) >= 1 and statuses[-1] == 429
    limited = call("GET", f"{presign}/files?mine", token=token)
    assert limited.status == 429 and 1 <= int(limited.header("Retry-After")) <= 60
    assert call("GET", f"{presign}/files?mine", token=idp.token(user())).status == 200  # others are not affected


def test_part_url_requests_count_against_the_rate_limit_found_or_not(presign, idp) -> None:
    """The part-URL routes count in the statement that reads the upload; a refused request counts too."""
    if (second := time.time() % 60) > 40:
        time.sleep(60.5 - second)
    token = idp.token(user())
    upload = create(presign, token, payload(6 * MIB, seed=11)).json()
    calls = [lambda: call("POST", f"{presign}/uploads/{upload['id']}/parts", token=token,
                          json_body={"parts": [{"number": 1}]}),
             lambda: call("POST", f"{presign}/uploads/{uuid.uuid4()}/parts", token=token,
                          json_body={"parts": [{"number": 1}]}),
             lambda: call("POST", f"{presign}/uploads/not-a-uuid/parts", token=token,
                          json_body={"parts": [{"number": 1}]}),
             lambda: call("GET", f"{presign}/s3/multipart/{upload['upload_id']}/1?key={upload['key']}", token=token),
             lambda: call("GET", f"{presign}/s3/multipart/no-such-upload/1?key=x", token=token)]
    statuses = [calls[i % len(calls)]().status for i in range(45)]
    assert statuses[:5] == [200, 404, 404, 200, 404], statuses[:5]
    assert statuses[-1] == 429, statuses  # 1 create + 45 part requests > 40 a minute


# -- integrity at completion --

def test_size_lie_at_completion_is_aborted_and_cleaned(presign, idp, s3, unwatched, database_url) -> None:
    token = idp.token(user())
    data = payload(20 * MIB, seed=5)
    upload = create(presign, token, data).json()
    etags = upload_parts(presign, token, upload, data, numbers=[1, 2])  # part 3 never sent

    reply = complete(presign, token, upload["id"], etags)
    assert reply.status == 400 and "aborted" in reply.json()["detail"]
    stored_row = row(database_url, upload["id"])
    assert stored_row["status"] == "aborted" and "part" in stored_row["status_reason"]
    pending = s3.list_multipart_uploads(Bucket=unwatched.uploads_bucket).get("Uploads", [])
    assert upload["upload_id"] not in [u["UploadId"] for u in pending]
    assert "Contents" not in s3.list_objects_v2(Bucket=unwatched.uploads_bucket, Prefix=upload["key"])
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log WHERE upload_id = %s AND action = %s",
                            (upload["id"], "upload.rejected_at_completion")).fetchone()[0] == 1


def test_wrong_etag_at_completion_is_aborted(presign, idp, database_url) -> None:
    token = idp.token(user())
    data = payload(6 * MIB, seed=6)
    upload = create(presign, token, data).json()
    upload_parts(presign, token, upload, data)
    reply = complete(presign, token, upload["id"], {1: "0" * 32})
    assert reply.status == 400 and "ETag" in reply.json()["detail"]
    assert row(database_url, upload["id"])["status"] == "aborted"


def test_abort_removes_the_multipart_upload(presign, idp, s3, unwatched, database_url) -> None:
    token = idp.token(user())
    data = payload(6 * MIB, seed=7)
    upload = create(presign, token, data).json()
    upload_parts(presign, token, upload, data)
    first = call("DELETE", f"{presign}/uploads/{upload['id']}", token=token)
    assert first.status == 200 and first.json()["status"] == "aborted"
    assert call("DELETE", f"{presign}/uploads/{upload['id']}", token=token).status == 200  # idempotent
    pending = s3.list_multipart_uploads(Bucket=unwatched.uploads_bucket).get("Uploads", [])
    assert upload["upload_id"] not in [u["UploadId"] for u in pending]
    signing = call("POST", f"{presign}/uploads/{upload['id']}/parts", token=token, json_body={"parts": [{"number": 1}]})
    assert signing.status == 409


# -- downloads and holds --

def test_download_only_when_clean(presign, idp, database_url) -> None:
    token = idp.token(user())
    data = payload(6 * MIB, seed=8)
    upload = create(presign, token, data, filename="../../Quartalsbericht März \"final\".pdf").json()
    complete(presign, token, upload["id"], upload_parts(presign, token, upload, data))
    url = f"{presign}/files/{upload['id']}/download"

    assert call("GET", url, token=token).status == 409  # uploaded, not yet scanned
    set_status(database_url, upload["id"], "scanning")
    assert call("GET", url, token=token).status == 409
    set_status(database_url, upload["id"], "infected")
    assert call("GET", url, token=token).status == 403
    set_status(database_url, upload["id"], "expired")
    assert call("GET", url, token=token).status == 410
    set_status(database_url, upload["id"], "clean")
    reply = call("GET", url, token=token)
    assert reply.status == 200
    download = call("GET", reply.json()["url"])
    assert download.status == 200
    assert hashlib.sha256(download.body).hexdigest() == hashlib.sha256(data).hexdigest()
    disposition = download.header("Content-Disposition")
    assert disposition == ("attachment; filename=\"Quartalsbericht Marz final.pdf\"; "
                           "filename*=UTF-8''Quartalsbericht%20M%C3%A4rz%20final.pdf")


def test_legal_hold_needs_admin(presign, idp, database_url) -> None:
    owner = user()
    data = payload(6 * MIB, seed=9)
    token = idp.token(owner)
    upload = create(presign, token, data).json()
    complete(presign, token, upload["id"], upload_parts(presign, token, upload, data))
    url = f"{presign}/files/{upload['id']}/legal-hold"
    assert call("PUT", url, token=token, json_body={"on": True}).status == 403
    admin = idp.token(user(), roles=("admin",))
    reply = call("PUT", url, token=admin, json_body={"on": True})
    assert reply.status == 200 and reply.json()["legal_hold"] is True
    assert row(database_url, upload["id"])["legal_hold"] is True
    assert call("PUT", url, token=admin, json_body={"on": "yes"}).status == 400


# -- bad input loses nothing and says why --

@pytest.mark.parametrize(("body", "raw", "status", "words"), [
    (None, b"{not json", 400, "malformed JSON"),
    ({"size": 10}, None, 400, "filename"),
    ({"filename": "a", "size": -1}, None, 400, "size"),
    ({"filename": "a", "size": 10, "content_type": "not a type"}, None, 400, "content_type"),
    ({"filename": "a", "size": 10, "sha256": "abc"}, None, 400, "sha256"),
    ([1, 2], None, 400, "JSON object"),
])
def test_bad_create_requests(presign, idp, database_url, body, raw, status, words) -> None:
    subject = user()
    reply = call("POST", f"{presign}/uploads", token=idp.token(subject), json_body=body, data=raw,
                 headers={"Content-Type": "application/json"})
    assert reply.status == status and words in reply.json()["detail"], reply.body
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM uploads WHERE owner = %s", (subject,)).fetchone()[0] == 0


def test_bad_part_requests(presign, idp) -> None:
    token = idp.token(user())
    upload = create(presign, token, payload(6 * MIB)).json()
    parts_url = f"{presign}/uploads/{upload['id']}/parts"
    assert call("POST", parts_url, token=token, json_body={"parts": [{"number": 3}]}).status == 400
    assert call("POST", parts_url, token=token, json_body={"parts": [{"number": 1, "sha256": "nope"}]}).status == 400
    assert call("POST", parts_url, token=token, json_body={"parts": []}).status == 400
    assert call("GET", f"{presign}/uploads/not-a-uuid", token=token).status == 404
    assert call("PATCH", f"{presign}/uploads/{upload['id']}", token=token).status == 405


def test_cors_preflight_for_the_web_origin(presign, stack) -> None:
    origin = f"http://127.0.0.1:{stack.ports.web}"
    reply = call("OPTIONS", f"{presign}/uploads", headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                                           "Access-Control-Request-Headers": "authorization"})
    assert reply.status == 204
    assert reply.header("Access-Control-Allow-Origin") == origin
    assert "Authorization" in reply.header("Access-Control-Allow-Headers")
    foreign = call("OPTIONS", f"{presign}/uploads", headers={"Origin": "https://evil.example",
                                                             "Access-Control-Request-Method": "POST"})
    assert foreign.header("Access-Control-Allow-Origin") is None


# -- Uppy Companion's routes --

def test_uppy_companion_routes(presign, idp, s3, unwatched) -> None:
    token = idp.token(user())
    data = payload(12 * MIB + 7, seed=10)
    created = call("POST", f"{presign}/s3/multipart", token=token,
                   json_body={"filename": "clip.bin", "type": "application/octet-stream",
                              "metadata": {"name": "clip.bin", "size": len(data)}})
    assert created.status == 200, created.body
    key, upload_id = created.json()["key"], created.json()["uploadId"]
    chunks = split(data, 5 * MIB)  # @uppy/aws-s3's default split for this size
    q = f"key={key}"
    batch = call("GET", f"{presign}/s3/multipart/{upload_id}/batch?{q}&partNumbers=1,2", token=token)
    assert batch.status == 200
    urls = batch.json()["presignedUrls"]
    single = call("GET", f"{presign}/s3/multipart/{upload_id}/3?{q}", token=token).json()
    urls["3"] = single["url"]
    etags = {}
    for number, url in urls.items():
        reply = call("PUT", url, data=chunks[int(number) - 1])
        assert reply.status == 200, reply.body
        etags[int(number)] = reply.header("ETag")
    listed = call("GET", f"{presign}/s3/multipart/{upload_id}?{q}", token=token).json()
    assert sorted(p["PartNumber"] for p in listed) == [1, 2, 3]
    done = call("POST", f"{presign}/s3/multipart/{upload_id}/complete?{q}", token=token,
                json_body={"parts": [{"PartNumber": n, "ETag": e} for n, e in etags.items()]})
    assert done.status == 200, done.body
    assert done.json()["location"].endswith(f"/{unwatched.uploads_bucket}/{key}")
    assert s3.head_object(Bucket=unwatched.uploads_bucket, Key=key)["ContentLength"] == len(data)
    # Uppy 6's Companion client sends no headers of its own: a same-origin page passes the token as a cookie.
    by_cookie = call("GET", f"{presign}/s3/multipart/{upload_id}?{q}", headers={"Cookie": f"dropgate_token={token}"})
    assert by_cookie.status == 200 and by_cookie.json() == []  # complete: storage holds no parts any more
    assert call("GET", f"{presign}/s3/multipart/{upload_id}?{q}").status == 401
    missing_size = call("POST", f"{presign}/s3/multipart", token=token,
                        json_body={"filename": "a", "type": "text/plain", "metadata": {}})
    assert missing_size.status == 400 and "metadata.size" in missing_size.json()["detail"]


# -- the OpenAPI document matches the routes --

def test_openapi_document_lists_every_route(presign) -> None:
    routes = {(node.args[0].value.lower(), node.args[1].value)
              for module in PRESIGN_MAIN.parent.glob("*.py") for node in ast.walk(ast.parse(module.read_text()))
              if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Route"}
    document = call("GET", f"{presign}/openapi.json").json()
    documented = {(method, path) for path, item in document["paths"].items() for method in item
                  if path != "/healthz"}
    assert routes == documented


# -- faults: a dependency down answers 503 and leaves nothing behind --

def test_database_down_answers_503(stack, unwatched, idp) -> None:
    port = free_port()
    env = {**presign_env(idp), "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
           "DROPGATE_DB_CONNECT_TIMEOUT": "1"}
    child = stack.start_function("presign", port=port, extra_env=env, label="presign-no-database")
    try:
        reply = call("GET", f"http://127.0.0.1:{port}/files?mine", token=idp.token(user()))
        assert reply.status == 503 and reply.json()["error"] == "dependency_unavailable"
        assert reply.header("Retry-After")
        assert call("GET", f"http://127.0.0.1:{port}/healthz").status == 503
    finally:
        child.stop()


def test_storage_down_answers_503_and_leaves_no_row(stack, database_url, idp) -> None:
    port = free_port()
    env = {**presign_env(idp), "DROPGATE_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    child = stack.start_function("presign", port=port, extra_env=env, label="presign-no-storage")
    subject = user()
    try:
        reply = call("POST", f"http://127.0.0.1:{port}/uploads", token=idp.token(subject),
                     json_body={"filename": "a.txt", "size": 100, "content_type": "text/plain"})
        assert reply.status == 503, reply.body
    finally:
        child.stop()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM uploads WHERE owner = %s", (subject,)).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM audit_log WHERE actor = %s", (subject,)).fetchone()[0] == 0


def test_no_environment_variable_is_read_outside_settings() -> None:
    """presign's behaviour comes from the settings object only (a typo in a variable name fails at start-up)."""
    modules = [*PRESIGN_MAIN.parent.glob("*.py"), *(PRESIGN_MAIN.parents[2] / "shared" / "uploads").glob("*.py")]
    assert len(modules) > 5
    source = "".join(module.read_text() for module in modules)
    assert "os.environ" not in source and "getenv" not in source
    assert os.environ is not None
