"""Faults and load against a whole local stack of this module's own: nothing acknowledged is lost.

The stack here (SeaweedFS, PostgreSQL, clamd, the local broker, every function) runs in its
own temporary folder on its own ports, so stopping its pieces never disturbs the session stack
other tests use. Between the emitters (storage_events, and presign's fast path when enabled)
and the broker sits an `EventTap`: it forwards every event and keeps a copy, and on demand
holds events back or swallows one post, which is how the tests steer the pipeline without
mocking any of it.

Each fault test drives uploads the way a browser with retries does (a 5xx or a refused
connection is tried again, as Uppy does), provokes the fault for real while uploads and scans
run, heals it, replays the dead letters with the operator's tool
(`dropgate_local.ops.replay_dead_letters`, `dropgate-dev replay-dead-letters`), and then
checks what the issue asks of every acknowledged upload (one whose `complete` answered 200):

- it ends with exactly one verdict (one `scan.verdict` audit entry, status = scan_verdict);
- none is lost (every one is in the database and its object where its verdict says);
- none was downloadable before it was clean (a sentinel asks presign for a download link of
  every upload all along; any link it gets must belong to a clean row).

Load: `test_load_*`, DROPGATE_LOAD_USERS users (20 by default in the quick case; 400 in the
slow one) each upload a DROPGATE_LOAD_SIZE_MB (25) MB file through presign and storage, at most
DROPGATE_LOAD_CONCURRENCY (50) at once; zero errors, and every file reaches a verdict.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import shutil
import threading
import time
import urllib.error
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dropgate_local import ops
from dropgate_local.client import Reply, b64sha, call
from dropgate_local.devauth import DevSigningKey, issuer_url
from dropgate_local.stack import FUNCTIONS, LocalStack, StackPorts
from shared.platform.storage import create_s3_client
from tests.conftest import EICAR, as_broker
from tests.test_presign import payload

MIB = 1024 * 1024
FINAL = ("clean", "infected", "rejected", "unscannable")
RETRYABLE = {429, 500, 502, 503, 504}
VERDICT_TIMEOUT = 240


# ---------------------------------------------------------------------------------------------- the tap

@dataclass
class Tapped:
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def id(self) -> str:
        return self.headers.get("ce-id", "")

    @property
    def type(self) -> str:
        return self.headers.get("ce-type", "")

    @property
    def subject(self) -> str:
        return urllib.parse.unquote(self.headers.get("ce-subject", ""))

    @property
    def bucket(self) -> str:
        return self.headers.get("ce-bucket", "")


class EventTap:
    """An HTTP hop in front of the broker ingress: forwards each event, keeps a copy of each.

    `held()` keeps events back (they are forwarded when the block ends, unless dropped);
    `stall_next()` accepts the next post and never answers it, until `drop_stalled()`
    closes that connection without forwarding: a post lost with its sender.
    """

    def __init__(self) -> None:
        self.target: str | None = None
        self.seen: list[Tapped] = []
        self._lock = threading.Lock()
        self._holding = threading.Event()
        self._released = threading.Event()
        self._release_forwards = True
        self._stall = threading.Event()
        self.stalled = threading.Event()
        self._drop = threading.Event()
        tap = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                tapped = Tapped({k.lower(): v for k, v in self.headers.items()}, body)
                with tap._lock:
                    tap.seen.append(tapped)
                    stall = tap._stall.is_set()
                    tap._stall.clear()
                if stall:
                    tap.stalled.set()
                    tap._drop.wait(120)
                    self.close_connection = True
                    self.connection.close()  # the sender is gone; so is its post
                    return
                if tap._holding.is_set():
                    tap._released.wait(300)
                    if not tap._release_forwards:
                        self._answer(202, b"{}")
                        return
                status, answer = tap._forward(tapped)
                self._answer(status, answer)

            def _answer(self, status: int, body: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the sender gave up waiting (a held event): the broker has it all the same

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def _forward(self, tapped: Tapped) -> tuple[int, bytes]:
        # A transparent hop: the sender's token goes on to the ingress, which checks it.
        headers = {k: v for k, v in tapped.headers.items()
                   if k.startswith("ce-") or k in ("content-type", "authorization")}
        try:
            reply = call("POST", self.target, data=tapped.body, headers=headers, timeout=30)
        except OSError as exc:
            return 503, json.dumps({"error": "tap", "detail": str(exc)}).encode()
        return reply.status, reply.body

    class _Hold:
        def __init__(self, tap: EventTap, forward: bool) -> None:
            self.tap, self.forward = tap, forward

        def __enter__(self) -> EventTap:
            self.tap._released.clear()
            self.tap._holding.set()
            return self.tap

        def __exit__(self, *exc: object) -> None:
            self.tap._release_forwards = self.forward
            self.tap._holding.clear()
            self.tap._released.set()

    def held(self, *, forward_on_release: bool = True) -> EventTap._Hold:
        return EventTap._Hold(self, forward_on_release)

    def stall_next(self) -> None:
        self.stalled.clear()
        self._drop.clear()
        self._stall.set()

    def drop_stalled(self) -> None:
        self._drop.set()

    def events_for(self, key: str) -> list[Tapped]:
        with self._lock:
            return [t for t in self.seen if t.subject == key]

    def stop(self) -> None:
        self._released.set()
        self._drop.set()
        self._server.shutdown()
        self._server.server_close()


# ---------------------------------------------------------------------------------------------- the rig

@dataclass
class Rig:
    stack: LocalStack
    tap: EventTap
    database_url: str
    s3: Any
    embedded_postgres: bool
    signing_key: DevSigningKey = field(init=False)

    def __post_init__(self) -> None:
        self.signing_key = DevSigningKey.load_or_create(self.stack.data_dir / "dev-oidc")

    # -- processes --

    def start(self, name: str) -> None:
        """A function as the rig runs it: its events go through the tap."""
        self.stack.start_function(name, extra_env={"K_SINK": self.tap.url})

    def url(self, name: str) -> str:
        return self.stack.ports.function_url(name)

    @property
    def router(self) -> str:
        return f"http://127.0.0.1:{self.stack.ports.router}"

    @property
    def dead_letter_file(self) -> Path:
        return self.stack.logs_dir / "dead-letter.jsonl"

    def dead_letters(self) -> list[dict]:
        if not self.dead_letter_file.exists():
            return []
        return [json.loads(line) for line in self.dead_letter_file.read_text().splitlines() if line.strip()]

    def replay(self) -> list[ops.Replayed]:
        """What the operator runs once the fault is fixed: `dropgate-dev replay-dead-letters`."""
        token = ops.operator_token_file(self.stack.data_dir, self.stack.ports.dev_oidc)
        return ops.replay_dead_letters(self.dead_letter_file, self.router + "/", token_file=str(token))

    def settle_router(self, timeout: float = 120) -> None:
        """Until no delivery the router has in hand is pending any more."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = call("GET", f"{self.router}/events?limit=1000").json()["events"]
            if all(d["outcome"] != "pending" for e in events for d in e["deliveries"]):
                return
            time.sleep(0.2)
        raise AssertionError("the router still has deliveries pending")

    # -- users --

    def token(self, subject: str) -> str:
        return self.signing_key.mint(subject=subject, roles=["uploader"],
                                     issuer=issuer_url("127.0.0.1", self.stack.ports.dev_oidc), ttl_seconds=7200)

    # -- the database --

    def query(self, sql: str, *params: Any) -> list[dict]:
        with psycopg.connect(self.database_url, row_factory=psycopg.rows.dict_row, connect_timeout=5) as conn:
            return conn.execute(sql, params).fetchall()

    def statuses(self, ids: list[str]) -> dict[str, str]:
        return {str(r["id"]): r["status"] for r in self.query("SELECT id, status FROM uploads WHERE id = ANY(%s::uuid[])",
                                                                 ids)}

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def wait_for_verdicts(self, ids: list[str], timeout: float = VERDICT_TIMEOUT) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                current = self.statuses(ids)
            except psycopg.OperationalError:
                current = {}
            if len(current) == len(ids) and all(s in FINAL for s in current.values()):
                return current
            if time.monotonic() > deadline:
                waiting = {i: s for i, s in current.items() if s not in FINAL}
                raise AssertionError(f"{len(waiting)} of {len(ids)} uploads have no verdict: {waiting}; "
                                     f"dead letters: {[d['id'] for d in self.dead_letters()]}")
            time.sleep(0.25)


