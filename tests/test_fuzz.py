"""An OpenAPI-driven fuzz of presign: schemathesis generates requests from functions/presign/openapi.json.

A real presign process (real PostgreSQL and SeaweedFS, unwatched buckets) gets every operation
of its own document with data that fits the schema and data that does not, with a valid token.
Whatever it gets, it must never answer 5xx, and every 4xx must be the `{error, detail}` JSON the
document promises. Path parameters are now and then swapped for ids that exist (an upload of the
fuzzing user, and one of somebody else), so the fuzz reaches past the 404s too.

`DROPGATE_FUZZ_EXAMPLES` sets the examples per operation (30 by default; more finds more).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import psycopg
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from dropgate_local.client import call
from dropgate_local.processes import free_port
from tests.test_presign import IdentityProvider, idp, presign_env  # noqa: F401 - idp is a fixture

OPENAPI = Path(__file__).resolve().parents[1] / "functions" / "presign" / "openapi.json"
EXAMPLES = int(os.environ.get("DROPGATE_FUZZ_EXAMPLES", "30"))

schema = schemathesis.openapi.from_path(OPENAPI, config=schemathesis.Config.from_dict(
    {"generation": {"mode": "all", "max-examples": EXAMPLES}}))
# Ids the fuzz may use instead of random strings, filled in by the fixture (module-level: hooks run at generation).
KNOWN_IDS: dict[str, list[str]] = {"upload_id": [], "file_id": [], "storage_upload_id": []}


@schema.hook
def flatmap_path_parameters(context, path_parameters):  # noqa: ANN001, ANN201 - schemathesis hook
    names = [name for name in path_parameters or {} if KNOWN_IDS.get(name)]
    if not names:
        return st.just(path_parameters)
    return st.fixed_dictionaries({
        name: (st.sampled_from(KNOWN_IDS[name]) | st.just(value)) if name in names else st.just(value)
        for name, value in path_parameters.items()})


class FuzzTarget:
    def __init__(self, url: str, subject: str, token: str) -> None:
        self.url, self.subject, self.token = url, subject, token


@pytest.fixture(scope="module")
def target(stack, database_url, unwatched, idp) -> Iterator[FuzzTarget]:  # noqa: F811 - the imported fixture
    port = free_port()
    # Limits out of the fuzz's way (the limits have their own tests); everything else as deployed.
    env = {**presign_env(idp), "DROPGATE_RATE_LIMIT_PER_MINUTE": "1000000", "DROPGATE_MAX_OPEN_UPLOADS": "100000",
           "DROPGATE_MAX_BYTES_PER_DAY": "1000000GiB"}
    child = stack.start_function("presign", port=port, extra_env=env, label="presign-fuzz")
    url = f"http://127.0.0.1:{port}"
    subject = f"fuzz-{uuid.uuid4().hex[:8]}"
    token = idp.token(subject, roles=("uploader", "admin"), lifetime=3600)
    other = idp.token(f"fuzz-other-{uuid.uuid4().hex[:8]}", lifetime=3600)
    for owner in (token, token, token, token, other):
        created = call("POST", f"{url}/uploads", token=owner,
                       json_body={"filename": "seed.bin", "size": 6 * 1024 * 1024,
                                  "content_type": "application/octet-stream"})
        assert created.status == 201, created.body
        record = created.json()
        KNOWN_IDS["upload_id"].append(record["id"])
        KNOWN_IDS["file_id"].append(record["id"])
        KNOWN_IDS["storage_upload_id"].append(record["upload_id"])
    # One completed upload the scan called clean, so downloads and holds answer 200 too.
    data = b"clean bytes"
    created = call("POST", f"{url}/uploads", token=token, json_body={"filename": "clean.txt", "size": len(data),
                                                                     "content_type": "text/plain"}).json()
    signed = call("POST", f"{url}/uploads/{created['id']}/parts", token=token,
                  json_body={"parts": [{"number": 1}]}).json()["parts"][0]
    etag = call("PUT", signed["url"], data=data).header("ETag")
    done = call("POST", f"{url}/uploads/{created['id']}/complete", token=token,
                json_body={"parts": [{"number": 1, "etag": etag}]})
    assert done.status == 200, done.body
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE uploads SET status = 'clean', scan_verdict = 'clean' WHERE id = %s", (created["id"],))
    KNOWN_IDS["upload_id"].append(created["id"])
    KNOWN_IDS["file_id"].append(created["id"])
    KNOWN_IDS["storage_upload_id"].append(created["upload_id"])
    yield FuzzTarget(url, subject, token)
    child.stop()


@schema.parametrize()
@hypothesis.settings(deadline=None, suppress_health_check=list(hypothesis.HealthCheck), derandomize=True)
def test_no_request_gets_a_5xx(case, target: FuzzTarget) -> None:
    response = case.call(base_url=target.url, headers={"Authorization": f"Bearer {target.token}"}, timeout=30)
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code >= 400:
        content_type = {k.lower(): v for k, v in response.headers.items()}.get("content-type", [""])
        assert "application/json" in str(content_type), (response.status_code, case.as_curl_command(), response.text[:300])
        body = json.loads(response.content)
        assert set(body) == {"error", "detail"} and body["detail"], (response.status_code, body)


def test_the_fuzz_left_nothing_half_created(target: FuzzTarget, database_url, s3_client, unwatched) -> None:
    """Whatever the fuzz did, each of its uploads agrees with storage: pending ones have their multipart
    upload, ended ones have none, and no row lacks the multipart upload it was created with. A row
    registered for a write the browser makes itself (Uppy 6's `/s3/sign`, Companion's `/s3/params`) has
    no multipart upload of presign's, and storage holds none under its key."""
    from botocore.exceptions import ClientError

    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT object_key, storage_upload_id, status FROM uploads WHERE owner = %s",
                            (target.subject,)).fetchall()
    assert len(rows) > len(KNOWN_IDS["upload_id"]) - 1, "the fuzz created no upload of its own"
    for key, storage_upload_id, status in rows:
        if storage_upload_id is None:
            assert status in ("pending", "aborted"), (key, status)
            opened = s3_client.list_multipart_uploads(Bucket=unwatched.uploads_bucket, Prefix=key).get("Uploads", [])
            assert opened == [], (key, opened)
            continue
        try:
            s3_client.list_parts(Bucket=unwatched.uploads_bucket, Key=key, UploadId=storage_upload_id)
            in_storage = True
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "NoSuchUpload", exc
            in_storage = False
        assert in_storage == (status == "pending"), (key, status)


@pytest.fixture(scope="module")
def s3_client(unwatched):  # noqa: ANN201
    from shared.platform.storage import create_s3_client

    return create_s3_client(unwatched)
