"""One user's upload, through dropgate and straight to storage, doing the same work on both paths.

Both paths, part by part and in the same order (the uploader page's, local-dev/web/src/uploader.js):
make the part's bytes (fresh, bench/fair_bytes.py), hash them (SHA-256, base64), get a URL that
binds that checksum, PUT the part with `x-amz-checksum-sha256` (storage verifies it on both
paths: `storage_verifies_checksums` proves it each run), then complete. The only difference is who
signs and who talks to storage for create/complete: presign (auth, database, its own SigV4
signer) or boto3 in the client. Every step is timed by name, so the client's own work (making
and hashing bytes) is reported apart from the calls.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from dropgate_local.client import DropgateClient, Reply, UploadFailed, call

from bench.fair_bytes import FreshBytes
from shared.platform.storage import sse_arguments

CONTENT_TYPE = "application/octet-stream"


@dataclass
class Timings:
    """Durations by step, errors and bytes delivered, shared by every user thread of one run."""

    calls: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    bytes_done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, seconds: float) -> None:
        with self.lock:
            self.calls[name].append(seconds)

    def fail(self, message: str) -> None:
        with self.lock:
            self.errors.append(message[:300])

    def done(self, size: int) -> None:
        with self.lock:
            self.bytes_done += size

    def timed(self, name: str, work: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            return work()
        finally:
            self.add(name, time.perf_counter() - started)


def part_length(number: int, size: int, part_size: int) -> int:
    return min(part_size, size - (number - 1) * part_size)


def made_and_hashed(source: FreshBytes, number: int, length: int, timings: Timings) -> tuple[bytes, str]:
    """A part's bytes and their base64 SHA-256, the two timed apart ("generate", "client SHA-256")."""
    data = timings.timed("generate", lambda: source.part(number, length))
    digest = timings.timed("client SHA-256", lambda: hashlib.sha256(data).digest())
    return data, base64.b64encode(digest).decode()


def through_dropgate(presign: str, token: str, size: int, timings: Timings,
                     gate: AbstractContextManager | None = None) -> dict[str, Any]:
    """The uploader page's flow: create, then per part hash -> sign (one part) -> PUT, then complete.

    `gate` (both paths take the same one) holds each part PUT until the run lets it send: see
    bench/load.py, IN_FLIGHT_PUTS. Returns presign's record of the upload (its part size is the one
    the baseline then uses).
    """
    client = DropgateClient(presign, token, observe=timings.add, timeout=300, part_gate=gate)
    created = client.create(filename="bench.bin", size=size, content_type=CONTENT_TYPE)
    if created.status != 201:
        raise UploadFailed("create", created)
    record = created.json()
    source, etags, checksums = FreshBytes(), {}, {}
    for number in range(1, record["part_count"] + 1):
        data, checksum = made_and_hashed(source, number, part_length(number, size, record["part_size"]), timings)
        signed = client.sign(record["id"], {number: None}, checksums={number: checksum})
        if signed.status != 200:
            raise UploadFailed("sign parts", signed)
        reply = client.put_part(signed.json()["parts"][0], data)
        if reply.status != 200:
            raise UploadFailed(f"PUT part {number}", reply)
        etags[number], checksums[number] = (reply.header("ETag") or "").strip('"'), checksum
    done = client.complete(record["id"], etags, checksums)
    if done.status != 200:
        raise UploadFailed("complete", done)
    timings.done(size)
    return record


def straight_to_storage(s3, storage: Any, size: int, part_size: int, timings: Timings,
                        gate: AbstractContextManager | None = None) -> None:
    """The same parts, checksums and encryption, with boto3 creating, presigning and completing."""
    bucket, key = storage.uploads_bucket, f"bench/raw/{uuid.uuid4()}"
    # As presign's CreateMultipartUpload (shared/uploads/multipart.py): content type, metadata, SSE.
    upload_id = timings.timed("create", lambda: s3.create_multipart_upload(
        Bucket=bucket, Key=key, ContentType=CONTENT_TYPE, Metadata={"upload-id": str(uuid.uuid4()),
                                                                    "filename": "bench.bin"},
        **sse_arguments(storage))["UploadId"])
    source, parts = FreshBytes(), []
    for number in range(1, -(-size // part_size) + 1):
        data, checksum = made_and_hashed(source, number, part_length(number, size, part_size), timings)
        url = timings.timed("sign parts", lambda n=number, d=data, c=checksum: s3.generate_presigned_url(
            "upload_part", ExpiresIn=900, Params={"Bucket": bucket, "Key": key, "UploadId": upload_id,
                                                  "PartNumber": n, "ContentLength": len(d), "ChecksumSHA256": c}))
        with gate or contextlib.nullcontext():
            reply = timings.timed("part PUT", lambda u=url, d=data, c=checksum: call(
                "PUT", u, data=d, headers={"x-amz-checksum-sha256": c}, timeout=300))
        if reply.status != 200:
            raise UploadFailed(f"PUT part {number}", reply)
        parts.append({"PartNumber": number, "ETag": reply.header("ETag")})
    timings.timed("complete", lambda: s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}))
    timings.done(size)


def storage_verifies_checksums(presign: str, token: str, s3, storage: Any) -> dict[str, str]:
    """A part PUT with a wrong `x-amz-checksum-sha256` must be refused on both paths, or the
    comparison is unfair (one side's storage would skip a hashing pass). Raises when it is not."""
    data, wrong = b"x" * 1024, base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()
    client = DropgateClient(presign, token, timeout=60)
    record = client.create(filename="checksum-proof.bin", size=len(data), content_type=CONTENT_TYPE).json()
    signed = client.sign(record["id"], {1: None}, checksums={1: wrong}).json()["parts"][0]
    ours = client.put_part(signed, data)
    bucket, key = storage.uploads_bucket, f"bench/raw-proof/{uuid.uuid4()}"
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, **sse_arguments(storage))["UploadId"]
    url = s3.generate_presigned_url("upload_part", ExpiresIn=900, Params={
        "Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumber": 1, "ContentLength": len(data),
        "ChecksumSHA256": wrong})
    theirs = call("PUT", url, data=data, headers={"x-amz-checksum-sha256": wrong})
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    found = {"dropgate": _refusal(ours), "raw": _refusal(theirs)}
    if not all(answer.startswith("400") for answer in found.values()):
        raise AssertionError(f"storage must refuse a part with a wrong checksum on both paths: {found}")
    return found


def _refusal(reply: Reply) -> str:
    code = reply.body.split(b"<Code>")[1].split(b"</Code>")[0].decode() if b"<Code>" in reply.body else ""
    return f"{reply.status} {code}".strip()