def _stop_rig(stack: LocalStack, tap: EventTap, data_dir: Path) -> None:
    stack.stop()
    tap.stop()
    shutil.rmtree(data_dir, ignore_errors=True)  # the load writes gigabytes; keep none of it


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    data_dir = tmp_path_factory.mktemp("reliability-stack")
    stack = LocalStack(data_dir, StackPorts.allocate())
    tap = EventTap()
    try:
        database_url = stack.start_postgres()
        stack.start_clamd(try_update=False)
        stack.start_storage()
        stack.start_dev_oidc()
        stack.start_router()
        tap.target = f"http://127.0.0.1:{stack.ports.router}/"
        rig = Rig(stack, tap, database_url, create_s3_client(stack.storage_settings(), max_attempts=1),
                  embedded_postgres=stack.postgres is not None)
        for name in FUNCTIONS:
            rig.start(name)
        yield rig
    finally:
        _stop_rig(stack, tap, data_dir)


@pytest.fixture(autouse=True)
def healed(rig: Rig) -> Iterator[None]:
    """After each test, whatever it broke runs again, so a failure never cascades into the next test."""
    yield
    rig.tap.drop_stalled()
    if rig.embedded_postgres:
        rig.stack.postgres.restart()  # a no-op when it runs
    if not rig.stack.children["seaweedfs"].running:
        rig.stack.start_storage()
    if not rig.stack.children["clamd"].running:
        rig.stack.start_clamd(try_update=False)
    for name in FUNCTIONS:
        if not rig.stack.children[name].running:
            rig.start(name)


