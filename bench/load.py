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
import http.client
import statistics
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

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


def _request(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
             ) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _timed(timings: Timings, name: str, method: str, url: str, **kwargs) -> tuple[int, dict[str, str], bytes]:  # noqa: ANN003
    start = time.perf_counter()
    status, headers, body = _request(method, url, **kwargs)
    timings.add(name, time.perf_counter() - start)
    return status, headers, body


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
    import json

    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body = json.dumps({"filename": "bench.bin", "size": len(payload.data), "content_type": "application/octet-stream",
                       "sha256": payload.sha256}).encode()
    status, _, raw = _timed(timings, "create", "POST", f"{presign}/uploads", body=body, headers=auth)
    if status != 201:
        return timings.fail(f"create {status} {raw[:200]!r}")
    upload = json.loads(raw)
    body = json.dumps({"parts": [{"number": n, "sha256": s} for n, s in enumerate(payload.part_sha256, 1)]}).encode()
    status, _, raw = _timed(timings, "sign parts", "POST", f"{presign}/uploads/{upload['id']}/parts", body=body,
                            headers=auth)
    if status != 200:
        return timings.fail(f"sign {status} {raw[:200]!r}")
    etags = []
    for part in json.loads(raw)["parts"]:
        status, headers, raw = _timed(timings, "part PUT", "PUT", part["url"], body=payload.parts[part["number"] - 1],
                                      headers=part["headers"])
        if status != 200:
            return timings.fail(f"put {status} {raw[:200]!r}")
        etags.append({"number": part["number"], "etag": headers["etag"].strip('"')})
    status, _, raw = _timed(timings, "complete", "POST", f"{presign}/uploads/{upload['id']}/complete",
                            body=json.dumps({"parts": etags}).encode(), headers=auth)
    if status != 200:
        timings.fail(f"complete {status} {raw[:200]!r}")
    return None


def upload_straight_to_storage(s3, bucket: str, payload: Payload, timings: Timings) -> None:  # noqa: ANN001
    key = f"bench/direct/{uuid.uuid4()}"
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    etags = []
    for number, part in enumerate(payload.parts, 1):
        url = s3.generate_presigned_url("upload_part", ExpiresIn=900, Params={
            "Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumber": number, "ContentLength": len(part)})
        status, headers, raw = _timed(timings, "part PUT", "PUT", url, body=part)
        if status != 200:
            return timings.fail(f"direct put {status} {raw[:200]!r}")
        etags.append({"PartNumber": number, "ETag": headers["etag"]})
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
