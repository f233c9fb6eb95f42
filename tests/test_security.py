"""Bad input against real processes: each gets a 4xx that says why, and leaves no state behind.

What tests/test_presign.py, tests/test_storage_events.py and the function tests already
prove (bad tokens of every kind, roles, another user's upload invisible, limits, the size lie,
malformed create bodies, missing or wrong webhook tokens) is not repeated here; SECURITY.md maps
every claim to its test. This module adds:

- filenames with path traversal, control and bidi characters: stored sanitised, never in the key,
  and served back in a Content-Disposition that cannot be split or spoofed;
- sizes zero, huge and not integers; part numbers out of range or of the wrong type;
- completing (and aborting, and signing for) somebody else's upload whose parts are all stored;
- oversized, deeply nested and otherwise malformed JSON;
- forged storage webhooks (no token, a wrong one, the token where it does not belong) against the
  running pipeline: nothing is routed, no row moves;
- what a signed part URL allows (its part, its upload, its key, PUT, until it expires) and that
  storage serves nothing without a signature;
- malformed CloudEvents posted straight to scan, metadata, expire and reconcile.

presign here has a bucket pair of its own, so "nothing left behind" is checked by counting what
storage holds in it, not by guessing keys.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import uuid
from dataclasses import replace

import psycopg
import pytest

from dropgate_local.client import DropgateClient, Reply, b64sha, call
from dropgate_local.devauth import DevSigningKey, issuer_url
from dropgate_local.processes import free_port
from shared.platform.storage import create_s3_client, set_up_buckets
from tests.conftest import as_broker
from tests.test_presign import idp, payload, presign_env  # noqa: F401 - idp is a fixture

MIB = 1024 * 1024
KEY_SHAPE = re.compile(r"^uploads/\d{4}/\d{2}/\d{2}/[0-9a-f-]{36}$")
BUCKETS = {"DROPGATE_UPLOADS_BUCKET": "security-uploads", "DROPGATE_QUARANTINE_BUCKET": "security-quarantine"}


@pytest.fixture(scope="module")
def buckets(storage):  # noqa: ANN201 - StorageSettings of this module's bucket pair
    settings = replace(storage, uploads_bucket=BUCKETS["DROPGATE_UPLOADS_BUCKET"],
                       quarantine_bucket=BUCKETS["DROPGATE_QUARANTINE_BUCKET"])
    set_up_buckets(settings)
    return settings


@pytest.fixture(scope="module")
def s3(buckets):  # noqa: ANN201
    return create_s3_client(buckets)


@pytest.fixture(scope="module")
def presign(stack, database_url, buckets, idp) -> str:  # noqa: F811 - the imported fixture
    port = free_port()
    env = {**presign_env(idp), **BUCKETS, "DROPGATE_RATE_LIMIT_PER_MINUTE": "100000",
           "DROPGATE_MAX_OPEN_UPLOADS": "1000", "DROPGATE_MAX_BYTES_PER_DAY": "100000GiB",
           # Executables allowed here, so the filename sanitiser below still sees hostile `.exe` names;
           # the default deny-list refusing them at create is tests/test_content_policy_presign.py.
           "DROPGATE_DENIED_CONTENT": "script,active-markup,java"}
    child = stack.start_function("presign", port=port, extra_env=env, label="presign-security")
    yield f"http://127.0.0.1:{port}"
    child.stop()


def user() -> str:
    return f"sec-{uuid.uuid4().hex[:10]}"


def storage_state(s3, buckets) -> tuple[int, int]:  # noqa: ANN001
    """(objects, unfinished multipart uploads) in this module's buckets."""
    objects = sum(s3.list_objects_v2(Bucket=b).get("KeyCount", 0) for b in (buckets.uploads_bucket,
                                                                             buckets.quarantine_bucket))
    multipart = len(s3.list_multipart_uploads(Bucket=buckets.uploads_bucket).get("Uploads", []))
    return objects, multipart


def db_counts(database_url: str, subject: str) -> tuple[int, int]:
    """(uploads, audit entries) of one user."""
    with psycopg.connect(database_url) as conn:
        uploads = conn.execute("SELECT count(*) FROM uploads WHERE owner = %s", (subject,)).fetchone()[0]
        audit = conn.execute("SELECT count(*) FROM audit_log WHERE actor = %s", (subject,)).fetchone()[0]
    return uploads, audit


