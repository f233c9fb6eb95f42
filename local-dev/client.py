"""A small typed client of presign's API, used the way a browser uses it: create, sign, PUT parts, complete, status, download.

The one copy of the upload flow for the tests, the benchmarks and the local tools. Standard library
only (urllib), so the tests use no HTTP client the functions do not. `observe(step, seconds)` sees
every call's duration (the benchmarks time the control plane with it).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

Observer = Callable[[str, float], None]
FINAL = frozenset({"clean", "infected", "rejected", "unscannable", "released"})


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


def call(method: str, url: str, *, json_body: Any = None, data: bytes | None = None,
         headers: dict[str, str] | None = None, token: str | None = None, timeout: float = 60) -> Reply:
    """One HTTP request; every status, 4xx and 5xx included, comes back as a Reply."""
    all_headers = dict(headers or {})
    if json_body is not None:
        data = json.dumps(json_body).encode()
        all_headers.setdefault("Content-Type", "application/json")
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback only
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, dict(exc.headers), exc.read())


def split(data: bytes, part_size: int) -> list[bytes]:
    return [data[i:i + part_size] for i in range(0, len(data), part_size)]


def b64sha(data: bytes) -> str:
    """A part's SHA-256 as S3's x-amz-checksum-sha256 wants it (base64)."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def put_part(signed: dict[str, Any], data: bytes, *, timeout: float = 60) -> Reply:
    """PUT one part to its signed URL, as a browser does: it sets Content-Length itself, every other header as given."""
    headers = {k: v for k, v in signed["headers"].items() if k.lower() != "content-length"}
    return call("PUT", signed["url"], data=data, headers=headers, timeout=timeout)


class UploadFailed(AssertionError):
    """A step of the flow answered something else than it should; the reply says what."""

    def __init__(self, step: str, reply: Reply) -> None:
        super().__init__(f"{step}: {reply.status} {reply.body[:300]!r}")
        self.step = step
        self.reply = reply


@dataclass(frozen=True)
class Uploaded:
    record: dict[str, Any]  # presign's answer to the create
    etags: dict[int, str] = field(default_factory=dict)
    part_urls: tuple[str, ...] = ()


