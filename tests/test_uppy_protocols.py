"""Uppy 6's two ways of talking to dropgate, request by request, against real presign and SeaweedFS.

Each test sends exactly what @uppy/aws-s3 6.3.1 sends (src/s3-client/S3mini.ts for signRequest mode,
src/s3-client/CompanionS3.ts for Companion mode), then sends the signed request to storage the way the
plugin does. The browser end to end runs in tests/test_browser_uppy.py; here each refusal is pinned.
"""

from __future__ import annotations

import re
import time
import uuid
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import psycopg
import pytest
import urllib3

from dropgate_local.client import Reply, call, split
from dropgate_local.devauth import DevSigningKey, issuer_url
from dropgate_local.stack import HOST
from tests.conftest import EICAR
from tests.test_presign import MIB, idp, payload, presign, row, s3, user  # noqa: F401 - fixtures

XML_UPLOAD_ID = re.compile(rb"<UploadId>([^<]+)</UploadId>")


def sign(presign: str, token: str, **request: object) -> Reply:
    return call("POST", f"{presign}/s3/sign", token=token, json_body=request)


def send(signed: dict, method: str, data: bytes = b"", content_type: str | None = None) -> Reply:
    """What the plugin's XHR does with a signed answer: the method, the URL, the headers, the body."""
    headers = dict(signed.get("headers") or {})
    if content_type and not any(name.lower() == "content-type" for name in headers):
        headers["Content-Type"] = content_type
    return call(method, signed["url"], data=data, headers=headers)


def test_sign_request_put_object_is_registered_and_bound_to_the_declared_length(presign, idp, s3, unwatched,
                                                                               database_url) -> None:
    token = idp.token(user())
    data = payload(3 * MIB + 11, seed=21)
    reply = sign(presign, token, method="PUT", key="uppy-file-id", contentType="application/pdf",
                 size=len(data), filename="scan.pdf")
    assert reply.status == 200, reply.body
    signed = reply.json()
    key = signed["key"]
    assert key.startswith("uploads/") and key != "uppy-file-id", "dropgate picks the key; the plugin takes it"
    assert "content-length" not in {name.lower() for name in signed["headers"]}, "a page cannot set it"
    upload = row(database_url, key.rsplit("/", 1)[-1])
    assert (upload["status"], upload["declared_size"], upload["storage_upload_id"]) == ("pending", len(data), None)
    assert send(signed, "PUT", data + b"x").status == 403, "one byte more than declared"
    assert send(signed, "PUT", data[:-1]).status == 403, "one byte less"
    assert send(signed, "PUT", data).status == 200
    again = send(signed, "PUT", payload(len(data), seed=99))
    assert again.status == 412, "the URL cannot replace what it stored (If-None-Match: *), within its expiry too"
    stored = s3.get_object(Bucket=unwatched.uploads_bucket, Key=key)
    assert stored["Body"].read() == data and stored["ContentType"] == "application/pdf"
    assert stored["Metadata"]["upload-id"] == str(upload["id"]), "the object names its upload, as presign's do"