def assert_refused(reply: Reply, status: int, words: str) -> None:
    assert reply.status == status, (reply.status, reply.body[:300])
    body = reply.json()
    assert body["error"] and words in body["detail"], body


def create(presign: str, token: str, **fields: object) -> Reply:
    defaults = {"filename": "a.bin", "size": 10, "content_type": "application/octet-stream"}
    return DropgateClient(presign, token).create(**{**defaults, **fields})


def upload_all_parts(presign: str, token: str, upload: dict, data: bytes) -> dict[int, str]:
    etags, _ = DropgateClient(presign, token).upload_parts(upload, data)
    return etags


# -- filenames --

@pytest.mark.parametrize(("raw", "stored"), [
    ("../../etc/passwd", "passwd"),
    ("..\\..\\Windows\\System32\\cmd.exe", "cmd.exe"),
    ("/var/www/html/index.php", "index.php"),
    ("report\x00.pdf\r\nX-Injected: yes", "report.pdfX-Injected yes"),
    ("\x1b[31mred\x1b[0m.txt", "[31mred[0m.txt"),
    ("invoice\u202efdp.exe", "invoicefdp.exe"),  # RIGHT-TO-LEFT OVERRIDE would show "exe.pdf"
    ('a"; filename="evil.exe', "a; filename=evil.exe"),
    ("..", "file"),
    ("/", "file"),
    ("x" * 500 + ".pdf", "x" * 200),
])
def test_filenames_are_sanitised_and_never_reach_the_key(presign, idp, s3, buckets, database_url,  # noqa: F811
                                                         raw: str, stored: str) -> None:
    subject = user()
    reply = create(presign, idp.token(subject), filename=raw)
    assert reply.status == 201, reply.body
    upload = reply.json()
    assert upload["filename"] == stored
    assert KEY_SHAPE.match(upload["key"]), upload["key"]
    # Storage knows the upload under the server's key, and its metadata carries the sanitised name only.
    listed = s3.list_multipart_uploads(Bucket=buckets.uploads_bucket, Prefix=upload["key"]).get("Uploads", [])
    assert [u["UploadId"] for u in listed] == [upload["upload_id"]]
    with psycopg.connect(database_url) as conn:
        (detail,) = conn.execute("SELECT detail FROM audit_log WHERE upload_id = %s AND action = 'upload.created'",
                                 (upload["id"],)).fetchone()
    assert detail["filename"] == stored


def test_a_hostile_filename_is_served_back_harmless(presign, idp, database_url) -> None:  # noqa: F811
    token = idp.token(user())
    data = b"plain text\n"
    upload = create(presign, token, filename="..\\x\r\nSet-Cookie: a=b\u202e\"quoted\".txt", size=len(data),
                    content_type="text/plain").json()
    etags = upload_all_parts(presign, token, upload, data)
    done = call("POST", f"{presign}/uploads/{upload['id']}/complete", token=token,
                json_body={"parts": [{"number": n, "etag": e} for n, e in etags.items()]})
    assert done.status == 200, done.body
    with psycopg.connect(database_url, autocommit=True) as conn:  # the scan's verdict, staged
        conn.execute("UPDATE uploads SET status = 'clean' WHERE id = %s", (upload["id"],))
    link = call("GET", f"{presign}/files/{upload['id']}/download", token=token)
    assert link.status == 200
    downloaded = call("GET", link.json()["url"])
    assert downloaded.status == 200 and downloaded.body == data
    disposition = downloaded.header("Content-Disposition")
    assert "\r" not in disposition and "\n" not in disposition and downloaded.header("Set-Cookie") is None
    assert disposition == ("attachment; filename=\"xSet-Cookie a_bquoted.txt\"; "
                           "filename*=UTF-8''xSet-Cookie%20a%3Dbquoted.txt")


# -- sizes --

