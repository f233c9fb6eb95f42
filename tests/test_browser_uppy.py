"""Uppy as front-end developers bring it, unmodified, in each mode docs/uploader.md documents.

Headless Debian Chromium against the real stack (as tests/test_browser.py), with the real npm packages:
- Uppy 6 in signRequest mode: the reference page (local-dev/web), POST /s3/sign;
- Uppy 6 in Companion mode: companion.html, presign under the page's own origin at /dropgate (the local
  web server's reverse proxy, as the ingress of manifests/components/same-origin in production), the token cookie;
- Uppy 5 in Companion mode: local-dev/web-uppy5, presign on its own origin with the bearer header.
Default plugin options throughout: a 20 MB file goes in one request (PutObject, or a POST policy), a
150 MB one by multipart. Each file ends clean and downloads byte-identical; an EICAR never becomes
downloadable; a file whose length lies to the signer is refused by storage and nothing is stored.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from botocore.exceptions import ClientError

from dropgate_local.client import call
from dropgate_local.stack import UPLOADS_BUCKET
from tests.browser.uploader_page import (
    NetworkLog,
    UploaderPage,
    sha256_of,
    wait_until,
    write_payload,
)
from tests.conftest import EICAR
from tests.test_browser import (  # noqa: F401 - fixtures
    MIB,
    SCAN_TIMEOUT,
    Site,
    browser,
    s3,
    site,
    upload_until_verdict,
    user,
    wait_for_verdict,
)

MULTIPART_SIZE = 150 * MIB  # over the plugin's 100 MiB default: 30 parts of 5 MiB
ONE_REQUEST_SIZE = 20 * MIB


def open_page(site: Site, browser, path: str = "") -> UploaderPage:  # noqa: ANN001
    return UploaderPage(browser.pages[0] if browser.pages else browser.new_page(), f"{site.url}{path}").open()


def object_requests(log: NetworkLog) -> list[tuple[str, str]]:
    """Storage requests that carried file bytes: PUTs, and POSTs of a policy form (no query string)."""
    return [(method, url) for method, url in log.to_storage
            if method == "PUT" or (method == "POST" and not urlsplit(url).query)]


def upload_and_download(site: Site, browser, tmp_path: Path, *, page_path: str, size: int) -> tuple[NetworkLog, dict]:  # noqa: ANN001
    """Sign in on the page, drop a `size` file, upload it with the plugin's defaults, wait for its clean
    verdict, download it with the page's button and check it is byte-identical. The log and the upload."""
    name = f"mode-{uuid.uuid4().hex[:6]}.bin"
    source = tmp_path / name
    digest = write_payload(source, size, seed=name)
    person = user()
    page = open_page(site, browser, page_path)
    log = NetworkLog(page.page, site.stack.ports.s3_endpoint).attach()
    page.sign_in(person)
    page.drop(source)
    page.start_upload()
    page.wait_for_status(name, ("uploaded", "scanning", "clean"), timeout=180)
    wait_for_verdict(site, page, name, "clean")
    downloaded = page.download(name, tmp_path / "downloads")
    assert sha256_of(downloaded) == digest, "the download is the file that was dropped"
    return log, site.upload(person, page.file_id(name))


# -- Uppy 6, signRequest mode (the reference page) --

def test_uppy6_sign_request_mode_sends_150_mb_in_parts_and_it_downloads_intact(site: Site, browser,
                                                                               tmp_path: Path) -> None:
    before = len(site.relay.snapshot())
    log, upload = upload_and_download(site, browser, tmp_path, page_path="", size=MULTIPART_SIZE)
    assert upload["part_count"] == 30 and upload["upload_id"], upload
    assert [put.number for put in log.puts] == list(range(1, 31)), "each part once, in order"
    signs = [r for r in site.relay.snapshot()[before:] if r.path == "/s3/sign" and r.method == "POST"]
    assert len(signs) == 32, "CreateMultipartUpload, 30 UploadParts and the completion, each signed by presign"


