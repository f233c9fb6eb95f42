"""The uploader page end to end: headless Debian Chromium against the real local stack.

Playwright drives /usr/bin/chromium (no browser download); the page is the bundle
bootstrap built in local-dev/web/dist, served by the stack's web server; presign,
SeaweedFS, the router, scan and clamd are the real processes of tests/conftest.py.
A recording relay sits between the page and presign, so each test knows every byte
that reached the function. Screenshots go to test-output/browser/.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from dropgate_local.client import call
from dropgate_local.devauth import DevSigningKey, issuer_url
from dropgate_local.processes import free_port
from dropgate_local.stack import HOST, UPLOADS_BUCKET, LocalStack
from dropgate_local.webserver import DIST_DIR, BundleMissing, check_bundle
from shared.platform.storage import create_s3_client
from tests import evasions
from tests.browser.relay import RecordingRelay
from tests.browser.uploader_page import (
    CHROMIUM,
    NetworkLog,
    UploaderPage,
    chromium,
    sha256_of,
    wait_until,
    write_payload,
)
from tests.conftest import EICAR

MIB = 1024 * 1024
SMALL_REQUEST = 16 * 1024  # the largest API request the page may send presign (JSON of one part request)
SCAN_TIMEOUT = 180


@dataclass(frozen=True)
class Site:
    url: str
    relay: RecordingRelay
    stack: LocalStack

    def token(self, user: str) -> str:
        key = DevSigningKey.load_or_create(self.stack.data_dir / "dev-oidc")
        return key.mint(subject=user, roles=["uploader"], issuer=issuer_url(HOST, self.stack.ports.dev_oidc))

    def upload(self, user: str, upload_id: str) -> dict:
        reply = call("GET", f"{self.stack.ports.function_url('presign')}/uploads/{upload_id}", token=self.token(user))
        assert reply.status == 200, reply.body
        return reply.json()

    def pipeline_report(self) -> str:
        """What the broker did with the latest events, for a failure message."""
        reply = call("GET", f"http://{HOST}:{self.stack.ports.router}/events?limit=10", timeout=5)
        return reply.body.decode(errors="replace")[:3000]


@pytest.fixture(scope="module")
def site(stack: LocalStack, running_functions: dict[str, str]) -> Iterator[Site]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: run `bash local-dev/bootstrap.sh`")
    try:
        check_bundle()
    except BundleMissing as exc:
        pytest.fail(str(exc))
    relay = RecordingRelay(stack.ports.functions["presign"]).start()
    stack.start_web(presign_url=relay.url)
    yield Site(f"http://{HOST}:{stack.ports.web}/", relay, stack)
    stack.children.pop("web").stop()
    relay.stop()


@pytest.fixture
def browser(tmp_path: Path):  # noqa: ANN201 - BrowserContext
    with chromium(tmp_path / "profile") as context:
        yield context


@pytest.fixture
def s3(storage):  # noqa: ANN201 - boto3 client
    return create_s3_client(storage)


def user() -> str:
    return f"web-{uuid.uuid4().hex[:8]}"


def key_and_upload_id(part_url: str) -> tuple[str, str]:
    parts = urlsplit(part_url)
    key = unquote(parts.path.split("/", 2)[2])  # /<bucket>/<key>
    return key, parse_qs(parts.query)["uploadId"][0]


def wait_for_verdict(site: Site, page: UploaderPage, filename: str, verdict: str) -> None:
    try:
        page.wait_for_status(filename, (verdict,), timeout=SCAN_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - say where the pipeline stopped
        raise AssertionError(
            f"{filename} reached storage but stayed {page.status_now(filename)!r} for {SCAN_TIMEOUT}s instead of "
            f"{verdict!r}: the event pipeline (SeaweedFS webhook -> storage_events -> router -> scan) did not "
            f"deliver a verdict. Router's latest events:\n{site.pipeline_report()}") from exc


def test_the_page_is_served_with_its_config(site: Site) -> None:
    config = call("GET", f"{site.url}config.json")
    assert config.status == 200
    assert json.loads(config.body) == {"presign_url": site.relay.url,
                                       "dev_token_url": f"http://{HOST}:{site.stack.ports.dev_oidc}/dev-oidc/token",
                                       "parallel_requests": 6, "companion_endpoint": "/dropgate"}
    page = call("GET", site.url)
    assert page.status == 200 and b'src="/main.js"' in page.body
    csp = page.header("Content-Security-Policy")
    assert f"connect-src 'self' {site.relay.url} {site.stack.ports.s3_endpoint}" in csp
    assert call("GET", f"{site.url}../../pyproject.toml").status == 404
    assert (DIST_DIR / "main.js").stat().st_size > 100_000, "Uppy is bundled, not fetched from a CDN"


def test_dev_sign_in_is_refused_to_other_origins(site: Site) -> None:
    url = f"http://{HOST}:{site.stack.ports.dev_oidc}/dev-oidc/token"
    ours = call("POST", url, json_body={"sub": "alice", "roles": ["uploader"]}, headers={"Origin": site.url[:-1]})
    assert ours.status == 200 and ours.header("Access-Control-Allow-Origin") == site.url[:-1]
    foreign = call("POST", url, json_body={"sub": "alice"}, headers={"Origin": "https://evil.example"})
    assert foreign.header("Access-Control-Allow-Origin") is None
    assert call("POST", url, json_body={"sub": "alice", "roles": ["root"]}).status == 400
    rebound = call("POST", url, json_body={"sub": "alice"}, headers={"Host": "dev.evil.example"})
    assert rebound.status == 403 and b"access_token" not in rebound.body


def test_a_dropped_20_mb_file_goes_straight_to_storage_in_one_put_scans_clean_and_downloads_intact(
        site: Site, browser, s3, tmp_path: Path) -> None:
    """Uppy 6 in signRequest mode with its default options: a file of 100 MiB or less is one PutObject."""
    name = f"report-{uuid.uuid4().hex[:6]}.bin"
    source = tmp_path / name
    digest = write_payload(source, 20 * MIB, seed=name)
    person = user()
    page = UploaderPage(browser.pages[0] if browser.pages else browser.new_page(), site.url).open()
    log = NetworkLog(page.page, site.stack.ports.s3_endpoint).attach()

    page.sign_in(person)
    page.screenshot("01-signed-in")
    page.drop(source)
    page.screenshot("02-dropped")
    before = len(site.relay.snapshot())
    page.start_upload()
    page.wait_for_status(name, ("uploaded", "scanning", "clean"), timeout=120)
    page.screenshot("03-uploaded")
    to_presign = site.relay.snapshot()[before:]

    # The bytes went from the browser to storage in one PUT, sent once.
    upload = site.upload(person, page.file_id(name))
    assert upload["size"] == 20 * MIB and upload["part_count"] == 1 and upload["upload_id"] is None, upload
    assert [put.status for put in log.puts] == [200] and log.objects()[0].url.split("?")[0].endswith(upload["key"])
    stored = s3.head_object(Bucket=UPLOADS_BUCKET, Key=upload["key"])
    assert stored["ContentLength"] == 20 * MIB
    # ... and never through a function: presign (the only one the page talks to) got small JSON requests.
    assert [r.path for r in to_presign if r.path.startswith("/s3/") and r.method == "POST"] == ["/s3/sign"], \
        "one signing request: the PutObject, registered as it was signed"
    assert max(r.body_bytes for r in to_presign) <= SMALL_REQUEST, to_presign
    assert sum(r.total_bytes for r in to_presign) < 256 * 1024, sum(r.total_bytes for r in to_presign)
    assert log.origins <= {site.url[:-1], site.relay.url, site.stack.ports.s3_endpoint,
                           f"http://{HOST}:{site.stack.ports.dev_oidc}"}, log.origins

    wait_for_verdict(site, page, name, "clean")
    page.screenshot("04-clean")
    downloaded = page.download(name, tmp_path / "downloads")
    assert downloaded.name == name
    assert sha256_of(downloaded) == digest


def upload_until_verdict(site: Site, browser, path: Path, verdict: str) -> UploaderPage:  # noqa: ANN001
    """Sign in, drop `path`, upload it and wait until "Your files" shows `verdict` for it."""
    page = UploaderPage(browser.pages[0] if browser.pages else browser.new_page(), site.url).open()
    page.sign_in(user())
    page.drop(path)
    page.start_upload()
    page.wait_for_status(path.name, ("uploaded", "scanning", verdict), timeout=60)
    wait_for_verdict(site, page, path.name, verdict)
    return page


def test_an_eicar_file_ends_infected_with_no_download(site: Site, browser, tmp_path: Path) -> None:
    name = f"eicar-{uuid.uuid4().hex[:6]}.txt"
    (tmp_path / name).write_bytes(EICAR)
    page = upload_until_verdict(site, browser, tmp_path / name, "infected")
    row = page.row(name)
    assert row.locator("button[data-action=download]").count() == 0
    assert "Infected" in row.inner_text() and "virus was found" in row.inner_text()
    page.screenshot("05-infected")


def test_an_archive_too_deep_to_check_is_shown_unscannable_with_why_and_no_download(site: Site, browser,
                                                                                   tmp_path: Path) -> None:
    name = f"nested-{uuid.uuid4().hex[:6]}.zip"
    (tmp_path / name).write_bytes(evasions.nested_zip(18))  # one level past clamd's MaxRecursion (17)
    page = upload_until_verdict(site, browser, tmp_path / name, "unscannable")
    row = page.row(name)
    assert row.locator("button[data-action=download]").count() == 0
    text = row.inner_text()
    assert "Could not be checked" in text and "nested deeper than 17 levels" in text, text
    page.screenshot("05b-unscannable")


def test_a_reload_mid_upload_resumes_without_resending_finished_parts(site: Site, browser, s3, tmp_path: Path) -> None:
    name = f"resume-{uuid.uuid4().hex[:6]}.bin"
    source = tmp_path / name
    write_payload(source, 101 * MIB, seed=name)  # over Uppy 6's 100 MiB: multipart, 21 parts of 5 MiB
    page = UploaderPage(browser.pages[0] if browser.pages else browser.new_page(), site.url).open()
    log = NetworkLog(page.page, site.stack.ports.s3_endpoint).attach()
    page.sign_in(user())
    page.drop(source)

    # Let parts 1 and 2 reach storage; hold part 3 (Uppy 6 sends a file's parts one after another), as a
    # slow link would, until the reload (which cancels it with the old document); after it, all pass.
    held = []
    reloading = {"now": False}

    def pace(route, request) -> None:  # noqa: ANN001 - Playwright's Route and Request
        number = int(parse_qs(urlsplit(request.url).query)["partNumber"][0])
        if number <= 2 or reloading["now"]:
            route.continue_()
        else:
            held.append(number)

    page.page.route(lambda url: url.startswith(site.stack.ports.s3_endpoint) and "partNumber=" in url, pace)
    page.start_upload()
    wait_until(page.page, lambda: log.stored_parts() == {1, 2} and len(held) >= 1, 60,
               lambda: f"parts stored {log.stored_parts()}, held {held}")
    wait_until(page.page, lambda: page.persisted_upload_id() and page.blobs_kept() >= 1, 30,
               "Golden Retriever kept the upload and the file for after a reload")
    key, storage_upload_id = key_and_upload_id(log.puts[0].url)
    listed = s3.list_parts(Bucket=UPLOADS_BUCKET, Key=key, UploadId=storage_upload_id)
    assert sorted(part["PartNumber"] for part in listed.get("Parts", [])) == [1, 2]
    page.screenshot("06-before-reload")

    log.reloaded = reloading["now"] = True
    page.page.reload()
    # Said while it resumes (the notice goes after 8 s; sending 19 parts may take longer).
    wait_until(page.page, lambda: "Resuming your uploads" in " ".join(page.notices()), 30, page.notices)
    page.wait_for_status(name, ("uploaded", "scanning", "clean"), timeout=120)
    page.screenshot("07-resumed-after-reload")
    page.page.unroute_all(behavior="ignoreErrors")

    before = [put for put in log.puts if not put.sent_after_reload]
    after = [put for put in log.puts if put.sent_after_reload]
    assert sorted(put.number for put in after) == list(range(3, 22)), \
        f"only the missing parts are sent after the reload: {log.puts}"
    assert all(put.status == 200 for put in after)
    assert [put.number for put in before if put.status == 200] == [1, 2]
    assert {put.upload_id for put in log.puts} == {storage_upload_id}, "the same multipart upload, resumed"


@contextmanager
def strict_presign(site: Site) -> Iterator[None]:
    """The page talks to a presign with small limits while the block runs (same relay, same origin)."""
    port = free_port()
    child = site.stack.start_function("presign", port=port, label="presign-browser-limits", extra_env={
        "DROPGATE_MAX_UPLOAD_SIZE": "20MiB", "DROPGATE_MAX_BYTES_PER_DAY": "30MiB"})
    normal, site.relay.upstream_port = site.relay.upstream_port, port
    try:
        yield
    finally:
        site.relay.upstream_port = normal
        child.stop()


def test_refusals_are_told_in_words_a_person_understands(site: Site, browser, tmp_path: Path) -> None:
    too_big, first, second = (tmp_path / f"{label}-{uuid.uuid4().hex[:6]}.bin" for label in ("big", "one", "two"))
    write_payload(too_big, 21 * MIB, seed="big")
    write_payload(first, 16 * MIB, seed="one")
    write_payload(second, 16 * MIB, seed="two")
    with strict_presign(site):
        page = UploaderPage(browser.pages[0] if browser.pages else browser.new_page(), site.url).open()
        page.sign_in(user())

        page.drop(too_big)
        page.start_upload()
        wait_until(page.page, lambda: any("too large" in text for text in page.notices()), 30, page.notices)
        assert f"“{too_big.name}” is too large: files can be at most 20 MB." in page.notices()
        page.screenshot("08-too-large")
        page.page.evaluate("() => window.dropgateUploader.cancelAll()")

        page.drop(first)
        page.start_upload()
        page.wait_for_status(first.name, ("uploaded", "scanning", "clean"), timeout=60)
        page.page.evaluate("() => window.dropgateUploader.clear()")
        page.drop(second)
        page.start_upload()
        wait_until(page.page, lambda: any("quota" in text for text in page.notices()), 30, page.notices)
        quota = next(text for text in page.notices() if "quota" in text)
        assert quota.startswith("You have reached your upload quota for the last 24 hours. "
                                f"You can upload “{second.name}” in about ")
        page.screenshot("09-quota")
    assert second.name not in [row.get_attribute("data-filename") for row in page.page.locator("tr[data-filename]").all()]


def test_a_lost_network_is_shown_and_the_upload_carries_on_when_it_is_back(site: Site, browser, tmp_path: Path) -> None:
    """The PUT on the wire fails as the connection drops; when it is back the page retries the file, and
    presign signs it again for the same upload (the same key), not a second registration."""
    name = f"flaky-{uuid.uuid4().hex[:6]}.bin"
    source = tmp_path / name
    write_payload(source, 24 * MIB, seed=name)  # one PutObject
    page = UploaderPage(browser.pages[0] if browser.pages else browser.new_page(), site.url).open()
    log = NetworkLog(page.page, site.stack.ports.s3_endpoint).attach()
    page.sign_in(user())
    page.drop(source)
    held = []
    page.page.route(lambda url: url.startswith(site.stack.ports.s3_endpoint), lambda route, _request: held.append(route))
    page.start_upload()
    wait_until(page.page, lambda: len(held) == 1, 60, lambda: f"held {len(held)}")
    page.wait_for_status(name, ("pending",), timeout=30)  # registered when its PUT was signed

    browser.set_offline(True)
    held[0].abort("internetdisconnected")  # the PUT on the wire fails as the connection drops
    page.page.unroute_all(behavior="ignoreErrors")
    wait_until(page.page, lambda: any(n.startswith(("You are offline", "The connection to storage was lost"))
                                      for n in page.notices()), 30, page.notices)
    page.screenshot("10-network-lost")
    assert page.status_now(name) == "pending"

    browser.set_offline(False)
    page.wait_for_status(name, ("uploaded", "scanning", "clean"), timeout=120)
    wait_until(page.page, lambda: not any("offline" in n or "lost" in n for n in page.notices()), 10, page.notices)
    puts = log.objects()
    assert [put.status for put in puts][-1] == 200 and len(puts) == 2, puts
    assert len({put.url.split("?")[0] for put in puts}) == 1, "the retry went to the same upload's key"
    assert page.page.locator(f"tr[data-filename='{name}']").count() == 1, "one upload in Your files, not two"