@pytest.mark.parametrize(("size", "status", "words"), [
    (0, 400, "under the minimum"),
    (-1, 400, "size"),
    (1024 ** 3 + 1, 413, "over the limit"),
    (2 ** 63, 413, "over the limit"),
    (10 ** 40, 413, "over the limit"),
    (1.5, 400, "size"),
    (1e3, 400, "size"),
    ("100", 400, "size"),
    (True, 400, "size"),
    (None, 400, "size"),
    ([10], 400, "size"),
])
def test_bad_sizes_are_refused_and_leave_nothing(presign, idp, s3, buckets, database_url,  # noqa: F811
                                                 size, status: int, words: str) -> None:
    subject = user()
    before = storage_state(s3, buckets)
    assert_refused(create(presign, idp.token(subject), size=size), status, words)
    assert db_counts(database_url, subject) == (0, 0)
    assert storage_state(s3, buckets) == before


def test_the_largest_allowed_size_is_accepted(presign, idp) -> None:  # noqa: F811
    reply = create(presign, idp.token(user()), size=1024 ** 3)
    assert reply.status == 201 and reply.json()["part_count"] == 128


# -- part numbers --

@pytest.mark.parametrize(("number", "words"), [
    (0, "does not exist"), (-1, "does not exist"), (3, "does not exist"), (10001, "does not exist"),
    (2 ** 63, "does not exist"), ("1", "number"), (True, "number"), (1.0, "number"), (None, "number"),
])
def test_part_numbers_out_of_range_or_of_the_wrong_type(presign, idp, s3, buckets, number, words: str) -> None:  # noqa: F811
    token = idp.token(user())
    upload = create(presign, token, size=10 * MIB).json()  # parts 1 and 2
    reply = call("POST", f"{presign}/uploads/{upload['id']}/parts", token=token,
                 json_body={"parts": [{"number": 1}, {"number": number}]})
    assert_refused(reply, 400, words)
    assert "url" not in reply.body.decode()  # not even part 1's URL: the whole request is refused
    assert s3.list_parts(Bucket=buckets.uploads_bucket, Key=upload["key"],
                         UploadId=upload["upload_id"]).get("Parts", []) == []


def test_more_than_a_thousand_parts_per_request_are_refused(presign, idp) -> None:  # noqa: F811
    token = idp.token(user())
    upload = create(presign, token, size=1024 ** 3).json()
    reply = call("POST", f"{presign}/uploads/{upload['id']}/parts", token=token,
                 json_body={"parts": [{"number": 1}] * 1001})
    assert_refused(reply, 400, "at most 1000")


# -- what a signed URL allows: one part of one upload, for a while --

def _with_query(url: str, **changes: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    query.update(changes)
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, quote_via=urllib.parse.quote)))


def test_a_part_url_is_good_for_its_part_only(presign, idp, s3, buckets) -> None:  # noqa: F811
    token = idp.token(user())
    data = payload(10 * MIB, seed=41)
    first, second = create(presign, token, size=len(data)).json(), create(presign, token, size=len(data)).json()
    part = data[:8 * MIB]
    (signed,) = call("POST", f"{presign}/uploads/{first['id']}/parts", token=token,
                     json_body={"parts": [{"number": 1, "sha256": b64sha(part)}]}).json()["parts"]
    headers = {k: v for k, v in signed["headers"].items() if k.lower() != "content-length"}
    url = signed["url"]
    misuses = {
        "another part number": ("PUT", _with_query(url, partNumber="2")),
        "another multipart upload": ("PUT", _with_query(url, uploadId=second["upload_id"])),
        "another key": ("PUT", url.replace(first["key"], second["key"])),
        "a longer lifetime": ("PUT", _with_query(url, **{"X-Amz-Expires": "604800"})),
        "reading the object": ("GET", url),
        "deleting the object": ("DELETE", url),
    }
    for what, (method, target) in misuses.items():
        reply = call(method, target, data=part if method == "PUT" else None, headers=headers)
        assert reply.status == 403, (what, reply.status, reply.body[:200])
    for upload in (first, second):
        assert s3.list_parts(Bucket=buckets.uploads_bucket, Key=upload["key"],
                             UploadId=upload["upload_id"]).get("Parts", []) == []
    assert call("PUT", url, data=part, headers=headers).status == 200  # and for its own part it works