def test_uppy6_sign_request_mode_a_length_that_lies_to_the_signer_is_refused(site: Site, browser, s3,
                                                                              tmp_path: Path) -> None:
    name = f"liar-{uuid.uuid4().hex[:6]}.bin"
    write_payload(tmp_path / name, 3 * MIB, seed=name)
    person = user()
    page = open_page(site, browser)
    log = NetworkLog(page.page, site.stack.ports.s3_endpoint).attach()

    def declare_one_byte_less(route, request) -> None:  # noqa: ANN001 - Playwright's Route and Request
        body = json.loads(request.post_data or "{}")
        if "size" in body:
            body["size"] -= 1
        route.continue_(post_data=json.dumps(body))

    page.page.route(lambda url: url.endswith("/s3/sign"), declare_one_byte_less)
    page.sign_in(person)
    page.drop(tmp_path / name)
    page.start_upload()
    wait_until(page.page, lambda: any("Storage refused" in text for text in page.notices()), 60, page.notices)
    assert f"Storage refused “{name}”: its size is not the one the upload was signed for." in " ".join(page.notices())
    assert [put.status for put in log.objects()] == [403], "storage refused the PUT: the length is signed in"
    upload = site.upload(person, page.file_id(name))
    assert upload["status"] == "pending" and upload["size"] == 3 * MIB - 1
    with pytest.raises(ClientError):
        s3.head_object(Bucket=UPLOADS_BUCKET, Key=upload["key"])


def params_one_byte_short(route, request) -> None:  # noqa: ANN001 - Playwright's Route and Request
    """Lets the page's `GET /s3/params` through with a size one byte short of the file's."""
    parts = urlsplit(request.url)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    query["metadata[size]"] = str(int(query["metadata[size]"]) - 1)
    route.continue_(url=f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(query)}")


# -- Uppy 6, Companion mode (companion.html; presign at /dropgate on the page's origin) --

@pytest.mark.parametrize(("size", "path"), [(ONE_REQUEST_SIZE, "POST policy"), (MULTIPART_SIZE, "multipart")])
def test_uppy6_companion_mode_with_default_options(site: Site, browser, tmp_path: Path, size: int,
                                                   path: str) -> None:
    before = len(site.relay.snapshot())
    log, upload = upload_and_download(site, browser, tmp_path, page_path="companion.html", size=size)
    to_presign = {r.path.split("?")[0] for r in site.relay.snapshot()[before:]}
    sent = object_requests(log)
    if path == "POST policy":
        assert [method for method, _ in sent] == ["POST"], sent
        assert "/s3/params" in to_presign and upload["upload_id"] is None
    else:
        assert [int(parse_qs(urlsplit(url).query)["partNumber"][0]) for _, url in sent] == list(range(1, 31))
        assert "/s3/multipart" in to_presign and f"/s3/multipart/{upload['id']}/complete" in to_presign, \
            "the plugin's uploadId is dropgate's upload id"


def test_uppy6_companion_mode_eicar_is_never_downloadable(site: Site, browser, tmp_path: Path) -> None:
    name = f"eicar-{uuid.uuid4().hex[:6]}.txt"
    (tmp_path / name).write_bytes(EICAR)
    page = open_page(site, browser, "companion.html")
    page.sign_in(user())
    page.drop(tmp_path / name)
    page.start_upload()
    page.wait_for_status(name, ("uploaded", "scanning", "infected"), timeout=60)
    wait_for_verdict(site, page, name, "infected")
    assert page.row(name).locator("button[data-action=download]").count() == 0