def test_a_retried_file_gets_its_pending_upload_back(presign, idp, database_url) -> None:
    """The plugin asks for a PutObject again when it retries a file from the start (network back, reload):
    the same file under the same handle is the same upload, not a second one against the limits."""
    token, handle = idp.token(user()), f"uppy-{uuid.uuid4().hex[:8]}"
    first = sign(presign, token, method="PUT", key=handle, contentType="text/plain", size=100, filename="a.txt")
    again = sign(presign, token, method="PUT", key=handle, contentType="text/plain", size=100, filename="a.txt")
    assert first.status == again.status == 200
    assert again.json()["key"] == first.json()["key"]
    other_file = sign(presign, token, method="PUT", key=handle, contentType="text/plain", size=101, filename="a.txt")
    assert other_file.json()["key"] != first.json()["key"], "another file under a reused handle is a new upload"
    someone_else = sign(presign, idp.token(user()), method="PUT", key=handle, contentType="text/plain", size=100,
                        filename="a.txt")
    assert someone_else.json()["key"] != first.json()["key"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE uploads SET status = 'aborted' WHERE object_key = %s", (first.json()["key"],))
    after_cancel = sign(presign, token, method="PUT", key=handle, contentType="text/plain", size=100, filename="a.txt")
    assert after_cancel.json()["key"] not in (first.json()["key"], other_file.json()["key"])


def test_sign_request_multipart_upload_from_create_to_complete(presign, idp, s3, unwatched, database_url) -> None:
    token = idp.token(user())
    data = payload(12 * MIB + 5, seed=22)
    # The plugin's CreateMultipartUpload request has no contentType: the page adds the file's `type`.
    created = sign(presign, token, method="POST", key="uppy-file-id", type="application/pdf",
                   size=len(data), filename="clip.pdf")
    assert created.status == 200, created.body
    key = created.json()["key"]
    assert created.json()["headers"]["Content-Type"] == "application/pdf", "the declared type is signed in"
    started = send(created.json(), "POST", content_type="application/octet-stream")
    assert started.status == 200, started.body
    storage_upload_id = XML_UPLOAD_ID.search(started.body).group(1).decode()
    etags = {}
    for number, chunk in enumerate(split(data, 5 * MIB), start=1):  # Uppy's own split for 12 MiB
        part = sign(presign, token, method="PUT", key=key, uploadId=storage_upload_id, partNumber=number)
        assert part.status == 200, part.body
        if number == 1:
            assert send(part.json(), "PUT", chunk + b"!").status == 403, "the part's length is signed in"
        put = send(part.json(), "PUT", chunk)
        assert put.status == 200, put.body
        etags[number] = put.header("ETag")
    assert row(database_url, key.rsplit("/", 1)[-1])["storage_upload_id"] == storage_upload_id, "bound at part 1"
    listed = send(sign(presign, token, method="GET", key=key, uploadId=storage_upload_id).json(), "GET")
    assert listed.status == 200 and listed.body.count(b"<PartNumber>") == 3
    body = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in etags.items())
    finish = sign(presign, token, method="POST", key=key, uploadId=storage_upload_id)
    done = send(finish.json(), "POST", f"<CompleteMultipartUpload>{body}</CompleteMultipartUpload>".encode(),
                content_type="application/xml")
    assert done.status == 200, done.body
    stored = s3.get_object(Bucket=unwatched.uploads_bucket, Key=key)
    assert stored["Body"].read() == data and stored["ContentType"] == "application/pdf"


def test_sign_request_refusals_say_why(presign, idp, database_url) -> None:
    owner, other = idp.token(user()), idp.token(user())
    no_size = sign(presign, owner, method="PUT", key="f", contentType="text/plain")
    assert no_size.status == 400 and no_size.json()["error"] == "size_required"
    assert "docs/uploader.md" in no_size.json()["detail"]
    assert sign(presign, owner, method="PUT", key="f", size=2 * 1024**4, filename="f").status == 413
    assert sign(presign, owner, method="PATCH", key="f").status == 400
    assert sign(presign, owner, method="PUT", key="k", uploadId="u").status == 400, "an UploadPart needs partNumber"
    assert sign(presign, owner, method="DELETE", key="anything").status == 403, "DeleteObject is never signed"
    created = sign(presign, owner, method="POST", key="f", size=6 * MIB, filename="f.bin").json()
    key = created["key"]
    # Another user learns nothing about the upload: not found, whatever they ask.
    for request in ({"method": "PUT", "uploadId": "u1", "partNumber": 1}, {"method": "GET", "uploadId": "u1"},
                    {"method": "POST", "uploadId": "u1"}, {"method": "DELETE", "uploadId": "u1"}):
        assert sign(presign, other, key=key, **request).status == 404
    assert sign(presign, owner, method="PUT", key=key, uploadId="u1", partNumber=3).status == 400, "2 parts only"
    assert sign(presign, owner, method="PUT", key=key, uploadId="u1", partNumber=1).status == 200
    moved = sign(presign, owner, method="PUT", key=key, uploadId="u2", partNumber=2)
    assert moved.status == 409, "the row is bound to the first multipart upload named"
    assert sign(presign, owner, method="PUT", key=f"uploads/x/{uuid.uuid4()}", uploadId="u1",
                partNumber=1).status == 404
    aborted = sign(presign, owner, method="DELETE", key=key, uploadId="u1")
    assert aborted.status == 200 and "uploadId=u1" in aborted.json()["url"]
    assert row(database_url, key.rsplit("/", 1)[-1])["status"] == "aborted"
    assert sign(presign, owner, method="PUT", key=key, uploadId="u1", partNumber=1).status == 409


