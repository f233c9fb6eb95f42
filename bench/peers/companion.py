"""presign's control plane beside @uppy/companion's S3 multipart routes, same machine, same SeaweedFS, same run.

Three contenders answer the calls `@uppy/aws-s3` makes while uploading a file in parts:

    dropgate, own API      POST /uploads, POST /uploads/{id}/parts, POST /uploads/{id}/complete (JWT)
    dropgate, Companion    presign's Companion-compatible routes (functions/presign/companion_routes.py, JWT)
    Companion 6.x          the `companion` standalone server of @uppy/companion (no auth: its default)

One client, one keep-alive connection per contender, one call at a time; rounds interleaved
(A B C, C B A, ...) so that drift on the shared cores falls on all alike. Latencies are medians with
min–max. CPU per upload session comes from /proc/<pid>/stat of each server's processes, read around
blocks of sessions that alternate between contenders the same way.

Companion runs as its README's standalone server, configured by the environment variables that
node_modules/@uppy/companion/lib/standalone/helper.js reads (getConfigFromEnv): COMPANION_AWS_KEY,
_SECRET, _BUCKET, _ENDPOINT, _REGION, _FORCE_PATH_STYLE (SeaweedFS on 127.0.0.1 needs path-style
URLs), _EXPIRES; and the options lib/config/companion.js validateConfig requires (COMPANION_SECRET,
COMPANION_DATADIR, COMPANION_DOMAIN, COMPANION_CLIENT_ORIGINS, COMPANION_UPLOAD_URLS in production).
Its S3 routes are lib/server/controllers/s3.js.

Run alone: `.venv/bin/python -m bench.peers.companion [--quick]` (starts its own stack).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import os
import secrets
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from dropgate_local.client import put_part
from dropgate_local.processes import ChildProcess, free_port
from dropgate_local.stack import HOST, UPLOADS_BUCKET, LocalStack

from bench import peers
from shared.platform.storage import create_s3_client

SMALL = 4096  # a single-part upload: S3 takes a last (here: only) part of any size
BATCH = 128
OWN_PART = 8 * 1024 * 1024  # presign's default part size (DROPGATE_PART_SIZE)
UPPY_PART = 5 * 1024 * 1024  # @uppy/aws-s3's default for files under 50 GB (shared/uploads/companion.py)
URL_EXPIRY = 900  # presign's DROPGATE_URL_EXPIRY default; Companion's COMPANION_AWS_EXPIRES set to the same


class CallFailed(AssertionError):
    pass


def _ok(answer: tuple[int, dict, bytes], step: str) -> dict:
    import json

    status, _, body = answer
    if not 200 <= status < 300:
        raise CallFailed(f"{step}: {status} {body[:300]!r}")
    return json.loads(body) if body else {}


@dataclass
class Upload:
    """One multipart upload as a contender knows it: dropgate's id, or Companion's (uploadId, key)."""

    ref: str
    key: str = ""


class OwnApi:
    """dropgate's own API, the way its client (dropgate_local.client) and page call it: each part URL bound
    to the part's SHA-256, signed in one request for the parts asked."""

    def __init__(self, base_url: str, token: str) -> None:
        self.label, self.http, self.auth = "dropgate, own API", peers.Http(base_url), {"Authorization": f"Bearer {token}"}

    def create(self, size: int) -> Upload:
        body = {"filename": "peer.bin", "size": size, "content_type": "application/octet-stream"}
        return Upload(_ok(self.http.request("POST", "/uploads", json_body=body, headers=self.auth), "create")["id"])

    def sign(self, upload: Upload, numbers: list[int], checksum: str) -> list[dict]:
        body = {"parts": [{"number": n, "sha256": checksum} for n in numbers]}
        answer = _ok(self.http.request("POST", f"/uploads/{upload.ref}/parts", json_body=body, headers=self.auth),
                     "sign")
        return [{"url": p["url"], "headers": p["headers"]} for p in answer["parts"]]

    def complete(self, upload: Upload, etag: str) -> None:
        body = {"parts": [{"number": 1, "etag": etag}]}
        _ok(self.http.request("POST", f"/uploads/{upload.ref}/complete", json_body=body, headers=self.auth),
            "complete")

    def abort(self, upload: Upload) -> None:
        self.http.request("DELETE", f"/uploads/{upload.ref}", headers=self.auth)


