"""dropgate's direct-to-storage data plane beside a tus server that relays the bytes into the same SeaweedFS.

N users at once each upload one file of S MB (full: 400 × 25 MB; quick: 24 × 25 MB), fresh bytes for every
upload, on both sides:

    dropgate   the browser's flow through presign (dropgate_local.client, as bench/load.py): create, part
               URLs each bound to the part's SHA-256 (computed before the clock starts, as load.py does),
               PUT every part straight to storage, complete
    tus        @tus/server + @tus/s3-store (bench/peers/tus-server.mjs): a tus 1.0 client written here,
               POST (creation, Upload-Length) then PATCH (Upload-Offset, application/offset+octet-stream).
               tus-js-client's default chunkSize is Infinity (tus/tus-js-client docs/api.md, "chunkSize"):
               the whole file in one PATCH; the store cuts it into S3 parts of its own preferred size
               (8 MiB by default, node_modules/@tus/s3-store/README.md "options.partSize").

Part bodies on their way to storage are capped alike: @tus/s3-store sends at most 60 at once (its default
maxConcurrentPartUploads), and dropgate's users share a cap of the same size (bench/load.py, IN_FLIGHT_PUTS).

The runs alternate (dropgate, tus, tus, dropgate) so that storage filling up and drift fall on both;
throughput is all the bytes over all the seconds of a side's runs. Each upload's bytes are an AES-256-CTR
keystream under a key from os.urandom: never a repeated block, made at about 1 GB/s, and seekable, so a part
is produced again when it is sent instead of being held. Producing bytes is inside the timed window on both
sides alike (reading the file, for a browser).

Run alone: `.venv/bin/python -m bench.peers.tus [--quick]` (starts its own stack).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from urllib.parse import urlsplit

from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from dropgate_local.client import DropgateClient, UploadFailed
from dropgate_local.processes import ChildProcess, free_port
from dropgate_local.stack import HOST, UPLOADS_BUCKET, LocalStack

from bench import peers
from bench.load import IN_FLIGHT_PUTS
from shared.platform.storage import create_s3_client
from shared.uploads.parts import choose_part_size, part_length

MB = 1000 * 1000
MIB = 1024 * 1024
PIECE = MIB  # what the tus client hands the socket at a time
OWN_PART = 8 * MIB  # presign's default part size (DROPGATE_PART_SIZE)


class RandomFile:
    """One upload's bytes: AES-256-CTR keystream under a fresh os.urandom key, readable at any 16-byte offset."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._key = os.urandom(32)
        self._counter = int.from_bytes(os.urandom(16), "big")

    def read(self, offset: int, length: int) -> bytes:
        assert offset % 16 == 0, "CTR blocks are 16 bytes"
        counter = ((self._counter + offset // 16) % 2**128).to_bytes(16, "big")
        return Cipher(algorithms.AES(self._key), modes.CTR(counter)).encryptor().update(bytes(length))

    def pieces(self, start: int, end: int, piece: int = PIECE) -> Iterator[bytes]:
        """Bytes start..end, made `piece` at a time as the socket takes them (nothing held for long)."""
        for offset in range(start, end, piece):
            yield self.read(offset, min(piece, end - offset))


@dataclass
class Prepared:
    """A dropgate upload's file with what its client knows before uploading: each part's SHA-256 and the file's."""

    file: RandomFile
    part_size: int
    part_sha256: dict[int, str]
    sha256: str


def prepare_for_dropgate(size: int) -> Prepared:
    """Untimed: the checksums dropgate's client binds into the part URLs (as bench/load.py's Payload)."""
    file, part_size = RandomFile(size), choose_part_size(size, OWN_PART)
    whole, parts = hashlib.sha256(), {}
    for number, offset in enumerate(range(0, size, part_size), 1):
        data = file.read(offset, part_length(number, size, part_size))
        whole.update(data)
        parts[number] = base64.b64encode(hashlib.sha256(data).digest()).decode()
    return Prepared(file, part_size, parts, whole.hexdigest())


@dataclass
class Run:
    side: str
    seconds: float
    bytes: int
    errors: list[str] = field(default_factory=list)
    stored: dict[str, RandomFile] = field(default_factory=dict)  # object key -> the bytes sent there
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, message: str) -> None:
        with self.lock:
            self.errors.append(message[:300])


def dropgate_upload(presign: str, token: str, prepared: Prepared, run: Run,
                    gate: threading.BoundedSemaphore | None = None) -> None:
    def read_part(number: int, part_size: int) -> bytes:
        assert part_size == prepared.part_size, "presign split the file differently from the checksums"
        return prepared.file.read((number - 1) * part_size, part_length(number, prepared.file.size, part_size))

    try:
        done = DropgateClient(presign, token, timeout=300, part_gate=gate).upload_from(
            filename="peer.bin", size=prepared.file.size, read_part=read_part, sha256=prepared.sha256,
            checksums=prepared.part_sha256)
        with run.lock:
            run.stored[done.record["key"]] = prepared.file
    except (UploadFailed, OSError, HTTPException) as failed:
        run.fail(f"dropgate: {failed}")


def tus_upload(endpoint: str, file: RandomFile, run: Run, chunk_size: int | None = None) -> None:
    """tus 1.0: POST with Upload-Length (creation), then PATCH from offset 0, the whole file in one request
    unless `chunk_size` is given (tus-js-client's default is Infinity: one PATCH)."""
    base = urlsplit(endpoint)
    http = peers.Http(f"{base.scheme}://{base.netloc}", timeout=300)
    tus = {"Tus-Resumable": "1.0.0"}
    try:
        metadata = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}"
                            for k, v in {"filename": "peer.bin", "filetype": "application/octet-stream"}.items())
        status, headers, body = http.request("POST", base.path, headers={
            **tus, "Upload-Length": str(file.size), "Upload-Metadata": metadata})
        if status != 201 or "location" not in headers:
            return run.fail(f"tus create: {status} {body[:200]!r}")
        path = urlsplit(headers["location"]).path
        offset, step = 0, chunk_size or file.size
        while offset < file.size:
            length = min(step, file.size - offset)
            status, headers, body = http.request("PATCH", path, body=file.pieces(offset, offset + length), headers={
                **tus, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream",
                "Content-Length": str(length)})
            if status != 204 or int(headers.get("upload-offset", -1)) != offset + length:
                return run.fail(f"tus PATCH at {offset}: {status} {headers.get('upload-offset')} {body[:200]!r}")
            offset += length
        with run.lock:
            run.stored[path.rsplit("/", 1)[1]] = file  # @tus/s3-store names the object by the upload id
    except (OSError, HTTPException) as failed:
        run.fail(f"tus: {type(failed).__name__}: {failed}")
    finally:
        http.close()
    return None


