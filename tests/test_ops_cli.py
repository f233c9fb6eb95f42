"""The operator commands of `dropgate-dev` (local-dev/ops.py) against the real local stack: each in its
default form (a table, read back by its columns) and with --json (the shape scripts rely on), with
progress on stderr for the long ones."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from dropgate_local.cli import main
from dropgate_local.client import call
from dropgate_local.processes import free_port, http_ok
from events.types import ObjectCreated
from shared.platform.delivery import EventSink
from shared.platform.storage import create_s3_client, ensure_bucket
from tests.conftest import EICAR
from tests.test_output import parse_table
from tests.test_pipeline import FINAL, dev_token, router_events, upload, wait_for_status  # noqa: F401 - fixture
from tests.test_presign import payload

STEPS = ("upload.created", "upload.completed", "storage.object_recorded", "scan.verdict")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def wait_until(condition, timeout: float = 120, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)
    return found


def audit_actions(database_url: str, upload_id: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        return [r[0] for r in conn.execute("SELECT action FROM audit_log WHERE upload_id = %s ORDER BY at, id",
                                           (upload_id,)).fetchall()]


@pytest.fixture(scope="module")
def clean_upload(running_functions, dev_token, database_url) -> dict:  # noqa: F811
    presign, token = running_functions["presign"], dev_token("ops-alice")
    record = upload(presign, token, b"%PDF-1.7\n" + payload(6 * 1024 * 1024, seed=77), "application/pdf", "ops.pdf")
    assert wait_for_status(presign, token, record["id"], FINAL)["status"] == "clean"
    wait_until(lambda: set(STEPS) <= set(audit_actions(database_url, record["id"])), what="every step in the audit")
    return {**record, "token": token}


def test_history_shows_every_step_of_a_real_upload(clean_upload, stack, capsys) -> None:
    code, out, _ = run_cli(capsys, "--data-dir", stack.data_dir, "history", clean_upload["id"])
    assert code == 0
    trail = parse_table(out.split("audit trail:\n", 1)[1])  # the audit trail is a table, in order
    actions = [row["action"] for row in trail]
    assert set(STEPS) <= set(actions) and [a for a in actions if a in STEPS][:2] == ["upload.created",
                                                                                     "upload.completed"]
    assert all(row["trace"] != "-" for row in trail if row["action"] in STEPS)
    assert "status clean" in out and "verdict clean" in out
    assert f"{clean_upload['key']}: present" in out and "encryption AES256" in out  # storage, now
    assert "'dropgate-verdict': 'clean'" in out  # the scan's tag on the object
    assert "ObjectCreated:CompleteMultipartUpload" in out and "replied dev.dropgate.scan.clean" in out

    code, out, _ = run_cli(capsys, "--data-dir", stack.data_dir, "history", clean_upload["id"], "--json")
    history = json.loads(out)
    actions = [entry["action"] for entry in history["audit"]]
    assert [a for a in actions if a in STEPS][:2] == ["upload.created", "upload.completed"]
    assert all(entry["trace_id"] for entry in history["audit"] if entry["action"] in STEPS)
    uploads_bucket, quarantine = history["storage"]
    assert uploads_bucket["present"] and uploads_bucket["server_side_encryption"] == "AES256"
    assert uploads_bucket["metadata"]["upload-id"] == clean_upload["id"] and "traceparent" in uploads_bucket["metadata"]
    assert not quarantine["present"]
    assert {p["consumer"] for p in history["processed_events"]} >= {"scan", "metadata"}

    code, _, err = run_cli(capsys, "--data-dir", stack.data_dir, "history", str(uuid.uuid4()))
    assert code == 2 and "no upload" in err


def test_rescan_resets_the_verdict_audits_it_and_the_scan_decides_again(clean_upload, running_functions, stack,
                                                                        database_url, capsys) -> None:
    presign, token, upload_id = running_functions["presign"], clean_upload["token"], clean_upload["id"]
    with psycopg.connect(database_url) as conn:
        first_scan = conn.execute("SELECT scanned_at FROM uploads WHERE id = %s", (upload_id,)).fetchone()[0]
    code, out, err = run_cli(capsys, "--data-dir", stack.data_dir, "rescan", upload_id, "--operator", "carol",
                             "--reason", "signatures of today", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["previous_status"] == "clean"
    with psycopg.connect(database_url) as conn:
        assert wait_until(lambda: conn.execute(
            "SELECT status FROM uploads WHERE id = %s AND scanned_at > %s", (upload_id, first_scan)).fetchone(),
            what="the new verdict")[0] == "clean"
        entries = conn.execute("SELECT action, actor, detail FROM audit_log WHERE upload_id = %s ORDER BY at, id",
                               (upload_id,)).fetchall()
    requested = [e for e in entries if e[0] == "upload.rescan_requested"]
    assert requested and requested[0][1] == "operator:carol"
    assert requested[0][2]["previous_verdict"] == "clean" and requested[0][2]["reason"] == "signatures of today"
    assert [e[0] for e in entries].count("scan.verdict") == 2
    # The new verdict is an event of its own, not a copy of the first one.
    replies = {e["id"] for e in router_events(stack) if e["type"] == "dev.dropgate.scan.clean"
               and e.get("subject") == upload_id}
    assert {f"{upload_id}.scan", f"{upload_id}.rescan.{result['rescan_id']}"} <= replies
    assert call_status(presign, token, upload_id) == "clean"


def call_status(presign: str, token: str, upload_id: str) -> str:
    return call("GET", f"{presign}/uploads/{upload_id}", token=token).json()["status"]


def test_rescan_refuses_what_must_stay_in_quarantine(running_functions, dev_token, stack, capsys) -> None:  # noqa: F811
    presign, token = running_functions["presign"], dev_token("ops-bob")
    record = upload(presign, token, EICAR, "text/plain", "eicar.txt")
    assert wait_for_status(presign, token, record["id"], FINAL)["status"] == "infected"
    code, _, err = run_cli(capsys, "--data-dir", stack.data_dir, "rescan", record["id"])
    assert code == 2 and "infected" in err and "quarantine" in err
    assert call_status(presign, token, record["id"]) == "infected"


def test_a_dead_lettered_event_replayed_by_the_cli_reaches_its_function(stack, running_functions, database_url,
                                                                        tmp_path, capsys, monkeypatch) -> None:
    """A broker whose metadata subscriber is down dead-letters an event; once it is up, the CLI replays it."""
    bucket, metadata_port, router_port = "ops-replay-uploads", free_port(), free_port()
    dead_letters = tmp_path / "dead-letter.jsonl"
    router = stack._start("router-replay", stack.router_command(
        router_port, services={"dropgate-metadata": f"http://127.0.0.1:{metadata_port}"}, dead_letter=dead_letters,
        uploads_bucket=bucket, quarantine_bucket=f"{bucket}-q"))
    # The operator's token for the broker, as `kubectl create token dropgate-operator ...` writes it.
    operator_token = str(stack.operator_token_file())
    monkeypatch.setenv("DROPGATE_SINK_TOKEN_FILE", operator_token)
    metadata = None
    try:
        router.wait_until(lambda: http_ok(f"http://127.0.0.1:{router_port}/healthz"), timeout=30)
        broker = f"http://127.0.0.1:{router_port}/"
        trace = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
        # A real object (metadata believes only what storage confirms), in a bucket no webhook watches.
        s3, key = create_s3_client(stack.storage_settings()), f"replay/{uuid.uuid4()}"
        ensure_bucket(s3, bucket)
        etag = s3.put_object(Bucket=bucket, Key=key, Body=b"abc")["ETag"].strip('"')
        event = ObjectCreated(id=f"ops-replay-{uuid.uuid4().hex}", event_name="ObjectCreated:Put",
                              event_source="minio:s3", region="", bucket=bucket, key=key,
                              time=datetime.now(UTC), size=3, etag=etag, sequencer="1A",
                              traceparent=trace).to_cloudevent()
        EventSink(broker, token_file=operator_token).send(event)
        wait_until(lambda: dead_letters.exists() and event["id"].encode() in dead_letters.read_bytes(),
                   what="the dead letter")  # nothing listens on metadata's port: retries, then the dead letter

        metadata = stack.start_function("metadata", port=metadata_port, label="metadata-replay")
        code, out, err = run_cli(capsys, "--data-dir", tmp_path, "replay-dead-letters", "--file", dead_letters,
                                 "--broker", broker, "--dry-run", "--json")
        assert code == 0, err
        assert [(r["id"], r["outcome"]) for r in json.loads(out)] == [(event["id"], "kept")]
        assert event["id"].encode() in dead_letters.read_bytes()  # a dry run leaves the file as it was

        code, out, err = run_cli(capsys, "--data-dir", tmp_path, "replay-dead-letters", "--file", dead_letters,
                                 "--broker", broker)
        assert code == 0, err
        assert parse_table(out) == [{"outcome": "replayed", "id": event["id"], "type": event["type"], "detail": "-"}]
        assert err.splitlines()[-1].startswith("replay-dead-letters: 1/1 (100%)")  # progress, on stderr
        assert dead_letters.read_bytes().strip() == b""
        assert event["id"] in (tmp_path / "dead-letter.jsonl.replayed").read_text()

        with psycopg.connect(database_url) as conn:
            outcome = wait_until(lambda: conn.execute(
                "SELECT outcome FROM processed_events WHERE consumer = 'metadata' AND event_id = %s",
                (event["id"],)).fetchone(), what="metadata to apply the replayed event")[0]
        assert outcome == "orphan"  # it reached the function, which recorded an object no upload owns
        replayed = [e for e in router_events_at(router_port) if e["id"] == event["id"]]
        assert len(replayed) == 2 and replayed[-1]["deliveries"][0]["outcome"] == "delivered"
        assert "knativeerrorcode" not in replayed[-1]["attributes"]  # Knative's bookkeeping stays behind
        assert replayed[-1]["attributes"]["traceparent"] == trace  # a replay continues the event's trace
    finally:
        for child in (metadata, router):
            if child is not None:
                child.stop()
        stack.children.pop("metadata-replay", None)
        stack.children.pop("router-replay", None)


def router_events_at(port: int) -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/events?limit=500", timeout=10) as response:
        return json.loads(response.read())["events"]


def test_expire_now_fires_the_pingsource_and_expire_runs(stack, running_functions, capsys) -> None:
    code, out, err = run_cli(capsys, "--data-dir", stack.data_dir, "expire-now", "--wait", "120", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["via"] == "local router"
    assert [(d["trigger"], d["outcome"]) for d in result["deliveries"]] == [("dropgate-expire-ping", "delivered")]
    assert result["deliveries"][0]["attempts"][-1]["status"] == 200


def test_rescan_of_many_shows_progress_and_an_outcome_per_file(running_functions, dev_token, stack,  # noqa: F811
                                                               database_url, capsys) -> None:
    """--all-clean takes every clean upload the filters choose; one that may not be rescanned is that
    file's outcome, not the batch's end."""
    owner = f"ops-bulk-{uuid.uuid4().hex[:8]}"
    presign, token = running_functions["presign"], dev_token(owner)
    files = [upload(presign, token, b"%PDF-1.7\n" + payload(64 * 1024, seed=90 + i), "application/pdf", f"b{i}.pdf")
             for i in range(2)]
    for record in files:
        assert wait_for_status(presign, token, record["id"], FINAL)["status"] == "clean"
    infected = upload(presign, token, EICAR, "text/plain", "bulk-eicar.txt")
    assert wait_for_status(presign, token, infected["id"], FINAL)["status"] == "infected"
    ids = sorted(record["id"] for record in files)

    code, out, err = run_cli(capsys, "--data-dir", stack.data_dir, "rescan", "--all-clean", "--owner", owner,
                             "--operator", "dana", "--reason", "bulk check")
    assert code == 0, err
    rows = parse_table(out)
    assert sorted(row["upload_id"] for row in rows) == ids  # the clean ones only: not the infected file
    assert {(row["outcome"], row["previous_status"]) for row in rows} == {("rescanned", "clean")}
    assert err.splitlines()[-1].startswith("rescan: 2/2 (100%)") and "rescan:" not in out
    for upload_id in ids:
        assert wait_for_status(presign, token, upload_id, FINAL)["status"] == "clean"
        assert audit_actions(database_url, upload_id).count("upload.rescan_requested") == 1
        assert audit_actions(database_url, upload_id).count("scan.verdict") == 2  # the scan decided again

    code, out, err = run_cli(capsys, "--data-dir", stack.data_dir, "rescan", ids[0], infected["id"], "--json")
    assert code == 1  # not every file was rescanned
    results = {r["upload_id"]: r for r in json.loads(out)}
    assert results[ids[0]]["outcome"] == "rescanned" and results[ids[0]]["rescan_id"]
    assert results[infected["id"]]["outcome"] == "refused" and "quarantine" in results[infected["id"]]["detail"]
    assert call_status(presign, token, infected["id"]) == "infected"
    assert wait_for_status(presign, token, ids[0], FINAL)["status"] == "clean"

    code, _, err = run_cli(capsys, "--data-dir", stack.data_dir, "rescan", ids[0], "--since", "2026-01-01")
    assert code == 2 and "--all-clean" in err


def test_expire_dry_run_lists_what_the_pass_would_delete_and_deletes_nothing(clean_upload, stack, database_url,
                                                                            capsys) -> None:
    """The dry run asks the expire pass's own selection; `--at` shows what a later pass would take."""
    upload_id, key = clean_upload["id"], clean_upload["key"]
    storage = stack.storage_settings()
    s3 = create_s3_client(storage)
    orphan = f"ops-dry-run/{uuid.uuid4()}"  # in the uploads bucket, owned by no upload
    s3.put_object(Bucket=storage.uploads_bucket, Key=orphan, Body=b"left behind")
    with psycopg.connect(database_url) as conn:
        expires_at = conn.execute("SELECT expires_at FROM uploads WHERE id = %s", (upload_id,)).fetchone()[0]
    audit_before = audit_actions(database_url, upload_id)
    try:
        code, out, err = run_cli(capsys, "--data-dir", stack.data_dir, "expire-now", "--dry-run", "--json")
        assert code == 0, err
        now = json.loads(out)
        assert upload_id not in {u["upload_id"] for u in now["uploads"]}  # not due yet
        assert orphan not in {o["key"] for o in now["orphans"]}  # younger than the orphan grace period
        assert err.splitlines()[-1].startswith("expire dry run: 4/4 (100%)")

        later = (expires_at + timedelta(minutes=1)).isoformat()
        code, out, err = run_cli(capsys, "--data-dir", stack.data_dir, "expire-now", "--dry-run", "--at", later)
        assert code == 0, err
        assert out.startswith(f"expire pass at {later} (dry run: nothing was changed)")
        rows = {row["key"]: row for row in parse_table(out)}
        assert (rows[key]["action"], rows[key]["upload_id"], rows[key]["status"]) == ("expire", upload_id, "clean")
        assert rows[key]["buckets"] == storage.uploads_bucket and rows[key]["reason"] == "retention passed"
        assert (rows[orphan]["action"], rows[orphan]["buckets"]) == ("delete orphan", storage.uploads_bucket)

        code, out, _ = run_cli(capsys, "--data-dir", stack.data_dir, "expire-now", "--dry-run", "--at", later,
                               "--json")
        mine = [u for u in json.loads(out)["uploads"] if u["upload_id"] == upload_id]
        assert [(u["outcome"], u["buckets"]) for u in mine] == [("expired", [storage.uploads_bucket])]
    finally:
        s3.delete_object(Bucket=storage.uploads_bucket, Key=orphan)
    # Nothing was changed: the row, its object, its audit trail.
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT status FROM uploads WHERE id = %s", (upload_id,)).fetchone()[0] == "clean"
    assert s3.head_object(Bucket=storage.uploads_bucket, Key=key)["ContentLength"] > 0
    assert audit_actions(database_url, upload_id) == audit_before

    code, _, err = run_cli(capsys, "--data-dir", stack.data_dir, "expire-now", "--at", later)
    assert code == 2 and "--dry-run" in err  # a real pass runs now, never "at"