class CompanionProtocol:
    """The routes `@uppy/aws-s3` calls on a Companion server (shared/uploads/companion.py lists them):
    one GET per part URL, or `/batch` for many. The same body goes to both servers: Uppy sends the file's
    meta, where dropgate's page sets `size` (presign needs it to bind each URL to its length)."""

    def __init__(self, base_url: str, label: str, token: str | None) -> None:
        self.label, self.http = label, peers.Http(base_url)
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}

    def create(self, size: int) -> Upload:
        body = {"filename": "peer.bin", "type": "application/octet-stream",
                "metadata": {"name": "peer.bin", "type": "application/octet-stream", "size": str(size)}}
        answer = _ok(self.http.request("POST", "/s3/multipart", json_body=body, headers=self.auth), "create")
        return Upload(answer["uploadId"], answer["key"])

    def _path(self, upload: Upload, tail: str = "") -> str:
        return f"/s3/multipart/{quote(upload.ref, safe='')}{tail}?key={quote(upload.key, safe='')}"

    def sign(self, upload: Upload, numbers: list[int], checksum: str) -> list[dict]:
        if len(numbers) == 1:  # what the plugin does for every part by default
            answer = _ok(self.http.request("GET", self._path(upload, f"/{numbers[0]}"), headers=self.auth), "sign")
            return [{"url": answer["url"], "headers": {}}]
        path = self._path(upload, "/batch") + "&partNumbers=" + ",".join(map(str, numbers))
        urls = _ok(self.http.request("GET", path, headers=self.auth), "batch sign")["presignedUrls"]
        return [{"url": urls[str(n)], "headers": {}} for n in numbers]

    def complete(self, upload: Upload, etag: str) -> None:
        body = {"parts": [{"PartNumber": 1, "ETag": etag}]}
        _ok(self.http.request("POST", self._path(upload, "/complete"), json_body=body, headers=self.auth), "complete")

    def abort(self, upload: Upload) -> None:
        self.http.request("DELETE", self._path(upload), headers=self.auth)


class StorageAlone:
    """No server in between: the client calls SeaweedFS itself with boto3 (the client presign uses). Not a
    contender but the floor under create and complete, which both servers pass on to storage."""

    label = "storage alone (boto3)"

    def __init__(self, s3) -> None:
        self.s3 = s3

    def create(self, size: int) -> Upload:
        key = f"peers/storage-alone/{secrets.token_hex(8)}"
        return Upload(self.s3.create_multipart_upload(Bucket=UPLOADS_BUCKET, Key=key)["UploadId"], key)

    def sign(self, upload: Upload, numbers: list[int], checksum: str) -> list[dict]:
        return [{"url": self.s3.generate_presigned_url("upload_part", ExpiresIn=URL_EXPIRY, Params={
            "Bucket": UPLOADS_BUCKET, "Key": upload.key, "UploadId": upload.ref, "PartNumber": n}), "headers": {}}
            for n in numbers]

    def complete(self, upload: Upload, etag: str) -> None:
        self.s3.complete_multipart_upload(Bucket=UPLOADS_BUCKET, Key=upload.key, UploadId=upload.ref,
                                          MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})

    def abort(self, upload: Upload) -> None:
        self.s3.abort_multipart_upload(Bucket=UPLOADS_BUCKET, Key=upload.key, UploadId=upload.ref)


# -- the Companion server --

def start_companion(stack: LocalStack, work: Path) -> tuple[ChildProcess, str]:
    port = free_port()
    data_dir = work / "companion-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    url = f"http://{HOST}:{port}"
    env = {
        "COMPANION_PORT": str(port), "COMPANION_DOMAIN": f"{HOST}:{port}", "COMPANION_PROTOCOL": "http",
        "COMPANION_DATADIR": str(data_dir), "COMPANION_SECRET": secrets.token_hex(32),
        "COMPANION_PREAUTH_SECRET": secrets.token_hex(32), "COMPANION_CLIENT_ORIGINS": url,
        # Only for remote-provider uploads (Dropbox & co.), which the bench does not use; production mode
        # refuses to start without it, and production mode is how Companion is meant to run.
        "COMPANION_UPLOAD_URLS": f"http://{HOST}:9/", "NODE_ENV": "production",
        "COMPANION_AWS_KEY": stack.secrets.s3_access_key, "COMPANION_AWS_SECRET": stack.secrets.s3_secret_key,
        "COMPANION_AWS_BUCKET": UPLOADS_BUCKET, "COMPANION_AWS_ENDPOINT": stack.ports.s3_endpoint,
        "COMPANION_AWS_REGION": "us-east-1", "COMPANION_AWS_FORCE_PATH_STYLE": "true",
        "COMPANION_AWS_EXPIRES": str(URL_EXPIRY), "COMPANION_AWS_PREFIX": "peers/companion/",
        # Companion 6.2.2's AWS SDK (3.986) defaults to requestChecksumCalculation=WHEN_SUPPORTED, which signs
        # the CRC32 of the empty `Body: ''` of s3.js's UploadPartCommand into every part URL
        # (x-amz-checksum-crc32=AAAAAA==): any real part PUT then fails with BadDigest, on SeaweedFS as on AWS
        # (aws/aws-sdk-js-v3#6994). The SDK's documented switch, read from the environment by
        # @aws-sdk/checksums (AWS_REQUEST_CHECKSUM_CALCULATION), makes the URLs usable.
        "AWS_REQUEST_CHECKSUM_CALCULATION": "WHEN_REQUIRED",
    }
    child = peers.start_node("companion", ["node_modules/@uppy/companion/bin/companion"], env,
                             stack.logs_dir, url + "/")
    return child, url