def start_tus(stack: LocalStack, work: Path) -> tuple[ChildProcess, str]:
    port = free_port()
    tmp = work / "tus-tmp"  # where @tus/s3-store spools each part before sending it (os.tmpdir())
    tmp.mkdir(parents=True, exist_ok=True)
    env = {"TUS_HOST": HOST, "TUS_PORT": str(port), "TUS_S3_BUCKET": UPLOADS_BUCKET, "TUS_S3_REGION": "us-east-1",
           "TUS_S3_ENDPOINT": stack.ports.s3_endpoint, "TUS_S3_ACCESS_KEY": stack.secrets.s3_access_key,
           "TUS_S3_SECRET_KEY": stack.secrets.s3_secret_key, "TMPDIR": str(tmp)}
    url = f"http://{HOST}:{port}/files"
    return peers.start_node("tus", ["tus-server.mjs"], env, stack.logs_dir, url), url


def run_dropgate(presign: str, tokens: list[str], size: int) -> Run:
    with ThreadPoolExecutor(max_workers=2) as pool:  # untimed: the checksums the client knows beforehand
        prepared = list(pool.map(lambda _: prepare_for_dropgate(size), tokens))
    run = Run("dropgate", 0.0, len(tokens) * size)
    # @tus/s3-store sends at most 60 parts to storage at once (its default maxConcurrentPartUploads); dropgate's
    # users, whose browsers PUT parts straight to storage, get the same cap (bench/load.py, IN_FLIGHT_PUTS).
    gate = threading.BoundedSemaphore(IN_FLIGHT_PUTS)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(tokens)) as pool:
        list(pool.map(lambda pair: dropgate_upload(presign, pair[0], pair[1], run, gate),
                      zip(tokens, prepared, strict=True)))
    run.seconds = time.perf_counter() - started
    return run


def run_tus(endpoint: str, users: int, size: int) -> Run:
    files = [RandomFile(size) for _ in range(users)]
    run = Run("tus", 0.0, users * size)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=users) as pool:
        list(pool.map(lambda file: tus_upload(endpoint, file, run), files))
    run.seconds = time.perf_counter() - started
    return run


def check_stored(s3, run: Run, size: int) -> None:
    """Untimed: every object the run reports is in storage at its full size (tus answers the last PATCH only
    after completing the multipart upload; this confirms it), and one of them holds exactly the bytes sent."""
    for key in run.stored:
        try:
            length = s3.head_object(Bucket=UPLOADS_BUCKET, Key=key)["ContentLength"]
        except ClientError as missing:
            length = f"nothing ({missing})"
        if length != size:
            run.fail(f"{run.side}: {key} holds {length} bytes, not {size}")
    if run.stored:
        key, file = next(iter(run.stored.items()))
        sent = hashlib.sha256()
        for piece in file.pieces(0, file.size):
            sent.update(piece)
        stored = hashlib.sha256(s3.get_object(Bucket=UPLOADS_BUCKET, Key=key)["Body"].read()).hexdigest()
        if stored != sent.hexdigest():
            run.fail(f"{run.side}: {key} does not hold the bytes sent")


