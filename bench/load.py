"""Control plane under load and data-plane throughput, against storage with no dropgate in the loop.

N users at once each upload one file (25 MB by default) in 8 MiB parts the way a
browser does through dropgate: POST /uploads, POST /uploads/{id}/parts (each
part's SHA-256 bound into its URL), PUT the parts straight to storage, POST
/complete. The baseline, in the same run and at the same concurrency, moves the
same bytes straight to storage with part URLs presigned by boto3 and the
multipart upload created and completed by boto3: no presign, no database.
"""

from __future__ import annotations

import base64
import hashlib
import statistics
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from dropgate_local.client import DropgateClient, UploadFailed, call
from dropgate_local.devauth import DevSigningKey, issuer_url
from dropgate_local.processes import free_port
from dropgate_local.stack import HOST, LocalStack
from shared.platform.storage import create_s3_client

MIB = 1024 * 1024


@dataclass
class Timings:
    calls: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, seconds: float) -> None:
        with self.lock:
            self.calls[name].append(seconds)

    def fail(self, message: str) -> None:
        with self.lock:
            self.errors.append(message[:300])


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


class Payload:
    """One file's bytes, split as presign splits them, with each part's SHA-256 (computed once)."""

    def __init__(self, size: int, part_size: int = 8 * MIB) -> None:
        seed = hashlib.sha256(b"dropgate-bench").digest()
        self.data = (seed * (size // len(seed) + 1))[:size]
        self.parts = [self.data[i:i + part_size] for i in range(0, size, part_size)]
        self.part_sha256 = [base64.b64encode(hashlib.sha256(p).digest()).decode() for p in self.parts]
        self.sha256 = hashlib.sha256(self.data).hexdigest()


def upload_through_dropgate(presign: str, token: str, payload: Payload, timings: Timings) -> None:
    """The browser's flow through dropgate's client; each call timed by step (create, sign parts, part PUT, complete)."""
    client = DropgateClient(presign, token, observe=timings.add, timeout=300)
    try:
        client.upload_from(filename="bench.bin", size=len(payload.data), sha256=payload.sha256,
                           read_part=lambda number, _part_size: payload.parts[number - 1],
                           checksums=dict(enumerate(payload.part_sha256, 1)))
    except UploadFailed as failed:
        timings.fail(str(failed))


def upload_straight_to_storage(s3, bucket: str, payload: Payload, timings: Timings) -> None:  # noqa: ANN001
    key = f"bench/direct/{uuid.uuid4()}"
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    etags = []
    for number, part in enumerate(payload.parts, 1):
        url = s3.generate_presigned_url("upload_part", ExpiresIn=900, Params={
            "Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumber": number, "ContentLength": len(part)})
        # The same HTTP client as dropgate's path (dropgate_local.client), so only the URLs differ.
        started = time.perf_counter()
        reply = call("PUT", url, data=part, timeout=300)
        timings.add("part PUT", time.perf_counter() - started)
        if reply.status != 200:
            return timings.fail(f"direct put {reply.status} {reply.body[:200]!r}")
        etags.append({"PartNumber": number, "ETag": reply.header("ETag")})
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": etags})
    return None


def measure(stack: LocalStack, *, users: int, size_mb: int) -> list[dict]:
    """Needs PostgreSQL and storage started; starts its own presign with limits fit for the load."""
    stack.start_dev_oidc()
    port = free_port()
    stack.start_function("presign", port=port, label="presign-bench", extra_env={
        "DROPGATE_MAX_OPEN_UPLOADS": "1000", "DROPGATE_RATE_LIMIT_PER_MINUTE": "100000",
        "DROPGATE_MAX_BYTES_PER_DAY": "1000GiB", "DROPGATE_DB_POOL_MAX": "20"})
    presign = f"http://{HOST}:{port}"
    key = DevSigningKey.load_or_create(stack.data_dir / "dev-oidc")
    tokens = [key.mint(subject=f"bench-{i}", roles=["uploader"], issuer=issuer_url(HOST, stack.ports.dev_oidc),
                       ttl_seconds=3600) for i in range(users)]
    payload = Payload(size_mb * 1000 * 1000)
    storage = stack.storage_settings()
    s3 = create_s3_client(storage, max_attempts=1)
    upload_through_dropgate(presign, tokens[0], payload, Timings())  # warm-up: JWKS, pool, connections

    ours = Timings()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=users) as pool:
        list(pool.map(lambda token: upload_through_dropgate(presign, token, payload, ours), tokens))
    ours_seconds = time.perf_counter() - start

    direct = Timings()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=users) as pool:
        list(pool.map(lambda _: upload_straight_to_storage(s3, storage.uploads_bucket, payload, direct), range(users)))
    direct_seconds = time.perf_counter() - start

    total_mb = users * len(payload.data) / 1e6
    rows = []
    for name in ("create", "sign parts", "complete"):
        values = ours.calls[name]
        rows.append({"name": f"{name}: p50 / p99 ({users} users at once)",
                     "dropgate": f"{percentile(values, 0.5) * 1000:.0f} / {percentile(values, 0.99) * 1000:.0f} ms",
                     "baseline": "—", "ratio": None, "values": {"p50_ms": percentile(values, 0.5) * 1000,
                                                                 "p99_ms": percentile(values, 0.99) * 1000,
                                                                 "count": len(values)}})
    put_ours, put_direct = ours.calls["part PUT"], direct.calls["part PUT"]
    rows.append({"name": "part PUT p50 (dropgate URLs also bind x-amz-checksum-sha256, which storage verifies)",
                 "dropgate": f"{statistics.median(put_ours) * 1000:.0f} ms",
                 "baseline": f"{statistics.median(put_direct) * 1000:.0f} ms (boto3 URLs)",
                 "ratio": statistics.median(put_direct) / statistics.median(put_ours)})
    rows.append({"name": f"data plane: {users} × {size_mb} MB uploads, total throughput",
                 "dropgate": f"{total_mb / ours_seconds:.0f} MB/s", "baseline": f"{total_mb / direct_seconds:.0f} MB/s "
                 "(boto3 multipart, no dropgate)", "ratio": (total_mb / ours_seconds) / (total_mb / direct_seconds)})
    rows.append({"name": "errors", "dropgate": str(len(ours.errors)), "baseline": str(len(direct.errors)),
                 "ratio": None, "values": {"first": ours.errors[:3] + direct.errors[:3]}})
    return rows