# -- the measurements --

def checksum(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def put(signed: dict, data: bytes) -> str:
    reply = put_part(signed, data, timeout=60)
    if reply.status != 200:
        raise CallFailed(f"part PUT: {reply.status} {reply.body[:300]!r}")
    return (reply.header("ETag") or "").strip('"')


def session(contender, data: bytes) -> None:
    """One whole upload of a small file: create, sign its part, PUT it to storage, complete."""
    upload = contender.create(len(data))
    [signed] = contender.sign(upload, [1], checksum(data))
    contender.complete(upload, put(signed, data))


def latencies(contenders: list, rounds: int, prepare, call) -> dict[str, list[float]]:
    """Seconds of `call(contender, prepared)` per contender, interleaved; `prepare` runs untimed before it."""
    seconds: dict[str, list[float]] = {c.label: [] for c in contenders}
    for order in peers.interleaved(contenders, rounds):
        for contender in order:
            prepared = prepare(contender)
            seconds[contender.label].append(peers.timed(lambda c=contender, p=prepared: call(c, p)))
    return seconds


def batch_upload(contender) -> Upload:
    """An upload with 128 parts at the part size the contender's client uses (Companion does not care)."""
    return contender.create(BATCH * (OWN_PART if isinstance(contender, OwnApi) else UPPY_PART))


def measure_latencies(contenders: list, floor: StorageAlone, rounds: int,
                      opened: list) -> dict[str, dict[str, list[float]]]:
    small = os.urandom(SMALL)
    sum_small = checksum(small)
    standing = {c.label: c.create(SMALL) for c in contenders}
    batched = {c.label: batch_upload(c) for c in contenders}
    opened += [(c, standing[c.label]) for c in contenders] + [(c, batched[c.label]) for c in contenders]

    def create(contender, _):
        opened.append((contender, contender.create(SMALL)))

    def ready_to_complete(contender):
        data = os.urandom(SMALL)  # fresh bytes for every upload
        upload = contender.create(SMALL)
        [signed] = contender.sign(upload, [1], checksum(data))
        return upload, put(signed, data)

    def sign_batch(contender, _):
        signed = contender.sign(batched[contender.label], list(range(1, BATCH + 1)), sum_small)
        assert len(signed) == BATCH and len({s["url"] for s in signed}) == BATCH

    return {
        "create": latencies([*contenders, floor], rounds, lambda c: None, create),
        "sign": latencies(contenders, rounds, lambda c: None,
                          lambda c, _: c.sign(standing[c.label], [1], sum_small)),
        "batch": latencies(contenders, rounds, lambda c: None, sign_batch),
        "complete": latencies([*contenders, floor], rounds, ready_to_complete, lambda c, p: c.complete(*p)),
    }


@dataclass
class Cpu:
    server: float = 0.0  # the contender's own server processes
    postgres: float = 0.0
    storage: float = 0.0
    sessions: int = 0


def measure_cpu(contenders: list, servers: dict[str, int], postgres: int | None, storage: int, sessions: int,
                block: int) -> dict[str, Cpu]:
    """CPU seconds per contender over `sessions` sessions, in blocks of `block` alternating between contenders.
    Each block reads the counters of the contender's server, PostgreSQL and SeaweedFS before and after."""
    spent = {c.label: Cpu() for c in contenders}
    for order in peers.interleaved(contenders, max(1, sessions // block)):
        for contender in order:
            roots = {"server": servers[contender.label], "postgres": postgres, "storage": storage}
            before = {name: peers.tree_cpu_seconds(pid) for name, pid in roots.items() if pid}
            for _ in range(block):
                session(contender, os.urandom(SMALL))
            used = spent[contender.label]
            for name, value in before.items():
                setattr(used, name, getattr(used, name) + peers.tree_cpu_seconds(roots[name]) - value)
            used.sessions += block
    return spent


def latency_rows(seconds: dict[str, dict[str, list[float]]], ours: list, theirs) -> list[dict]:
    rows = []
    specs = [("create", "create multipart upload", "≥ 2×", 2.0),
             ("sign", "single-part sign (what @uppy/aws-s3 calls per part)", "≥ 3×", 3.0),
             ("batch", f"{BATCH}-part batch sign", "≥ 15× (≤ ~18 µs per URL)", 15.0),
             ("complete", f"complete (1 part of {SMALL // 1024} KiB in storage)", None, None)]
    for step, title, target, threshold in specs:
        seconds_of = seconds[step]
        peer = seconds_of[theirs.label]
        for contender in ours:
            mine = seconds_of[contender.label]
            ratio = statistics.median(peer) / statistics.median(mine)
            ours_text, peer_text = f"{peers.spread(mine)} ms", f"{peers.spread(peer)} ms"
            if step == "batch":
                ours_text += f"; {statistics.median(mine) / BATCH * 1e6:.1f} µs per URL"
                peer_text += f"; {statistics.median(peer) / BATCH * 1e6:.1f} µs per URL"
            if StorageAlone.label in seconds_of:  # what storage alone takes of it, measured in the same rounds
                peer_text += f"; storage alone {peers.spread(seconds_of[StorageAlone.label])} ms"
            rows.append(peers.row(f"{title}: {contender.label} vs Companion (median, min–max, {len(mine)} rounds)",
                                  ours_text, f"{peer_text} ({theirs.label})", ratio, target, threshold))
    return rows


def cpu_rows(spent: dict[str, Cpu], ours: list, theirs) -> list[dict]:
    peer = spent[theirs.label]
    peer_ms = peer.server / peer.sessions * 1000
    rows = []
    for contender in ours:
        mine = spent[contender.label]
        presign_ms, pg_ms = mine.server / mine.sessions * 1000, mine.postgres / mine.sessions * 1000
        storage = (f"; storage {mine.storage / mine.sessions * 1000:.1f} vs "
                   f"{peer.storage / peer.sessions * 1000:.1f} ms")
        rows.append(peers.row(
            f"server CPU per upload session (create, sign, complete): {contender.label} vs Companion "
            f"({mine.sessions} sessions each)",
            f"presign {presign_ms:.1f} ms (+ PostgreSQL {pg_ms:.1f} ms){storage}",
            f"{peer_ms:.1f} ms ({theirs.label} node process)", peer_ms / presign_ms,
            "≤ Companion's (ratio ≥ 1)", 1.0))
        rows.append(peers.row(
            f"server CPU per upload session, presign + PostgreSQL: {contender.label} vs Companion",
            f"{presign_ms + pg_ms:.1f} ms", f"{peer_ms:.1f} ms ({theirs.label})", peer_ms / (presign_ms + pg_ms),
            "≤ Companion's (ratio ≥ 1)", 1.0))
    return rows


def measure(stack: LocalStack, *, quick: bool) -> list[dict]:
    """Needs PostgreSQL and storage started; starts its own presign (bench/load.py's limits) and Companion,
    and stops both, whatever happens."""
    peers.ensure_installed()
    rounds, sessions, block = (25, 30, 10) if quick else (150, 150, 15)
    children: list[ChildProcess] = []
    opened: list = []
    try:
        presign = peers.start_presign(stack, "presign-peers")
        children.append(presign.process)
        companion, companion_url = start_companion(stack, stack.data_dir / "peers")
        children.append(companion)
        token = peers.dev_token(stack, "peers-companion")
        version = peers.package_version("@uppy/companion")
        ours = [OwnApi(presign.url, token), CompanionProtocol(presign.url, "dropgate, Companion route", token)]
        theirs = CompanionProtocol(companion_url, f"Companion {version}", None)
        contenders = [*ours, theirs]
        for contender in contenders:  # warm up: JWKS, connection pools, JIT, keep-alive connections
            for _ in range(5):
                session(contender, os.urandom(SMALL))
            warm = batch_upload(contender)
            opened.append((contender, warm))
            contender.sign(warm, list(range(1, BATCH + 1)), checksum(b""))
        floor = StorageAlone(create_s3_client(stack.storage_settings(), max_attempts=1))
        session(floor, os.urandom(SMALL))
        seconds = measure_latencies(contenders, floor, rounds, opened)
        servers = {ours[0].label: presign.process.pid, ours[1].label: presign.process.pid,
                   theirs.label: companion.pid}
        spent = measure_cpu(contenders, servers, peers.postgres_pid(stack), stack.children["seaweedfs"].pid,
                            sessions, block)
        return latency_rows(seconds, ours, theirs) + cpu_rows(spent, ours, theirs)
    finally:
        for contender, upload in opened:  # leave no open multipart upload behind (untimed)
            with contextlib.suppress(Exception):  # a server already gone leaves nothing to abort
                contender.abort(upload)
        for child in reversed(children):
            child.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="presign beside @uppy/companion (bench/peers/companion.py)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and sessions")
    args = parser.parse_args(argv)
    return peers.run_alone(lambda stack: measure(stack, quick=args.quick))


if __name__ == "__main__":
    sys.exit(main())