def test_blocklist_prints_a_table_and_key_values_and_json(stack, running_functions, capsys) -> None:
    sha256 = uuid.uuid4().hex * 2  # a hash no stored file has: nothing is quarantined
    code, out, err = run_cli(capsys, "--data-dir", stack.data_dir, "blocklist", "add", sha256, "--reason",
                             "ops cli test", "--operator", "erin")
    assert code == 0, err
    assert out.splitlines() == [f"sha256       {sha256}", "added        yes", "quarantined  []"]
    try:
        code, out, _ = run_cli(capsys, "--data-dir", stack.data_dir, "blocklist", "list")
        listed = {row["sha256"]: row for row in parse_table(out)}
        assert (listed[sha256]["added_by"], listed[sha256]["reason"]) == ("operator:erin", "ops cli test")
        code, out, _ = run_cli(capsys, "--data-dir", stack.data_dir, "blocklist", "list", "--json")
        assert sha256 in {entry["sha256"] for entry in json.loads(out)}
    finally:
        code, out, _ = run_cli(capsys, "--data-dir", stack.data_dir, "blocklist", "remove", sha256, "--json")
    assert code == 0 and json.loads(out) == {"sha256": sha256, "removed": True}
    code, out, _ = run_cli(capsys, "--data-dir", stack.data_dir, "blocklist", "list", "--json")
    assert sha256 not in {entry["sha256"] for entry in json.loads(out)}
