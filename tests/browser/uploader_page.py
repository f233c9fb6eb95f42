"""Headless Debian Chromium, driven by Playwright, and the uploader page as a person uses it."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from playwright.sync_api import BrowserContext, Page, Request, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
# This machine's network is closed: Chromium's own background traffic would only fail (docs/uploader.md).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "browser"


@contextmanager
def chromium(profile_dir: Path) -> Iterator[BrowserContext]:
    """The system Chromium with a fresh profile; Playwright never downloads a browser here."""
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile_dir), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            accept_downloads=True, viewport={"width": 1200, "height": 1000})
        try:
            yield context
        finally:
            context.close()


@dataclass
class PartPut:
    """One PUT the browser sent to storage: a part (its number and multipart upload), or a whole object."""

    number: int | None  # None: a whole object (PutObject)
    upload_id: str | None
    url: str
    status: int | None = None
    sent_after_reload: bool = False


@dataclass
class NetworkLog:
    """Every request the page made, by origin, and the part PUTs by part number."""

    page: Page
    s3_origin: str
    reloaded: bool = False
    origins: set[str] = field(default_factory=set)
    puts: list[PartPut] = field(default_factory=list)
    to_storage: list[tuple[str, str]] = field(default_factory=list)  # (method, URL) of every storage request
    _by_request: dict[int, PartPut] = field(default_factory=dict)

    def attach(self) -> NetworkLog:
        self.page.on("request", self._on_request)
        self.page.on("requestfinished", self._on_finished)
        return self

    def _on_request(self, request: Request) -> None:
        parts = urlsplit(request.url)
        if parts.scheme in ("http", "https"):
            self.origins.add(f"{parts.scheme}://{parts.netloc}")
        if request.url.startswith(self.s3_origin):
            self.to_storage.append((request.method, request.url))
        if request.method == "PUT" and request.url.startswith(self.s3_origin):
            query = parse_qs(parts.query)
            number = int(query["partNumber"][0]) if "partNumber" in query else None
            put = PartPut(number, query["uploadId"][0] if number else None, request.url,
                          sent_after_reload=self.reloaded)
            self.puts.append(put)
            self._by_request[id(request)] = put

    def _on_finished(self, request: Request) -> None:
        put = self._by_request.get(id(request))
        if put is not None:
            response = request.response()
            put.status = response.status if response else None

    def stored_parts(self) -> set[int]:
        return {put.number for put in self.puts if put.status == 200 and put.number is not None}

    def objects(self) -> list[PartPut]:
        """The whole-object PUTs (Uppy 6's PutObject), in order."""
        return [put for put in self.puts if put.number is None]


class UploaderPage:
    def __init__(self, page: Page, url: str, shots: Path = SCREENSHOTS) -> None:
        self.page = page
        self.url = url
        self.shots = shots

    def open(self) -> UploaderPage:
        self.page.goto(self.url)
        return self

    def sign_in(self, user: str) -> None:
        self.page.fill("#dev-user", user)
        self.page.click("#dev-sign-in-button")
        self.page.wait_for_selector(".uppy-Dashboard-inner")
        self.page.wait_for_selector("#session-user", state="visible")

    def drop(self, path: Path) -> None:
        """Drop a file from disk onto the Dashboard, as dragging it from a file manager does."""
        self.page.evaluate("""() => {
            const input = document.createElement('input')
            input.type = 'file'; input.id = 'test-drag-source'; input.hidden = true
            document.body.append(input)
        }""")
        self.page.set_input_files("#test-drag-source", str(path))
        self.page.evaluate("""() => {
            const input = document.getElementById('test-drag-source')
            const transfer = new DataTransfer()
            transfer.items.add(input.files[0])
            const target = document.querySelector('.uppy-Dashboard-inner')
            for (const type of ['dragenter', 'dragover', 'drop']) {
                target.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: transfer }))
            }
            input.remove()
        }""")
        self.page.wait_for_selector(f".uppy-Dashboard-Item[title='{path.name}'], "
                                    f".uppy-Dashboard-Item-name[title='{path.name}']")

    def start_upload(self) -> None:
        self.page.click(".uppy-StatusBar-actionBtn--upload")

    def row(self, filename: str):  # noqa: ANN201 - Locator
        return self.page.locator(f"tr[data-filename='{filename}']")

    def wait_for_status(self, filename: str, statuses: tuple[str, ...], timeout: float = 120) -> str:
        """The file's status in "Your files" once it is one of `statuses`."""
        selector = ", ".join(f"tr[data-filename='{filename}'][data-status='{status}']" for status in statuses)
        self.page.wait_for_selector(selector, timeout=timeout * 1000)
        return self.row(filename).get_attribute("data-status")

    def file_id(self, filename: str) -> str:
        return self.row(filename).get_attribute("data-file-id")

    def status_now(self, filename: str) -> str | None:
        row = self.row(filename)
        return row.get_attribute("data-status") if row.count() else None

    def download(self, filename: str, into: Path) -> Path:
        with self.page.expect_download() as info:
            self.row(filename).locator("button[data-action=download]").click()
        target = into / info.value.suggested_filename
        info.value.save_as(target)
        return target

    def persisted_upload_id(self) -> str | None:
        """The multipart upload Golden Retriever saved for after a reload (Uppy 6 keeps its state in the
        `metadata` store of IndexedDB `uppy-blobs`, as JSON: @uppy/golden-retriever 6 IndexedDBMetaDataStore)."""
        return self.page.evaluate("""() => new Promise((resolve) => {
            const open = indexedDB.open('uppy-blobs')
            open.onerror = () => resolve(null)
            open.onsuccess = () => {
                const db = open.result
                if (!db.objectStoreNames.contains('metadata')) { db.close(); return resolve(null) }
                const all = db.transaction('metadata').objectStore('metadata').getAll()
                all.onerror = () => { db.close(); resolve(null) }
                all.onsuccess = () => {
                    db.close()
                    for (const record of all.result) {
                        const files = JSON.parse(record.metadata ?? '{}')?.files ?? {}
                        for (const file of Object.values(files)) if (file.s3Multipart?.uploadId) return resolve(file.s3Multipart.uploadId)
                    }
                    resolve(null)
                }
            }
        })""")

    def blobs_kept(self) -> int:
        """How many files Golden Retriever holds in IndexedDB (what a reload can resume)."""
        return self.page.evaluate("""() => new Promise((resolve) => {
            const open = indexedDB.open('uppy-blobs')
            open.onerror = () => resolve(0)
            open.onsuccess = () => {
                const db = open.result
                if (!db.objectStoreNames.contains('files')) { db.close(); return resolve(0) }
                const count = db.transaction('files').objectStore('files').count()
                count.onsuccess = () => { db.close(); resolve(count.result) }
                count.onerror = () => { db.close(); resolve(0) }
            }
        })""")

    def notices(self) -> list[str]:
        return self.page.locator("#notices .notice").all_inner_texts()

    def screenshot(self, name: str) -> Path:
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def wait_until(page: Page, condition, timeout: float, message, interval_ms: int = 100):  # noqa: ANN001, ANN201
    """Poll `condition` while Playwright keeps dispatching the page's events (time.sleep would not)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        page.wait_for_timeout(interval_ms)
    raise AssertionError(f"timed out after {timeout:.0f}s: {message() if callable(message) else message}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def write_payload(path: Path, size: int, seed: str) -> str:
    """Deterministic, incompressible bytes, different in every MiB; returns their SHA-256."""
    whole = hashlib.sha256()
    with path.open("wb") as handle:
        written, mib = 0, 0
        while written < size:
            block = b"".join(hashlib.sha256(f"{seed}:{mib}:{i}".encode()).digest() for i in range(32768))
            chunk = block[: size - written]
            handle.write(chunk)
            whole.update(chunk)
            written += len(chunk)
            mib += 1
    return whole.hexdigest()