def test_companion_params_answers_a_post_policy_for_exactly_the_declared_file(presign, idp, s3, unwatched,
                                                                              database_url) -> None:
    token = idp.token(user())
    data = payload(2 * MIB + 3, seed=23)
    query = {"filename": "notes.txt", "type": "text/plain", "metadata[name]": "notes.txt",
             "metadata[type]": "text/plain", "metadata[size]": str(len(data))}
    reply = call("GET", f"{presign}/s3/params?{urlencode(query)}", token=token)
    assert reply.status == 200, reply.body
    answer = reply.json()
    assert answer["method"] == "POST" and answer["fields"]["Content-Type"] == "text/plain"
    key = answer["fields"]["key"]
    assert row(database_url, key.rsplit("/", 1)[-1])["declared_size"] == len(data)

    def post(body: bytes) -> urllib3.BaseHTTPResponse:
        form, content_type = urllib3.encode_multipart_formdata([*answer["fields"].items(), ("file", ("n", body))])
        return urllib3.request("POST", answer["url"], body=form, headers={"Content-Type": content_type},
                               retries=False)

    assert post(data + b"x").status == 400
    assert post(data).status in (200, 204)
    assert s3.get_object(Bucket=unwatched.uploads_bucket, Key=key)["Body"].read() == data
    missing = call("GET", f"{presign}/s3/params?filename=a.txt&type=text/plain", token=token)
    assert missing.status == 400 and missing.json()["error"] == "size_required"
    assert "setFileMeta" in missing.json()["detail"], "the answer says how to fix the page"


def test_companion_mode_retries_under_the_files_ref_get_the_same_upload(presign, idp) -> None:
    """With the page's `ref` metadata (the Uppy file id), a file the plugin starts again is the same upload;
    without it, or for another file under the same ref, it is a new one."""
    token, ref = idp.token(user()), f"uppy-{uuid.uuid4().hex[:8]}"

    def params(size: int, **extra: str) -> str:
        query = urlencode({"filename": "a.txt", "type": "text/plain", "metadata[size]": str(size), **extra})
        reply = call("GET", f"{presign}/s3/params?{query}", token=token)
        assert reply.status == 200, reply.body
        return reply.json()["fields"]["key"]

    first = params(10, **{"metadata[ref]": ref})
    assert params(10, **{"metadata[ref]": ref}) == first
    assert params(11, **{"metadata[ref]": ref}) != first, "another file under a reused ref"
    assert params(10) != params(10), "no ref: each start is a registration of its own"

    def multipart() -> str:
        reply = call("POST", f"{presign}/s3/multipart", token=token, json_body={
            "filename": "b.bin", "type": "application/octet-stream", "metadata": {"size": 6 * MIB, "ref": ref}})
        assert reply.status == 200, reply.body
        return reply.json()["uploadId"]

    assert multipart() == multipart()


def test_companion_params_by_cookie_only_from_the_sites_own_pages(presign, idp, stack) -> None:
    token = idp.token(user())
    url = f"{presign}/s3/params?{urlencode({'filename': 'a.txt', 'type': 'text/plain', 'metadata[size]': '10'})}"
    cookie = {"Cookie": f"dropgate_token={token}"}
    refused = call("GET", url, headers=cookie)
    assert refused.status == 403 and "same-origin" in refused.json()["detail"]
    sibling = call("GET", url, headers={**cookie, "Sec-Fetch-Site": "same-site"})
    assert sibling.status == 403, "a sibling subdomain is same-site, and still not this site's page"
    own = call("GET", url, headers={**cookie, "Sec-Fetch-Site": "same-origin"})
    assert own.status == 200, own.body