def forget_tus_objects(s3, run: Run) -> None:
    """The tus run's objects (and the store's .info files) leave the bucket, so that nothing later in the same
    stack (an expire pass, an orphan sweep) meets them; dropgate's stay, as their rows point at them. SeaweedFS
    does not give the disk space back soon (its /vol/vacuum found no garbage within a minute), so plan()
    counts every run's bytes."""
    keys = [k for key in run.stored for k in (key, f"{key}.info")]
    for first in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=UPLOADS_BUCKET, Delete={
            "Objects": [{"Key": k} for k in keys[first:first + 1000]], "Quiet": True})


def plan(stack: LocalStack, users: int, size: int) -> list[str]:
    """dropgate, tus, tus, dropgate when the disk holds the four runs' bytes (plus room), else one run each."""
    free = shutil.disk_usage(stack.data_dir).free
    return ["dropgate", "tus", "tus", "dropgate"] if free > 4.2 * users * size + 4e9 else ["dropgate", "tus"]


def throughput_row(runs: list[Run], users: int, size: int, order: list[str], tus_version: str) -> dict:
    def side(name: str) -> tuple[float, str, int]:
        mine = [r for r in runs if r.side == name]
        rate = sum(r.bytes for r in mine) / sum(r.seconds for r in mine) / MB
        each = ", ".join(f"{r.bytes / r.seconds / MB:.0f}" for r in mine)
        return rate, each, sum(len(r.errors) for r in mine)

    ours, ours_each, ours_errors = side("dropgate")
    theirs, theirs_each, theirs_errors = side("tus")
    result = peers.row(
        f"data plane: {users} × {size // MB} MB uploads at once, total throughput (runs: {', '.join(order)})",
        f"{ours:.0f} MB/s (runs {ours_each}; errors {ours_errors})",
        f"{theirs:.0f} MB/s (runs {theirs_each}; errors {theirs_errors}) (@tus/server {tus_version} + "
        f"@tus/s3-store {peers.package_version('@tus/s3-store')}, one PATCH per file)",
        ours / theirs, "≥ 2×", 2.0)
    if ours_errors or theirs_errors:
        result["met"] = False
        result["errors"] = [e for r in runs for e in r.errors[:3]]
    return result


def measure(stack: LocalStack, *, quick: bool, users: int | None = None, size_mb: int = 25) -> list[dict]:
    """Needs PostgreSQL and storage started; starts its own presign (bench/load.py's limits) and tus server,
    and stops both, whatever happens."""
    peers.ensure_installed()
    users = users or (24 if quick else 400)
    size = size_mb * MB
    children: list[ChildProcess] = []
    try:
        presign = peers.start_presign(stack, "presign-peers-tus")
        children.append(presign.process)
        tus, endpoint = start_tus(stack, stack.data_dir / "peers")
        children.append(tus)
        s3 = create_s3_client(stack.storage_settings(), max_attempts=3)
        tokens = [peers.dev_token(stack, f"peers-tus-{i}") for i in range(users)]
        dropgate_upload(presign.url, tokens[0], prepare_for_dropgate(size), Run("warm-up", 0, 0))  # JWKS, pool
        warm = Run("warm-up", 0, 0)
        tus_upload(endpoint, RandomFile(size), warm)
        forget_tus_objects(s3, warm)
        order, runs = plan(stack, users, size), []
        for side in order:
            run = run_dropgate(presign.url, tokens, size) if side == "dropgate" else run_tus(endpoint, users, size)
            check_stored(s3, run, size)
            if side == "tus":
                forget_tus_objects(s3, run)
            runs.append(run)
        return [throughput_row(runs, users, size, order, peers.package_version("@tus/server"))]
    finally:
        for child in reversed(children):
            child.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="dropgate's data plane beside @tus/server (bench/peers/tus.py)")
    parser.add_argument("--quick", action="store_true", help="24 users instead of 400")
    parser.add_argument("--users", type=int, help="uploads at once (default 400; quick 24)")
    parser.add_argument("--size-mb", type=int, default=25, help="file size in MB (default 25)")
    args = parser.parse_args(argv)
    return peers.run_alone(lambda stack: measure(stack, quick=args.quick, users=args.users, size_mb=args.size_mb))


if __name__ == "__main__":
    sys.exit(main())