# ---------------------------------------------------------------------------------------------- clients

class Refused(AssertionError):
    """An answer a retrying client cannot get past: the upload is lost to it."""


def _call(method: str, url: str, **kwargs: Any) -> Reply | None:
    """One request; None when no HTTP answer came (connection refused, reset, timed out)."""
    try:
        return call(method, url, **kwargs)
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError):
        return None


# Every retry a client made, as (method, path without query, status or None for no answer): the tests
# check that their fault was really felt.
CLIENT_RETRIES: list[tuple[str, str, int | None]] = []


def retrying(method: str, url: str, *, ok: tuple[int, ...], deadline: float, **kwargs: Any) -> Reply:
    """As a browser with retries: try again on no answer, 429 and 5xx, until the deadline."""
    delay = 0.2
    while True:
        reply = _call(method, url, **kwargs)
        if reply is not None and reply.status in ok:
            return reply
        CLIENT_RETRIES.append((method, urllib.parse.urlsplit(url).path, reply.status if reply else None))
        if reply is not None and reply.status not in RETRYABLE:
            raise Refused(f"{method} {url.split('?')[0]} -> {reply.status} {reply.body[:300]!r}")
        if time.monotonic() > deadline:
            raise Refused(f"{method} {url.split('?')[0]}: still failing at the deadline "
                          f"({reply.status if reply else 'no answer'})")
        time.sleep(delay)
        delay = min(delay * 2, 3.0)


@dataclass
class Uploaded:
    id: str
    key: str
    sha256: str
    expected: str  # the verdict it must get


def browser_upload(rig: Rig, token: str, data: bytes, *, content_type: str = "application/octet-stream",
                   filename: str = "file.bin", expected: str = "clean", timeout: float = 300,
                   on_created: Callable[[dict], None] = lambda _record: None,
                   before_complete: Callable[[dict], None] = lambda _record: None) -> Uploaded:
    """The whole browser flow with retries; returns once `complete` answered 200 (acknowledged)."""
    deadline = time.monotonic() + timeout
    presign = rig.url("presign")
    sha256 = hashlib.sha256(data).hexdigest()
    record = retrying("POST", f"{presign}/uploads", ok=(201,), deadline=deadline, token=token, json_body={
        "filename": filename, "size": len(data), "content_type": content_type, "sha256": sha256}).json()
    on_created(record)
    chunks = [data[i:i + record["part_size"]] for i in range(0, len(data), record["part_size"])]
    signed = retrying("POST", f"{presign}/uploads/{record['id']}/parts", ok=(200,), deadline=deadline, token=token,
                      json_body={"parts": [{"number": n, "sha256": b64sha(c)} for n, c in enumerate(chunks, 1)]})
    etags = []
    for part in signed.json()["parts"]:
        headers = {k: v for k, v in part["headers"].items() if k.lower() != "content-length"}
        put = retrying("PUT", part["url"], ok=(200,), deadline=deadline, data=chunks[part["number"] - 1],
                       headers=headers)
        etags.append({"number": part["number"], "etag": put.header("ETag")})
    before_complete(record)
    retrying("POST", f"{presign}/uploads/{record['id']}/complete", ok=(200,), deadline=deadline, token=token,
             json_body={"parts": etags})
    return Uploaded(record["id"], record["key"], sha256, expected)


class DownloadSentinel:
    """Asks presign for a download link of every upload it is told about, all along.

    A link must only ever be handed out for a clean row; any other is recorded as a breach.
    """

    def __init__(self, rig: Rig, token_of: dict[str, str]) -> None:
        self.rig, self.token_of = rig, token_of
        self.links = 0
        self.breaches: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DownloadSentinel:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            for upload_id, token in list(self.token_of.items()):
                reply = _call("GET", f"{self.rig.url('presign')}/files/{upload_id}/download", token=token, timeout=10)
                if reply is None or reply.status != 200:
                    continue
                self.links += 1
                try:
                    (row,) = self.rig.query("SELECT status, scan_verdict FROM uploads WHERE id = %s", upload_id)
                except psycopg.OperationalError:
                    continue
                if (row["status"], row["scan_verdict"]) != ("clean", "clean"):
                    self.breaches.append(f"{upload_id}: link handed out while {row}")
            self._stop.wait(0.3)