def test_a_signed_url_stops_working_when_it_expires(presign, idp, buckets) -> None:  # noqa: F811
    """Signed by the very signer presign uses, with a clock two hours back and a one-minute lifetime."""
    from shared.platform.sigv4 import PresignSigner

    token = idp.token(user())
    upload = create(presign, token, size=10).json()
    signer = PresignSigner(endpoint_url=buckets.public_endpoint_url or buckets.endpoint_url,
                           access_key_id=buckets.access_key_id, secret_access_key=buckets.secret_access_key,
                           region=buckets.region)
    from datetime import UTC, datetime, timedelta

    stale = signer.presign("PUT", buckets.uploads_bucket, upload["key"],
                           query={"partNumber": "1", "uploadId": upload["upload_id"]},
                           headers={"Content-Length": "10"}, expires_in=60,
                           now=datetime.now(UTC) - timedelta(hours=2))
    reply = call("PUT", stale.url, data=b"0123456789")
    assert reply.status == 403 and b"expired" in reply.body.lower(), reply.body[:300]


def test_storage_serves_nothing_without_a_signature(presign, idp, buckets) -> None:  # noqa: F811
    """No object is readable straight from storage: a download is a link presign signs, and only for clean files."""
    token = idp.token(user())
    data = b"not for everyone\n"
    upload = create(presign, token, size=len(data), content_type="text/plain").json()
    etags = upload_all_parts(presign, token, upload, data)
    assert call("POST", f"{presign}/uploads/{upload['id']}/complete", token=token,
                json_body={"parts": [{"number": n, "etag": e} for n, e in etags.items()]}).status == 200
    base = buckets.public_endpoint_url or buckets.endpoint_url
    for url in (f"{base}/{buckets.uploads_bucket}/{upload['key']}", f"{base}/{buckets.uploads_bucket}",
                f"{base}/{buckets.uploads_bucket}?list-type=2", f"{base}/"):
        reply = call("GET", url)
        assert reply.status == 403, (url, reply.status)
        assert data not in reply.body
    assert call("GET", f"{presign}/files/{upload['id']}/download", token=token).status == 409  # not scanned yet


# -- somebody else's upload --

def test_nobody_can_complete_abort_or_sign_another_users_stored_upload(presign, idp, s3, buckets,  # noqa: F811
                                                                        database_url) -> None:
    alice, bob = user(), user()
    alice_token, bob_token = idp.token(alice), idp.token(bob)
    data = payload(9 * MIB, seed=31)
    upload = create(alice_token and presign, alice_token, size=len(data)).json()
    etags = upload_all_parts(presign, alice_token, upload, data)
    parts = {"parts": [{"number": n, "etag": e} for n, e in etags.items()]}
    key_query = f"key={urllib.parse.quote(upload['key'], safe='')}"

    # Bob knows everything a leaked link could tell him: the id, the key, the S3 UploadId, the ETags.
    attempts = [
        call("POST", f"{presign}/uploads/{upload['id']}/complete", token=bob_token, json_body=parts),
        call("POST", f"{presign}/s3/multipart/{upload['upload_id']}/complete?{key_query}", token=bob_token,
             json_body={"parts": [{"PartNumber": n, "ETag": e} for n, e in etags.items()]}),
        call("POST", f"{presign}/uploads/{upload['id']}/parts", token=bob_token, json_body={"parts": [{"number": 1}]}),
        call("GET", f"{presign}/s3/multipart/{upload['upload_id']}/1?{key_query}", token=bob_token),
        call("DELETE", f"{presign}/uploads/{upload['id']}", token=bob_token),
        call("DELETE", f"{presign}/s3/multipart/{upload['upload_id']}?{key_query}", token=bob_token),
        call("GET", f"{presign}/s3/multipart/{upload['upload_id']}?{key_query}", token=bob_token),
    ]
    for reply in attempts:
        assert_refused(reply, 404, "no upload")

    with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
        assert conn.execute("SELECT status FROM uploads WHERE id = %s", (upload["id"],)).fetchone()["status"] == "pending"
    assert db_counts(database_url, bob)[1] == 0  # Bob's attempts changed nothing, so nothing was audited
    stored = s3.list_parts(Bucket=buckets.uploads_bucket, Key=upload["key"], UploadId=upload["upload_id"])["Parts"]
    assert len(stored) == 2
    done = call("POST", f"{presign}/uploads/{upload['id']}/complete", token=alice_token, json_body=parts)
    assert done.status == 200 and done.json()["status"] == "uploaded"