def test_companion_upload_ids_are_dropgates_and_old_storage_ids_still_work(presign, idp, database_url) -> None:
    token = idp.token(user())
    created = call("POST", f"{presign}/s3/multipart", token=token,
                   json_body={"filename": "c.bin", "type": "application/octet-stream", "metadata": {"size": 6 * MIB}})
    assert created.status == 200, created.body
    handle, key = created.json()["uploadId"], created.json()["key"]
    assert str(uuid.UUID(handle)) == handle and handle == key.rsplit("/", 1)[-1]
    storage_id = row(database_url, handle)["storage_upload_id"]
    for upload_id in (handle, storage_id):
        signed = call("GET", f"{presign}/s3/multipart/{upload_id}/1?key={quote(key)}", token=token)
        assert signed.status == 200, (upload_id, signed.body)
        assert parse_qs(urlsplit(signed.json()["url"]).query)["uploadId"] == [storage_id]
    # A storage UploadId with `/` (the plugin escapes it as %2F) is looked up, not split into path segments.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE uploads SET storage_upload_id = %s WHERE id = %s", (f"{storage_id}/x+y=", handle))
    escaped = quote(f"{storage_id}/x+y=", safe="")
    signed = call("GET", f"{presign}/s3/multipart/{escaped}/2?key={quote(key)}", token=token)
    assert signed.status == 200, signed.body
    assert parse_qs(urlsplit(signed.json()["url"]).query)["uploadId"] == [f"{storage_id}/x+y="]


def test_uppy_versions_header_is_allowed_by_cors(presign, stack) -> None:
    origin = f"http://127.0.0.1:{stack.ports.web}"
    reply = call("OPTIONS", f"{presign}/s3/multipart", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,uppy-versions"})
    assert reply.status == 204
    assert "uppy-versions" in reply.header("Access-Control-Allow-Headers").lower()


@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_the_bucket_lets_the_web_origin_post_and_delete(stack, storage, method) -> None:
    """Uppy 6 POSTs policy forms and its own CreateMultipartUpload/Complete, and DELETEs its abort."""
    origin = f"http://127.0.0.1:{stack.ports.web}"
    reply = call("OPTIONS", f"{storage.endpoint_url}/{storage.uploads_bucket}/uploads/x", headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "content-type,x-amz-meta-upload-id"})
    assert reply.status == 200, reply.body
    assert method in reply.header("Access-Control-Allow-Methods")


def test_an_object_replaced_after_its_clean_verdict_is_not_served_and_is_judged_again(stack, running_functions,
                                                                                       database_url) -> None:
    """A POST policy stays valid for minutes and storage cannot make a form upload conditional, so its owner
    can send other bytes of the same length after the clean verdict. Through the real pipeline: the
    download is refused the moment storage holds another object than the judged one, and the storage
    event sends the upload back to the scan, which finds the EICAR."""
    presign = running_functions["presign"]
    key_pair = DevSigningKey.load_or_create(stack.data_dir / "dev-oidc")
    token = key_pair.mint(subject=user(), roles=["uploader"], issuer=issuer_url(HOST, stack.ports.dev_oidc))
    harmless = b"x" * len(EICAR)
    query = urlencode({"filename": "note.txt", "type": "text/plain", "metadata[size]": str(len(harmless))})
    answer = call("GET", f"{presign}/s3/params?{query}", token=token).json()
    upload_id = answer["fields"]["key"].rsplit("/", 1)[-1]

    def post(body: bytes) -> int:
        form, content_type = urllib3.encode_multipart_formdata([*answer["fields"].items(), ("file", ("n", body))])
        return urllib3.request("POST", answer["url"], body=form, headers={"Content-Type": content_type},
                               retries=False).status

    def status() -> str:
        return row(database_url, upload_id)["status"]

    assert post(harmless) in (200, 204)
    wait_for(lambda: status() == "clean", "the harmless file's clean verdict")
    assert call("GET", f"{presign}/files/{upload_id}/download", token=token).status == 200
    assert post(EICAR) in (200, 204), "storage takes the form again: nothing in S3 can make a POST conditional"
    refused = call("GET", f"{presign}/files/{upload_id}/download", token=token)
    assert refused.status == 409 and "changed after it was checked" in refused.json()["detail"], refused.body
    wait_for(lambda: status() == "infected", "the replacement judged again")
    assert call("GET", f"{presign}/files/{upload_id}/download", token=token).status == 403
    with psycopg.connect(database_url) as conn:
        actions = [a for (a,) in conn.execute("SELECT action FROM audit_log WHERE upload_id = %s ORDER BY id",
                                              (upload_id,))]
    assert "upload.replaced_after_verdict" in actions, actions


def wait_for(condition, what: str, timeout: float = 120) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)