def assert_every_upload_has_exactly_one_verdict(rig: Rig, uploads: list[Uploaded], *, read_bytes: bool = True) -> None:
    """The issue's three promises, for every acknowledged upload."""
    ids = [u.id for u in uploads]
    final = rig.wait_for_verdicts(ids)
    rows = {str(r["id"]): r for r in rig.query("SELECT * FROM uploads WHERE id = ANY(%s::uuid[])", ids)}
    verdicts = {str(r["upload_id"]): r["n"] for r in rig.query(
        "SELECT upload_id, count(*) AS n FROM audit_log WHERE upload_id = ANY(%s::uuid[])"
        " AND action IN ('scan.verdict', 'reconcile.failed') GROUP BY upload_id", ids)}
    storage = rig.stack.storage_settings()
    for upload in uploads:
        row = rows[upload.id]
        assert final[upload.id] == upload.expected, (upload.id, final[upload.id], row["scan_detail"], row["status_reason"])
        assert row["scan_verdict"] == row["status"], row
        assert verdicts.get(upload.id) == 1, (upload.id, verdicts.get(upload.id))
        in_uploads = _exists(rig.s3, storage.uploads_bucket, upload.key)
        in_quarantine = _exists(rig.s3, storage.quarantine_bucket, upload.key)
        if upload.expected == "clean":
            assert (in_uploads, in_quarantine) == (True, False), upload
            assert row["sha256"] == upload.sha256  # what the scan read, hashed
            if read_bytes:
                body = rig.s3.get_object(Bucket=storage.uploads_bucket, Key=upload.key)["Body"].read()
                assert hashlib.sha256(body).hexdigest() == upload.sha256
        else:
            assert (in_uploads, in_quarantine) == (False, True), upload


def _exists(s3, bucket: str, key: str) -> bool:  # noqa: ANN001
    return s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) > 0


def run_uploads(rig: Rig, jobs: list[tuple[bytes, str, str]], *, prefix: str, workers: int = 4,
                token_of: dict[str, str] | None = None) -> tuple[list[Uploaded], dict[str, str], list[str]]:
    """Upload `jobs` (data, content type, expected verdict) in parallel; (acknowledged, token per id, failures)."""
    token_of = {} if token_of is None else token_of
    failures: list[str] = []
    done: list[Uploaded] = []
    lock = threading.Lock()

    def one(index: int, job: tuple[bytes, str, str]) -> None:
        data, content_type, expected = job
        subject = f"{prefix}-{index}-{uuid.uuid4().hex[:6]}"
        token = rig.token(subject)
        try:
            uploaded = browser_upload(rig, token, data, content_type=content_type, expected=expected,
                                      on_created=lambda r: token_of.__setitem__(r["id"], token))
        except Refused as exc:
            with lock:
                failures.append(str(exc))
            return
        with lock:
            done.append(uploaded)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(one, i, job) for i, job in enumerate(jobs)]
        for future in futures:
            future.result()
    return done, token_of, failures


# ---------------------------------------------------------------------------------------------- faults

def test_the_rig_keeps_its_data_across_a_storage_restart(rig) -> None:
    """SeaweedFS restarted on the same ports and data folder keeps what it held (the storage fault relies on it)."""
    storage = rig.stack.storage_settings()
    key = f"probe/{uuid.uuid4()}"
    rig.s3.put_object(Bucket=storage.uploads_bucket, Key=key, Body=b"kept")
    rig.stack.children["seaweedfs"].stop()
    rig.stack.start_storage()
    assert rig.s3.get_object(Bucket=storage.uploads_bucket, Key=key)["Body"].read() == b"kept"


@dataclass
class Survived:
    uploads: list[Uploaded]
    failures: list[str]
    client_retries: list[tuple[str, str, int | None]]  # what the clients felt of the fault
    dead_lettered: set[str]  # subjects (object keys) that were in the dead-letter sink before the replay
    long_scan: Uploaded
    links: int
    breaches: list[str]