# -- JSON --

@pytest.mark.parametrize(("raw", "content_type", "status", "words"), [
    (b'{"filename": "a", "size": 1' + b"0" * 5000 + b"}", "application/json", 400, "malformed JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "malformed JSON"),
    (b'{"filename": "a", "size": ' + b"{" * 50_000, "application/json", 400, "malformed JSON"),
    (b'{"filename": "a", "size": NaN}', "application/json", 400, "size"),
    (b'{"filename": "a", "size": Infinity}', "application/json", 400, "size"),
    (b'{"filename": "\xff\xfe", "size": 10}', "application/json", 400, "malformed JSON"),
    (b'{"filename": "a\\ud800", "size": 10}', "application/json", 201, ""),  # a lone surrogate: sanitised away
    (b'{"filename": "a", "size": 10}', "text/plain", 415, "application/json"),
    (b"", "application/json", 400, "filename"),
    (b"null", "application/json", 400, "JSON object"),
    (b'"a string"', "application/json", 400, "JSON object"),
    (b'{"filename": "a", "size": 10}' + b" " * (256 * 1024), "application/json", 413, "larger than"),
])
def test_malformed_and_oversized_json(presign, idp, s3, buckets, database_url, raw: bytes, content_type: str,  # noqa: F811
                                      status: int, words: str) -> None:
    subject = user()
    before = storage_state(s3, buckets)
    reply = call("POST", f"{presign}/uploads", data=raw, token=idp.token(subject),
                 headers={"Content-Type": content_type})
    if status == 201:
        assert reply.status == 201, reply.body
        assert reply.json()["filename"] == "a"
        return
    assert_refused(reply, status, words)
    assert db_counts(database_url, subject) == (0, 0)
    assert storage_state(s3, buckets) == before


def test_paths_the_framework_cannot_route_are_json_refusals_too(presign, running_functions) -> None:
    """functions-framework's `/<path:path>` rule matches no path with a control character; werkzeug answered
    those with an HTML page before shared.platform.http made them `{error, detail}` like every other refusal."""
    for url in (f"{presign}/uploads/%0A", f"{presign}/s3/multipart/%0A/1", f"{running_functions['scan']}/%0A",
                f"{running_functions['storage_events']}/seaweedfs%0D%0A"):
        reply = call("GET", url)
        assert 400 <= reply.status < 500 and reply.header("Content-Type") == "application/json", (url, reply.body[:200])
        assert reply.json()["error"] and reply.json()["detail"]


def test_a_body_larger_than_its_content_length_is_not_read_past_it(presign, idp, database_url) -> None:  # noqa: F811
    """A Content-Length that under-states the body: the server reads what was announced, no more."""
    subject = user()
    body = json.dumps({"filename": "a.bin", "size": 10}).encode()
    reply = call("POST", f"{presign}/uploads", data=body, token=idp.token(subject),
                 headers={"Content-Type": "application/json", "Content-Length": str(len(body) - 5)})
    assert_refused(reply, 400, "malformed JSON")
    assert db_counts(database_url, subject) == (0, 0)


# -- forged storage webhooks, against the running pipeline --

def router_subjects(stack) -> set[str]:  # noqa: ANN001
    events = call("GET", f"http://127.0.0.1:{stack.ports.router}/events?limit=1000").json()["events"]
    return {event.get("subject") or "" for event in events}


@pytest.fixture(scope="module")
def pending_upload(running_functions, stack) -> dict:
    """A real pending upload in the pipeline's uploads bucket: what a forged "it's uploaded" would target."""
    key = DevSigningKey.load_or_create(stack.data_dir / "dev-oidc")
    token = key.mint(subject=user(), roles=["uploader"], issuer=issuer_url("127.0.0.1", stack.ports.dev_oidc))
    reply = call("POST", f"{running_functions['presign']}/uploads", token=token,
                 json_body={"filename": "f.pdf", "size": 1234, "content_type": "application/pdf"})
    assert reply.status == 201, reply.body
    return reply.json()


def forged_notifications(key: str) -> dict[str, bytes]:
    """A SeaweedFS filer 'create' and a MinIO 'CompleteMultipartUpload' for the upload's key."""
    seaweed = {"event_type": "create", "key": f"/buckets/dropgate-uploads/{key}", "message": {
        "new_parent_path": f"/buckets/dropgate-uploads/{key.rsplit('/', 1)[0]}",
        "new_entry": {"name": key.rsplit("/", 1)[1], "attributes": {"file_size": 1234, "mtime": 1764072000,
                                                                     "crtime": 1764072000, "mime": "application/pdf"},
                      "chunks": [{"file_id": "1,abc", "size": 1234, "modified_ts_ns": 1764072000000000000}]}}}
    minio = {"EventName": "s3:ObjectCreated:CompleteMultipartUpload", "Key": f"dropgate-uploads/{key}", "Records": [{
        "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "", "eventTime": "2026-11-25T12:00:00.000Z",
        "eventName": "s3:ObjectCreated:CompleteMultipartUpload",
        "responseElements": {"x-amz-request-id": "FORGED", "x-amz-id-2": "forged"},
        "s3": {"bucket": {"name": "dropgate-uploads"},
               "object": {"key": urllib.parse.quote_plus(key), "size": 1234, "eTag": "0" * 32,
                          "sequencer": "187B3C4D5E0A1B2C"}}}]}
    return {"/seaweedfs": json.dumps(seaweed).encode(), "/minio": json.dumps(minio).encode()}


@pytest.mark.parametrize("path", ["/seaweedfs", "/minio"])
# Missing, wrong and Basic tokens against a capture sink: tests/test_storage_events.py. Here, against the
# running pipeline, what nothing must come of: a wrong token, and the token anywhere but a Bearer header.
@pytest.mark.parametrize("auth", ["wrong", "query", "empty_bearer", "token_as_scheme"])
def test_forged_webhooks_are_refused_and_change_nothing(running_functions, stack, database_url, pending_upload,
                                                        path: str, auth: str) -> None:
    token = stack.secrets.webhook_token
    url = running_functions["storage_events"] + path
    headers = {"Content-Type": "application/json"}
    match auth:
        case "wrong":
            headers["Authorization"] = f"Bearer {token[:-1]}{'A' if token[-1] != 'A' else 'B'}"
        case "query":
            url += f"?token={urllib.parse.quote(token)}&access_token={urllib.parse.quote(token)}"
        case "empty_bearer":
            headers["Authorization"] = "Bearer "
        case "token_as_scheme":
            headers["Authorization"] = token
    reply = call("POST", url, data=forged_notifications(pending_upload["key"])[path], headers=headers)
    assert_refused(reply, 401, "token")
    assert reply.header("WWW-Authenticate", ).startswith("Bearer")
    assert pending_upload["key"] not in router_subjects(stack)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT status FROM uploads WHERE id = %s", (pending_upload["id"],)).fetchone()[0] == "pending"
        assert conn.execute("SELECT count(*) FROM storage_objects WHERE object_key = %s",
                            (pending_upload["key"],)).fetchone()[0] == 0


def test_a_webhook_for_a_bucket_dropgate_does_not_own_routes_nothing(running_functions, stack) -> None:
    key = f"uploads/2026/11/25/{uuid.uuid4()}"
    body = forged_notifications(key)["/minio"].replace(b"dropgate-uploads", b"someone-elses-bucket")
    reply = call("POST", running_functions["storage_events"] + "/minio", data=body, token=stack.secrets.webhook_token,
                 headers={"Content-Type": "application/json"})
    assert reply.status == 200 and reply.json() == {"accepted": 0, "ignored": 1}
    assert key not in router_subjects(stack)


def test_a_deeply_nested_webhook_body_is_a_400(running_functions, stack) -> None:
    for path in ("/minio", "/seaweedfs"):
        reply = call("POST", running_functions["storage_events"] + path, data=b"[" * 100_000 + b"]" * 100_000,
                     token=stack.secrets.webhook_token, headers={"Content-Type": "application/json"})
        assert reply.status == 400, (path, reply.status, reply.body[:200])
        assert reply.json()["detail"]


# -- malformed CloudEvents, straight to each CloudEvent function --

S3_TYPE = "com.amazonaws.s3.ObjectCreated:CompleteMultipartUpload"


def binary(event_id: str, event_type: str = S3_TYPE, **headers: str) -> dict[str, str]:
    return {"ce-specversion": "1.0", "ce-id": event_id, "ce-source": "minio:s3..dropgate-uploads",
            "ce-type": event_type, "ce-bucket": "dropgate-uploads", "Content-Type": "application/json", **headers}


def malformed_events(event_id: str) -> dict[str, tuple[dict[str, str], bytes]]:
    good_data = json.dumps({"bucket": "dropgate-uploads", "key": f"uploads/x/{event_id}", "size": 10}).encode()
    without_id = {k: v for k, v in binary(event_id).items() if k != "ce-id"}
    return {
        "no_attributes": ({"Content-Type": "application/json"}, b"{}"),
        "no_id": (without_id, good_data),
        "unknown_specversion": (binary(event_id, **{"ce-specversion": "0.1"}), good_data),
        "data_not_json": (binary(event_id), b"not json at all"),
        "data_not_an_object": (binary(event_id), b"[1, 2, 3]"),
        "data_of_wrong_types": (binary(event_id), json.dumps({"bucket": 5, "key": ["k"], "size": "big"}).encode()),
        "data_deeply_nested": (binary(event_id), b"[" * 100_000 + b"]" * 100_000),
        "structured_not_json": ({"Content-Type": "application/cloudevents+json"}, b"{not json"),
        "structured_deeply_nested": ({"Content-Type": "application/cloudevents+json"},
                                     b'{"specversion": "1.0", "id": "' + event_id.encode() + b'", "data": '
                                     + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        "structured_without_type": ({"Content-Type": "application/cloudevents+json"},
                                    json.dumps({"specversion": "1.0", "id": event_id, "source": "s"}).encode()),
        "over_one_mib": (binary(event_id), b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'),
    }


def wrong_type_events(function: str, event_id: str) -> dict[str, tuple[dict[str, str], bytes]]:
    if function in ("expire", "reconcile"):  # a storage event where a ping belongs
        data = json.dumps({"bucket": "dropgate-uploads", "key": "k", "size": 1}).encode()
        return {"storage_event_to_expire": (binary(event_id), data),
                "ping_of_no_pingsource": (binary(event_id, "dev.knative.sources.ping",
                                                 **{"ce-source": "/apis/v1/namespaces//pingsources/"}), b"{}"),
                "ping_with_another_task": (binary(event_id, "dev.knative.sources.ping", **{
                    "ce-source": f"/apis/v1/namespaces/dropgate/pingsources/dropgate-{function}"}),
                    json.dumps({"task": "delete-everything"}).encode())}
    return {"a_ping_instead": (binary(event_id, "dev.knative.sources.ping",
                                      **{"ce-source": "/apis/v1/namespaces/dropgate/pingsources/dropgate-expire"}),
                               b"{}")}


@pytest.mark.parametrize("function", ["scan", "metadata", "expire", "reconcile"])
def test_malformed_cloudevents_are_4xx_with_a_reason_and_leave_nothing(running_functions, database_url,
                                                                        function: str) -> None:
    with psycopg.connect(database_url) as conn:
        audit_before = conn.execute("SELECT max(id) FROM audit_log").fetchone()[0] or 0
    refused = {}
    ids = []
    cases = {}
    for name in (*malformed_events("x"), *wrong_type_events(function, "x")):
        event_id = f"malformed-{function}-{name}-{uuid.uuid4().hex[:8]}"
        ids.append(event_id)
        cases[name] = {**malformed_events(event_id), **wrong_type_events(function, event_id)}[name]
    for name, (headers, body) in cases.items():
        reply = call("POST", running_functions[function], data=body, headers={**headers, **as_broker(function)})
        refused[name] = reply.status
        assert 400 <= reply.status < 500, (function, name, reply.status, reply.body[:300])
        assert reply.json()["detail"], (function, name)
    assert refused["over_one_mib"] == 413
    assert call("GET", running_functions[function] + "/").status == 405
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM processed_events WHERE event_id = ANY(%s)", (ids,)).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM audit_log WHERE id > %s AND (detail->>'event_id' = ANY(%s)"
                            " OR actor = %s)", (audit_before, ids, f"system:{function}")).fetchone()[0] == 0