def test_uppy6_companion_mode_a_length_that_lies_to_the_signer_is_refused(site: Site, browser, s3,
                                                                           tmp_path: Path) -> None:
    name = f"liar-{uuid.uuid4().hex[:6]}.bin"
    write_payload(tmp_path / name, 3 * MIB, seed=name)
    person = user()
    page = open_page(site, browser, "companion.html")

    page.page.route(lambda url: "/dropgate/s3/params" in url, params_one_byte_short)
    page.sign_in(person)
    page.drop(tmp_path / name)
    page.start_upload()
    wait_until(page.page, lambda: any(name in text for text in page.notices()), 60, page.notices)
    page.wait_for_status(name, ("pending",), timeout=30)
    upload = site.upload(person, page.file_id(name))
    assert upload["size"] == 3 * MIB - 1
    with pytest.raises(ClientError):
        s3.head_object(Bucket=UPLOADS_BUCKET, Key=upload["key"])


# -- Uppy 5, Companion mode (local-dev/web-uppy5) --

def uppy5_upload(site: Site, browser, paths: list[Path], token: str) -> list[dict]:  # noqa: ANN001
    page = browser.pages[0] if browser.pages else browser.new_page()
    page.goto(f"{site.url}uppy5/#token={token}")
    page.wait_for_function("() => window.uppyReady === true")
    page.set_input_files("#files", [str(path) for path in paths])
    page.wait_for_function(f"() => window.uploads.length >= {len(paths)}", timeout=180_000)
    return page.evaluate("() => window.uploads")


def wait_for_api_status(site: Site, token: str, name: str, statuses: tuple[str, ...]) -> dict:
    deadline = time.monotonic() + SCAN_TIMEOUT
    while time.monotonic() < deadline:
        files = call("GET", f"{site.stack.ports.function_url('presign')}/files?mine", token=token).json()["files"]
        found = next((f for f in files if f["filename"] == name), None)
        if found and found["status"] in statuses:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{name} did not become {statuses}: {found}; router:\n{site.pipeline_report()}")


def test_uppy5_companion_mode_keeps_working(site: Site, browser, tmp_path: Path) -> None:
    person = user()
    token = site.token(person)
    one, multipart, eicar = (tmp_path / f"{label}-{uuid.uuid4().hex[:6]}.bin" for label in ("one", "mp", "eicar"))
    digests = {one.name: write_payload(one, ONE_REQUEST_SIZE, seed=one.name),
               multipart.name: write_payload(multipart, 110 * MIB, seed=multipart.name)}
    eicar.write_bytes(EICAR)
    before = len(site.relay.snapshot())
    outcomes = uppy5_upload(site, browser, [one, multipart, eicar], token)
    assert sorted((o["name"], o["outcome"]) for o in outcomes) == sorted(
        (p.name, "success") for p in (one, multipart, eicar)), outcomes
    to_presign = [r.path.split("?")[0] for r in site.relay.snapshot()[before:]]
    assert "/s3/params" in to_presign and "/s3/multipart" in to_presign, to_presign
    presign = site.stack.ports.function_url("presign")
    for path, digest in digests.items():
        found = wait_for_api_status(site, token, path, ("clean",))
        signed = call("GET", f"{presign}/files/{found['id']}/download", token=token)
        assert signed.status == 200, signed.body
        assert hashlib.sha256(call("GET", signed.json()["url"]).body).hexdigest() == digest
    infected = wait_for_api_status(site, token, eicar.name, ("infected",))
    assert call("GET", f"{presign}/files/{infected['id']}/download", token=token).status == 403


def test_uppy5_companion_mode_a_length_that_lies_to_the_signer_is_refused(site: Site, browser, s3,
                                                                           tmp_path: Path) -> None:
    person = user()
    token = site.token(person)
    liar = tmp_path / f"liar-{uuid.uuid4().hex[:6]}.bin"
    write_payload(liar, 3 * MIB, seed=liar.name)
    page = browser.pages[0] if browser.pages else browser.new_page()

    page.route(lambda url: "/s3/params?" in url, params_one_byte_short)
    [outcome] = uppy5_upload(site, browser, [liar], token)
    assert outcome["outcome"] == "error", outcome
    found = wait_for_api_status(site, token, liar.name, ("pending",))
    with pytest.raises(ClientError):
        s3.head_object(Bucket=UPLOADS_BUCKET, Key=found["key"])