def survive(rig: Rig, prefix: str, break_it: Callable[[], None], heal_it: Callable[[], None],
            outage_seconds: float = 3.0, until_clients_feel_it: bool = False) -> Survived:
    """Break a dependency while one long scan runs and a second wave of uploads is on its way; heal it,
    replay the dead letters, and return what happened for the test to judge.

    The outage outlasts the dev overlay's retry schedule (0.2 + 0.4 + 0.8 s), so whatever the broker
    could not deliver meanwhile ends in the dead-letter sink and is replayed, as an operator would.
    """
    first = [(payload(250 * MIB, seed=hash(prefix) % 1000), "application/octet-stream", "clean"),
             (EICAR, "text/plain", "infected"),
             (b"%PDF-1.7\n" + payload(12 * MIB, seed=1), "application/pdf", "clean")]
    second = [(payload(20 * MIB, seed=10 + i), "application/octet-stream", "clean") for i in range(4)]
    second.append((b"%PDF-1.7\n" + payload(3 * MIB, seed=20), "application/pdf", "clean"))
    token_of: dict[str, str] = {}
    results: dict[str, Any] = {}
    threads = {wave: threading.Thread(target=lambda w=wave, jobs=jobs: results.__setitem__(
        w, run_uploads(rig, jobs, prefix=f"{prefix}-{w}", token_of=token_of)))
        for wave, jobs in (("a", first), ("b", second))}
    dead_lettered: set[str] = set()
    with DownloadSentinel(rig, token_of) as sentinel:
        threads["a"].start()
        rig.wait_for(lambda: bool(rig.query(
            "SELECT 1 FROM uploads WHERE status = 'scanning' AND owner LIKE %s AND declared_size > %s",
            f"{prefix}-a-%", 200 * MIB)), "the long scan to start", timeout=300)
        threads["b"].start()
        rig.wait_for(lambda: bool(rig.query("SELECT 1 FROM uploads WHERE owner LIKE %s", f"{prefix}-b-%")),
                     "the second wave to start")
        retries_before = len(CLIENT_RETRIES)
        break_it()
        time.sleep(outage_seconds)
        # A fixed outage can fall between two client calls on a busy machine: for dependencies the
        # clients use, keep it broken until one of them has met it (bounded), then heal.
        felt_deadline = time.monotonic() + 60
        while until_clients_feel_it and len(CLIENT_RETRIES) == retries_before and time.monotonic() < felt_deadline:
            time.sleep(0.2)
        heal_it()
        for thread in threads.values():
            thread.join()
        uploads = results["a"][0] + results["b"][0]
        deadline = time.monotonic() + VERDICT_TIMEOUT
        while True:  # the operator's loop: replay until nothing waits (a replay may meet the fault's tail)
            rig.settle_router()
            dead_lettered |= {d.get("subject") for d in rig.dead_letters()}
            rig.replay()
            current = rig.statuses([u.id for u in uploads])
            if all(s in FINAL for s in current.values()) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert_every_upload_has_exactly_one_verdict(rig, uploads)
    (long_id,) = [r["id"] for r in rig.query("SELECT id FROM uploads WHERE owner LIKE %s AND declared_size > %s",
                                              f"{prefix}-a-%", 200 * MIB)]
    long_scan = next(u for u in uploads if u.id == str(long_id))
    survived = Survived(uploads, results["a"][2] + results["b"][2], CLIENT_RETRIES[retries_before:], dead_lettered,
                        long_scan, sentinel.links, sentinel.breaches)
    print(f"{prefix}: {len(uploads)} acknowledged, client retries {sorted(set(survived.client_retries), key=str)}, "
          f"dead-lettered {len(dead_lettered)}, download links handed out {sentinel.links}")
    return survived


def assert_survived(survived: Survived, *, clients_felt_it: bool) -> None:
    assert survived.failures == [], survived.failures  # every upload a client started was acknowledged
    assert len(survived.uploads) == 8
    assert survived.breaches == []  # no link for anything but a clean file
    assert survived.long_scan.key in survived.dead_lettered, "the fault cut the long scan, the replay finished it"
    if clients_felt_it:
        assert survived.client_retries, "the second wave's clients saw the outage"


def test_clamd_stopped_and_restarted_during_uploads_and_scans(rig) -> None:
    clamd = rig.stack.children
    survived = survive(rig, "clamd", break_it=lambda: clamd["clamd"].stop(),
                       heal_it=lambda: rig.stack.start_clamd(try_update=False))
    assert_survived(survived, clients_felt_it=False)  # clients never talk to clamd


def test_postgresql_stopped_and_restarted_during_uploads_and_scans(rig) -> None:
    if not rig.embedded_postgres:
        pytest.skip("DATABASE_URL points at a server this test cannot stop")
    survived = survive(rig, "postgres", break_it=rig.stack.postgres.stop, heal_it=rig.stack.postgres.restart,
                       until_clients_feel_it=True)
    assert_survived(survived, clients_felt_it=True)


