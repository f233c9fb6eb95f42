"""The whole flow on the real local stack, as `dropgate-dev up` runs it:

browser-style upload through presign -> SeaweedFS -> filer webhook -> storage_events ->
local broker (routing by manifests/overlays/dev) -> scan + metadata -> verdict -> download.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
import urllib.request

import psutil
import psycopg
import pytest

from dropgate_local.client import DropgateClient, call
from dropgate_local.devauth import DevSigningKey, issuer_url
from tests.conftest import EICAR
from tests.test_presign import MIB, payload

FINAL = {"clean", "infected", "rejected", "unscannable"}


@pytest.fixture(scope="module")
def dev_token(stack, running_functions):  # noqa: ANN201
    key = DevSigningKey.load_or_create(stack.data_dir / "dev-oidc")

    def mint(subject: str) -> str:
        return key.mint(subject=subject, roles=["uploader"], issuer=issuer_url("127.0.0.1", stack.ports.dev_oidc))
    return mint


def upload(presign: str, token: str, data: bytes, content_type: str, filename: str,
           on_created=lambda record: None) -> dict:  # noqa: ANN001
    return DropgateClient(presign, token).upload(data, content_type, filename, on_created=on_created).record


def wait_for_status(presign: str, token: str, upload_id: str, wanted: set[str], timeout: float = 120) -> dict:
    return DropgateClient(presign, token).wait_for(upload_id, wanted, timeout)


def router_events(stack) -> list[dict]:  # noqa: ANN001
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports.router}/events?limit=500", timeout=10) as response:  # noqa: S310
        return json.loads(response.read())["events"]


def test_upload_is_scanned_recorded_and_downloadable(running_functions, dev_token, stack, database_url) -> None:
    presign, token = running_functions["presign"], dev_token("pipeline-alice")
    data = b"%PDF-1.7\n" + payload(12 * MIB, seed=21)
    record = upload(presign, token, data, "application/pdf", "report.pdf")

    final = wait_for_status(presign, token, record["id"], FINAL)
    assert final["status"] == "clean" and final["sha256"] == hashlib.sha256(data).hexdigest()
    link = call("GET", f"{presign}/files/{record['id']}/download", token=token)
    assert link.status == 200
    downloaded = call("GET", link.json()["url"])
    assert hashlib.sha256(downloaded.body).hexdigest() == hashlib.sha256(data).hexdigest()

    # metadata recorded what storage reported, through the same broker.
    with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
        row = conn.execute("SELECT stored_size, etag FROM uploads WHERE id = %s", (record["id"],)).fetchone()
    assert row["stored_size"] == len(data) and row["etag"].endswith(f"-{record['part_count']}")
    seen = [e for e in router_events(stack) if e.get("subject") in (record["key"], record["id"])]
    types = {e["type"] for e in seen}
    assert "com.amazonaws.s3.ObjectCreated:CompleteMultipartUpload" in types
    assert "dev.dropgate.scan.clean" in types  # scan's reply went back into the broker


def test_eicar_ends_infected_and_is_never_downloadable(running_functions, dev_token) -> None:
    presign, token = running_functions["presign"], dev_token("pipeline-bob")
    record = upload(presign, token, EICAR, "text/plain", "eicar.txt")
    final = wait_for_status(presign, token, record["id"], FINAL)
    assert final["status"] == "infected" and final["scan_verdict"] == "infected"
    refused = call("GET", f"{presign}/files/{record['id']}/download", token=token)
    assert refused.status == 403


def test_a_killed_scan_worker_is_retried_by_the_broker(running_functions, dev_token, stack, database_url) -> None:
    """SIGKILL the scan function's worker in the middle of a scan: the broker's retry gets the verdict."""
    presign, token = running_functions["presign"], dev_token("pipeline-carol")
    scan_master = stack.children["scan"].process.pid
    data = payload(150 * MIB, seed=22)
    killed = threading.Event()
    upload_id: dict = {}
    seen: list[str] = []  # every status the killer read, for the failure message

    def kill_worker_while_scanning() -> None:
        # The row reads `scanning` exactly while a worker streams the object through clamd. A
        # gunicorn master between workers has no child for a moment: keep looking, never give up early.
        deadline = time.monotonic() + 300
        with psycopg.connect(database_url, autocommit=True) as conn:
            while time.monotonic() < deadline and not killed.is_set():
                if "id" in upload_id:
                    status = conn.execute("SELECT status FROM uploads WHERE id = %s", (upload_id["id"],)).fetchone()[0]
                    if not seen or seen[-1] != status:
                        seen.append(status)
                    if status in FINAL:
                        return  # too late: the scan ended between two looks
                    if status == "scanning":
                        for worker in psutil.Process(scan_master).children():
                            os.kill(worker.pid, signal.SIGKILL)
                            killed.set()
                time.sleep(0.02)

    record = {}
    killer = threading.Thread(target=kill_worker_while_scanning)
    killer.start()
    try:
        record = upload(presign, token, data, "application/octet-stream", "big.bin", on_created=upload_id.update)
    finally:
        killer.join()
    if not killed.is_set():
        arrived = [(e["type"], [(d["subscriber"], d["outcome"]) for d in e["deliveries"]])
                   for e in router_events(stack) if e.get("subject") in (record.get("key"), record.get("id"))]
        pytest.fail(f"no scan worker was killed mid-scan; statuses seen {seen}; the broker saw {arrived}")
    final = wait_for_status(presign, token, record["id"], FINAL, timeout=300)
    assert final["status"] == "clean"
    attempts = [e for e in router_events(stack) if e.get("subject") == record["key"]
                and e.get("type") == "com.amazonaws.s3.ObjectCreated:CompleteMultipartUpload"]
    deliveries = [d for e in attempts for d in e["deliveries"] if "dropgate-scan" in d["subscriber"]]
    assert any(len(d["attempts"]) > 1 and d["outcome"] == "delivered" for d in deliveries), deliveries


@pytest.mark.parametrize("task", ["expire", "reconcile"])
def test_a_scheduled_pass_through_the_broker_ends_delivered_with_its_summary_event(running_functions, stack,
                                                                                 task: str) -> None:
    """The PingSource fires through the broker; the function's reply is a CloudEvent, so the delivery
    succeeds (a bare JSON body would be a 502 on Knative, and in the local broker) and the summary is published."""
    fired = call("POST", f"http://127.0.0.1:{stack.ports.router}/pingsources/dropgate-{task}")
    assert fired.status == 202, fired.body
    ping_id = fired.json()["id"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        record = next((e for e in router_events(stack) if e["id"] == ping_id), None)
        if record and record["deliveries"] and all(d["outcome"] != "pending" for d in record["deliveries"]):
            break
        time.sleep(0.2)
    (delivery,) = record["deliveries"]
    assert delivery["outcome"] == "delivered", delivery
    assert [a["status"] for a in delivery["attempts"]] == [200]
    assert delivery["reply_type"] == f"dev.dropgate.{task}.completed"
    published = next(e for e in router_events(stack) if e["id"] == delivery["reply_id"])
    assert published["origin"] == f"reply:dropgate-{task}-ping" and published["subject"]