class DropgateClient:
    def __init__(self, base_url: str, token: str, *, observe: Observer | None = None, timeout: float = 60,
                 part_gate: AbstractContextManager | None = None) -> None:
        """`part_gate`, when given, is entered around every part PUT: a load that shares one (a semaphore)
        keeps that many part bodies in flight at most (bench/load.py, IN_FLIGHT_PUTS)."""
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._observe = observe
        self._timeout = timeout
        self._part_gate = part_gate

    def _call(self, step: str, method: str, url: str, **kwargs: Any) -> Reply:
        started = time.perf_counter()
        reply = call(method, url, timeout=self._timeout, **kwargs)
        if self._observe is not None:
            self._observe(step, time.perf_counter() - started)
        return reply

    def _api(self, step: str, method: str, path: str, **kwargs: Any) -> Reply:
        return self._call(step, method, f"{self.base_url}{path}", token=self.token, **kwargs)

    # -- one call each --

    def create(self, *, filename: str, size: int, content_type: str = "application/octet-stream",
               sha256: str | None = None, headers: dict[str, str] | None = None, **extra: Any) -> Reply:
        body = {"filename": filename, "size": size, "content_type": content_type, **extra}
        if sha256 is not None:
            body["sha256"] = sha256
        return self._api("create", "POST", "/uploads", json_body=body, headers=headers)

    def sign(self, upload_id: str, parts: dict[int, bytes | None], *,
             checksums: dict[int, str] | None = None) -> Reply:
        """Part URLs for these part numbers, each bound to its bytes' SHA-256 when the bytes are given
        (or to the base64 SHA-256 in `checksums`, computed once by a caller that uploads the same bytes often)."""
        known = checksums or {}
        requested = []
        for number, data in sorted(parts.items()):
            checksum = known.get(number) or (b64sha(data) if data is not None else None)
            requested.append({"number": number, **({"sha256": checksum} if checksum else {})})
        return self._api("sign parts", "POST", f"/uploads/{upload_id}/parts", json_body={"parts": requested})

    def put_part(self, signed: dict[str, Any], data: bytes) -> Reply:
        with self._part_gate or contextlib.nullcontext():
            started = time.perf_counter()
            reply = put_part(signed, data, timeout=self._timeout)
        if self._observe is not None:
            self._observe("part PUT", time.perf_counter() - started)
        return reply

    def complete(self, upload_id: str, etags: dict[int, str], checksums: dict[int, str] | None = None) -> Reply:
        """Complete with the parts' ETags, and their base64 SHA-256s when given (storage that needs them named)."""
        known = checksums or {}
        parts = [{"number": n, "etag": e, **({"sha256": known[n]} if n in known else {})}
                 for n, e in sorted(etags.items())]
        return self._api("complete", "POST", f"/uploads/{upload_id}/complete", json_body={"parts": parts})

    def status(self, upload_id: str) -> Reply:
        return self._api("status", "GET", f"/uploads/{upload_id}")

    def download_link(self, upload_id: str) -> Reply:
        return self._api("download", "GET", f"/files/{upload_id}/download")

    # -- the flow --

    def upload_parts(self, record: dict[str, Any], data: bytes,
                     numbers: Iterable[int] | None = None) -> tuple[dict[int, str], list[str]]:
        """Sign and PUT these parts (all by default); their ETags by number, and the URLs used."""
        chunks = split(data, record["part_size"])
        wanted = list(numbers) if numbers is not None else list(range(1, len(chunks) + 1))
        return self._send_parts(record["id"], {n: chunks[n - 1] for n in wanted}, lambda n: chunks[n - 1])

    def _send_parts(self, upload_id: str, to_sign: dict[int, bytes | None], read_part: Callable[[int], bytes],
                    checksums: dict[int, str] | None = None) -> tuple[dict[int, str], list[str]]:
        signed = self.sign(upload_id, to_sign, checksums=checksums)
        if signed.status != 200:
            raise UploadFailed("sign parts", signed)
        etags, urls = {}, []
        for part in signed.json()["parts"]:
            reply = self.put_part(part, read_part(part["number"]))
            if reply.status != 200:
                raise UploadFailed(f"PUT part {part['number']}", reply)
            etags[part["number"]] = (reply.header("ETag") or "").strip('"')
            urls.append(part["url"])
        return etags, urls

    def upload_from(self, *, filename: str, size: int, read_part: Callable[[int, int], bytes],
                    sha256: str | None = None, checksums: dict[int, str] | None = None) -> Uploaded:
        """The whole flow for bytes not held as one piece: `read_part(number, part_size)` gives each part.

        `checksums` (base64 SHA-256 by part number), when known, bind each part URL without hashing again.
        """
        created = self.create(filename=filename, size=size, sha256=sha256)
        if created.status != 201:
            raise UploadFailed("create", created)
        record = created.json()
        etags, urls = self._send_parts(record["id"], dict.fromkeys(range(1, record["part_count"] + 1)),
                                       lambda n: read_part(n, record["part_size"]), checksums)
        done = self.complete(record["id"], etags)
        if done.status != 200:
            raise UploadFailed("complete", done)
        return Uploaded(record=record, etags=etags, part_urls=tuple(urls))

    def upload(self, data: bytes, content_type: str, filename: str, *, declare_sha256: bool = True,
               create_headers: dict[str, str] | None = None,
               on_created: Callable[[dict[str, Any]], None] = lambda record: None) -> Uploaded:
        """The whole browser flow: create (with the file's SHA-256), sign and PUT every part, complete."""
        created = self.create(filename=filename, size=len(data), content_type=content_type,
                              sha256=hashlib.sha256(data).hexdigest() if declare_sha256 else None,
                              headers=create_headers)
        if created.status != 201:
            raise UploadFailed("create", created)
        record = created.json()
        on_created(record)
        etags, urls = self.upload_parts(record, data)
        done = self.complete(record["id"], etags)
        if done.status != 200:
            raise UploadFailed("complete", done)
        return Uploaded(record=record, etags=etags, part_urls=tuple(urls))

    def wait_for(self, upload_id: str, statuses: Iterable[str] = FINAL, timeout: float = 120,
                 poll: float = 0.25) -> dict[str, Any]:
        """The upload's description once its status is one of these (a verdict, by default), asked every `poll` s."""
        wanted, deadline = set(statuses), time.monotonic() + timeout
        while True:
            current = self.status(upload_id).json()
            if current["status"] in wanted:
                return current
            if time.monotonic() > deadline:
                raise AssertionError(f"upload {upload_id} stayed {current['status']}; wanted {sorted(wanted)}")
            time.sleep(poll)