def test_storage_stopped_and_restarted_during_uploads_and_scans(rig) -> None:
    storage = rig.stack.storage_settings()
    kept = browser_upload(rig, rig.token(f"storage-kept-{uuid.uuid4().hex[:6]}"), payload(9 * MIB, seed=300))
    rig.wait_for_verdicts([kept.id])
    survived = survive(rig, "storage", break_it=lambda: rig.stack.children["seaweedfs"].stop(),
                       heal_it=rig.stack.start_storage, until_clients_feel_it=True)
    assert_survived(survived, clients_felt_it=True)
    # What storage held before it stopped is still there, byte for byte, and still served.
    body = rig.s3.get_object(Bucket=storage.uploads_bucket, Key=kept.key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == kept.sha256
    assert_every_upload_has_exactly_one_verdict(rig, [kept])


def _backend_waiting_on(rig: Rig, statement: str) -> bool:
    return bool(rig.query("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                          f"{statement}%"))


def test_presign_killed_in_the_middle_of_a_completion(rig) -> None:
    """SIGKILL presign after storage completed the multipart upload but before the row was committed.

    The client's retry must find the upload complete, not abort it and delete the file.
    """
    token = rig.token(f"killed-presign-{uuid.uuid4().hex[:6]}")
    data = payload(20 * MIB, seed=400)
    presign = rig.url("presign")
    storage = rig.stack.storage_settings()
    # Events held back: nothing downstream moves the row while presign is dead and the client retries.
    with rig.tap.held():
        upload = create_and_put_parts(rig, token, data)
        record = upload["record"]
        body = {"parts": upload["etags"]}
        with psycopg.connect(rig.database_url, autocommit=False) as blocker:
            # The completion's audit entry waits behind this lock: storage has completed, the row is not committed.
            blocker.execute("LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE")
            answers: list[Reply | None] = []
            caller = threading.Thread(target=lambda: answers.append(
                _call("POST", f"{presign}/uploads/{record['id']}/complete", token=token, json_body=body, timeout=60)))
            caller.start()
            rig.wait_for(lambda: _backend_waiting_on(rig, "INSERT INTO audit_log"), "the completion to reach its audit entry")
            assert _exists(rig.s3, storage.uploads_bucket, record["key"]), "storage completed the upload"
            rig.stack.children["presign"].kill()
            caller.join(30)
            blocker.rollback()
        assert answers == [None], "the client saw the connection die, not an answer"
        rig.start("presign")
        rig.wait_for(lambda: rig.statuses([record["id"]])[record["id"]] == "pending", "the dead transaction to roll back")
        assert call("GET", f"{presign}/files/{record['id']}/download", token=token).status == 409
        retried = retrying("POST", f"{presign}/uploads/{record['id']}/complete", ok=(200,),
                           deadline=time.monotonic() + 60, token=token, json_body=body)
        assert retried.json()["status"] == "uploaded"
    uploaded = Uploaded(record["id"], record["key"], hashlib.sha256(data).hexdigest(), "clean")
    assert_every_upload_has_exactly_one_verdict(rig, [uploaded])
    assert call("GET", f"{presign}/files/{record['id']}/download", token=token).status == 200
    actions = [r["action"] for r in rig.query("SELECT action FROM audit_log WHERE upload_id = %s ORDER BY id", record["id"])]
    assert actions.count("upload.completed") == 1 and "upload.rejected_at_completion" not in actions


def create_and_put_parts(rig: Rig, token: str, data: bytes) -> dict:
    presign = rig.url("presign")
    deadline = time.monotonic() + 120
    record = retrying("POST", f"{presign}/uploads", ok=(201,), deadline=deadline, token=token, json_body={
        "filename": "f.bin", "size": len(data), "content_type": "application/octet-stream",
        "sha256": hashlib.sha256(data).hexdigest()}).json()
    chunks = [data[i:i + record["part_size"]] for i in range(0, len(data), record["part_size"])]
    signed = retrying("POST", f"{presign}/uploads/{record['id']}/parts", ok=(200,), deadline=deadline, token=token,
                      json_body={"parts": [{"number": n, "sha256": b64sha(c)} for n, c in enumerate(chunks, 1)]})
    etags = []
    for part in signed.json()["parts"]:
        headers = {k: v for k, v in part["headers"].items() if k.lower() != "content-length"}
        put = retrying("PUT", part["url"], ok=(200,), deadline=deadline, data=chunks[part["number"] - 1], headers=headers)
        etags.append({"number": part["number"], "etag": put.header("ETag")})
    return {"record": record, "etags": etags}


def test_storage_events_killed_while_posting_to_the_broker(rig) -> None:
    """SIGKILL storage_events while its POST to the broker is in flight: the notification dies with it.

    SeaweedFS 4.48's filer webhook does not retry (a refused connection, a cut one or a 5xx go straight
    to its own dead-letter log, whatever `max_retries` says), so storage never sends it again. The
    reconciliation pass finds the upload completed without a verdict once its grace period is over,
    re-emits the object's "object created" event, and the scan gives the one verdict.
    """
    token = rig.token(f"killed-adapter-{uuid.uuid4().hex[:6]}")
    data = payload(9 * MIB, seed=500)
    upload = create_and_put_parts(rig, token, data)
    record = upload["record"]
    rig.tap.stall_next()
    done = call("POST", f"{rig.url('presign')}/uploads/{record['id']}/complete", token=token,
                json_body={"parts": upload["etags"]})
    assert done.status == 200  # acknowledged
    assert rig.tap.stalled.wait(60), "storage_events never posted the notification"
    rig.stack.children["storage_events"].kill()
    rig.tap.drop_stalled()
    rig.start("storage_events")
    rig.settle_router()
    time.sleep(2)  # storage would have retried by now, if it did
    assert rig.statuses([record["id"]]) == {record["id"]: "uploaded"}, "nothing reached scan"
    assert call("GET", f"{rig.url('presign')}/files/{record['id']}/download", token=token).status == 409
    # The grace period passes (staged: the clock is the row's, not the test's), and the PingSource fires.
    rig.query("UPDATE uploads SET completed_at = now() - interval '1 hour' WHERE id = %s RETURNING id", record["id"])
    fired = call("POST", f"{rig.router}/pingsources/dropgate-reconcile")
    assert fired.status == 202, fired.body
    uploaded = Uploaded(record["id"], record["key"], hashlib.sha256(data).hexdigest(), "clean")
    assert_every_upload_has_exactly_one_verdict(rig, [uploaded])
    actions = [r["action"] for r in rig.query("SELECT action FROM audit_log WHERE upload_id = %s ORDER BY id",
                                              record["id"])]
    assert actions.count("reconcile.redriven") == 1, actions
    assert call("GET", f"{rig.url('presign')}/files/{record['id']}/download", token=token).status == 200


def test_the_same_events_three_times_and_out_of_order(rig) -> None:
    """An infected upload's storage events (created, copied to quarantine, removed) delivered straight to scan
    and metadata, each three times, the newest first and then concurrently; then once more by the broker."""
    token = rig.token(f"dup-{uuid.uuid4().hex[:6]}")
    storage = rig.stack.storage_settings()
    with rig.tap.held(forward_on_release=True):
        uploaded = browser_upload(rig, token, EICAR, content_type="text/plain", expected="infected")
        rig.wait_for(lambda: distinct(rig.tap.events_for(uploaded.key)), "storage's notification of the upload")
        (completion,) = distinct(rig.tap.events_for(uploaded.key))
        assert completion.type.endswith("ObjectCreated:CompleteMultipartUpload")
        with ThreadPoolExecutor(max_workers=3) as pool:
            scan_answers = list(pool.map(lambda t: post_event(rig, "scan", t), [completion] * 3))
        assert [a.status for a in scan_answers] == [200] * 3, [a.body for a in scan_answers]
        assert len({a.header("ce-id") for a in scan_answers}) == 1
        assert scan_answers[0].header("ce-type") == "dev.dropgate.scan.infected"
        # The scan moved the object: a copy into the quarantine and a removal from the uploads bucket.
        rig.wait_for(lambda: len(distinct(rig.tap.events_for(uploaded.key))) >= 3, "the quarantine move's events")
        events = distinct(rig.tap.events_for(uploaded.key))
        for tapped in reversed(events):  # the removal first, the creation last
            assert post_event(rig, "metadata", tapped).status in (200, 204)
        shuffled = events * 2
        random.Random(7).shuffle(shuffled)
        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(pool.map(lambda t: post_event(rig, "metadata", t), shuffled))
            answers += list(pool.map(lambda t: post_event(rig, "scan", t), [completion] * 2))
        assert all(a.status in (200, 204) for a in answers), [(a.status, a.body[:100]) for a in answers]
        first_pass = metadata_state(rig, uploaded)
    # Released: the broker now delivers each of them once more (and storage's own retries, if any).
    rig.settle_router()
    assert metadata_state(rig, uploaded) == first_pass
    assert_every_upload_has_exactly_one_verdict(rig, [uploaded])
    # A late creation never resurrects what was removed; the copy in the quarantine is recorded.
    assert first_pass["locations"] == {(storage.uploads_bucket, False), (storage.quarantine_bucket, True)}
    assert first_pass["audit"].get("scan.verdict") == 1
    assert all(n == 1 for n in first_pass["audit"].values()), first_pass["audit"]
    assert first_pass["row"]["status"] == "infected"


def distinct(tapped: list[Tapped]) -> list[Tapped]:
    """One of each event id, in the order they first arrived (storage may post one several times)."""
    seen: dict[str, Tapped] = {}
    for t in tapped:
        seen.setdefault(t.id, t)
    return list(seen.values())


def post_event(rig: Rig, function: str, tapped: Tapped) -> Reply:
    """Deliver a tapped event to `function` as the broker would (with its Trigger's token)."""
    headers = {k: v for k, v in tapped.headers.items() if k.startswith("ce-") or k == "content-type"}
    return call("POST", rig.url(function), data=tapped.body, headers={**headers, **as_broker(function, rig.stack)},
                timeout=120)


def metadata_state(rig: Rig, uploaded: Uploaded) -> dict:
    locations = {(r["bucket"], r["present"]) for r in rig.query(
        "SELECT bucket, present FROM storage_objects WHERE object_key = %s", uploaded.key)}
    audit: dict[str, int] = {}
    for r in rig.query("SELECT action FROM audit_log WHERE upload_id = %s AND actor LIKE 'system:%%'", uploaded.id):
        audit[r["action"]] = audit.get(r["action"], 0) + 1
    processed = rig.query("SELECT consumer, event_id, outcome FROM processed_events WHERE event_id = ANY(%s)",
                          [t.id for t in rig.tap.events_for(uploaded.key)])
    (row,) = rig.query("SELECT status, scan_verdict, stored_size, etag FROM uploads WHERE id = %s", uploaded.id)
    return {"locations": locations, "audit": audit, "row": row,
            "processed": sorted((p["consumer"], p["event_id"], p["outcome"]) for p in processed)}


def test_retries_exhausted_into_the_dead_letter_sink_then_replayed(rig) -> None:
    """scan is down for longer than its Trigger retries: the events land in the dead-letter sink, and the
    operator's replay brings every upload to its one verdict."""
    rig.stack.children["scan"].kill()
    jobs = [(payload(9 * MIB, seed=600 + i), "application/octet-stream", "clean") for i in range(3)]
    jobs.append((EICAR, "text/plain", "infected"))
    done, token_of, failures = run_uploads(rig, jobs, prefix="dead-letter")
    assert failures == []
    ids = {u.key for u in done}
    rig.wait_for(lambda: {d.get("subject") for d in rig.dead_letters()} >= ids, "every scan delivery to be dead-lettered")
    letters = [d for d in rig.dead_letters() if d.get("subject") in ids]
    assert {d["knativeerrorcode"] for d in letters} == {500}  # no answer at all: a connection error
    assert all(d["knativeerrordest"] == rig.url("scan") for d in letters)
    assert set(rig.statuses([u.id for u in done]).values()) <= {"uploaded", "pending"}  # no verdict without scan
    with DownloadSentinel(rig, token_of) as sentinel:
        time.sleep(1)
        rig.start("scan")
        replayed = rig.replay()
        assert {r.outcome for r in replayed} == {"replayed"}
        assert {r.id for r in replayed} >= {d["id"] for d in letters}
        assert_every_upload_has_exactly_one_verdict(rig, done)
    assert rig.dead_letters() == []
    kept = (rig.dead_letter_file.with_name(rig.dead_letter_file.name + ".replayed")).read_text()
    assert all(d["id"] in kept for d in letters)
    assert sentinel.breaches == []


# ---------------------------------------------------------------------------------------------- load

def _load_settings(users_default: int) -> tuple[int, int, int]:
    return (int(os.environ.get("DROPGATE_LOAD_USERS", users_default)),
            int(os.environ.get("DROPGATE_LOAD_SIZE_MB", "25")),
            int(os.environ.get("DROPGATE_LOAD_CONCURRENCY", "50")))


def run_load(rig: Rig, users: int, size_mb: int, concurrency: int) -> None:
    """`users` users at once (at most `concurrency` in flight) each upload one file, as bench/load.py drives them."""
    from bench.load import Payload, Timings, upload_through_dropgate

    run = uuid.uuid4().hex[:6]
    file = Payload(size_mb * 1000 * 1000)
    timings = Timings()
    tokens = [rig.token(f"load-{run}-{i}") for i in range(users)]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(lambda token: upload_through_dropgate(rig.url("presign"), token, file, timings), tokens))
    uploaded_in = time.monotonic() - started
    assert timings.errors == [], timings.errors[:5]
    rows = rig.query("SELECT id, object_key FROM uploads WHERE owner LIKE %s", f"load-{run}-%")
    assert len(rows) == users
    uploads = [Uploaded(str(r["id"]), r["object_key"], file.sha256, "clean") for r in rows]
    rig.wait_for_verdicts([u.id for u in uploads], timeout=max(VERDICT_TIMEOUT, users * size_mb / 20))
    total = time.monotonic() - started
    keys = {u.key for u in uploads}
    assert [d for d in rig.dead_letters() if d.get("subject") in keys] == []
    assert_every_upload_has_exactly_one_verdict(rig, uploads, read_bytes=False)
    print(f"load: {users} users x {size_mb} MB ({concurrency} at once): uploaded in {uploaded_in:.0f} s, "
          f"every verdict after {total:.0f} s, 0 errors")


def test_load_quick(rig) -> None:
    users, size_mb, concurrency = _load_settings(users_default=20)
    run_load(rig, min(users, 20), size_mb, concurrency)


@pytest.mark.slow
def test_load_400_users_25_mb(rig) -> None:
    users, size_mb, concurrency = _load_settings(users_default=400)
    run_load(rig, users, size_mb, concurrency)
