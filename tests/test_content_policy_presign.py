"""presign applies the content policy's cheap half at create: declared type and file name (docs/content-policy.md).

Real presign, PostgreSQL and SeaweedFS, as in tests/test_presign.py, with an allow-list narrowed to
`image/*,application/pdf` and the default deny-list.
"""

from __future__ import annotations

import psycopg
import pytest

from dropgate_local.client import Reply, call
from dropgate_local.processes import free_port
from shared.platform.storage import create_s3_client
from tests.test_presign import idp, presign_env, user  # noqa: F401 - idp is a fixture

ALLOWED = "image/*,application/pdf"


@pytest.fixture(scope="module")
def presign(stack, database_url, unwatched, idp) -> str:
    port = free_port()
    env = {**presign_env(idp), "DROPGATE_ALLOWED_CONTENT_TYPES": ALLOWED}
    env.pop("DROPGATE_DENIED_CONTENT", None)  # the default deny-list
    stack.start_function("presign", port=port, extra_env=env, label="presign-content-policy")
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def s3(unwatched):  # noqa: ANN201 - boto3 client
    return create_s3_client(unwatched)


def multipart_uploads(s3, bucket: str) -> set[str]:  # noqa: ANN001
    return {u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}


def nothing_recorded_for(database_url: str, subject: str) -> bool:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT count(*) FROM uploads WHERE owner = %s", (subject,)).fetchone()[0]
        audits = conn.execute("SELECT count(*) FROM audit_log WHERE actor = %s", (subject,)).fetchone()[0]
    return rows == 0 and audits == 0


def create(presign: str, token: str, filename: str, content_type: str) -> Reply:
    return call("POST", f"{presign}/uploads", token=token,
                json_body={"filename": filename, "size": 1000, "content_type": content_type})


@pytest.mark.parametrize(("filename", "content_type", "detail"), [
    ("setup.exe", "application/pdf",
     "file name 'setup.exe' has the extension of executable content, which is not accepted here"),
    # The hostile names tests/test_security.py sanitises (with executables allowed there): refused by default.
    ("..\\..\\Windows\\System32\\cmd.exe", "application/pdf",
     "file name 'cmd.exe' has the extension of executable content, which is not accepted here"),
    ("invoice\u202efdp.exe", "application/pdf",
     "file name 'invoicefdp.exe' has the extension of executable content, which is not accepted here"),
    ("tool", "application/x-msdownload",
     "content type application/x-msdownload is executable content, which is not accepted here"),
    ("install.sh", "image/png", "file name 'install.sh' has the extension of a script, which is not accepted here"),
    ("app.jar", "application/pdf", "file name 'app.jar' has the extension of Java code, which is not accepted here"),
    ("numbers.csv", "text/csv", f"content type text/csv is not allowed here (allowed: {ALLOWED.replace(',', ', ')})"),
    ("blob", "application/octet-stream",
     f"content type application/octet-stream is not allowed here (allowed: {ALLOWED.replace(',', ', ')})"),
])
def test_refused_at_create_with_415_and_nothing_created(presign, idp, s3, unwatched, database_url,
                                                        filename, content_type, detail) -> None:
    subject = user()
    before = multipart_uploads(s3, unwatched.uploads_bucket)
    reply = create(presign, idp.token(subject), filename, content_type)
    assert reply.status == 415, reply.body
    assert reply.json() == {"error": "unsupported_media_type", "detail": detail}
    assert nothing_recorded_for(database_url, subject)
    assert multipart_uploads(s3, unwatched.uploads_bucket) <= before


def test_the_companion_route_applies_the_same_policy(presign, idp, s3, unwatched, database_url) -> None:
    subject = user()
    before = multipart_uploads(s3, unwatched.uploads_bucket)
    reply = call("POST", f"{presign}/s3/multipart", token=idp.token(subject),
                 json_body={"filename": "setup.exe", "type": "image/png",
                            "metadata": {"name": "setup.exe", "size": 1000}})
    assert reply.status == 415, reply.body
    assert "setup.exe" in reply.json()["detail"] and "executable" in reply.json()["detail"]
    refused_type = call("POST", f"{presign}/s3/multipart", token=idp.token(subject),
                        json_body={"filename": "a.csv", "type": "text/csv", "metadata": {"size": 10}})
    assert refused_type.status == 415 and "not allowed here" in refused_type.json()["detail"]
    assert nothing_recorded_for(database_url, subject)
    assert multipart_uploads(s3, unwatched.uploads_bucket) <= before


@pytest.mark.parametrize(("filename", "content_type"), [
    ("cat.png", "image/png"), ("report.pdf", "application/pdf"), ("logo.svg", "image/svg+xml"),
    ("firmware.bin", "image/x-raw-camera"),
])
def test_allowed_content_is_created(presign, idp, filename, content_type) -> None:
    reply = create(presign, idp.token(user()), filename, content_type)
    assert reply.status == 201, reply.body
    assert reply.json()["content_type"] == content_type
