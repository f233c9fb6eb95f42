"""Rescans when clamd's signatures advance, the SHA-256 blocklist, and admin releases (docs/scan.md).

Rescans run against a clamd of their own whose database this module rebuilds (a new version with
a signature added, then RELOAD), as freshclam does in production; the admin API runs on the real
local stack.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from types import SimpleNamespace

import psycopg
import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import from_http

from dropgate_local import clamav
from dropgate_local.client import DropgateClient, call
from dropgate_local.devauth import DevSigningKey, issuer_url
from dropgate_local.processes import free_port
from events.types import ScanVerdict
from shared.platform.clamd import StreamingClamd
from shared.scanning.rescan import request_rescans
from tests import evasions
from tests.conftest import EICAR, UNWATCHED_ENV, as_broker
from tests.test_ops_cli import audit_actions, run_cli, wait_until
from tests.test_pipeline import router_events
from tests.test_scanning import (  # noqa: F401 - fixtures
    MIB,
    object_scanner,
    pool,
    s3,
    stage,
    upload_row,
    where_is,
)

FINAL = {"clean", "infected", "rejected", "unscannable"}


# -- rescans after a signature update --

@pytest.fixture(scope="module")
def own_clamd(stack, tmp_path_factory):  # noqa: ANN201
    run_dir = tmp_path_factory.mktemp("clamd-rescan")
    db = run_dir / "db"
    clamav.write_offline_database(db, version=1)
    port = free_port()
    conf = clamav.write_clamd_conf(run_dir / "clamd.conf", db_dir=db, host="127.0.0.1", port=port,
                                   pid_file=run_dir / "clamd.pid", temp_dir=run_dir)
    child = stack._start(f"clamd-rescan-{port}", clamav.clamd_command(conf))  # noqa: SLF001 - test-only clamd
    client = StreamingClamd("127.0.0.1", port, timeout=60)
    child.wait_until(lambda: _answers(client), timeout=120)
    yield SimpleNamespace(port=port, db=db, client=client, address=("127.0.0.1", port))
    child.stop()


def _answers(client: StreamingClamd) -> bool:
    try:
        return client.ping() == "PONG"
    except Exception:  # noqa: BLE001 - not up yet
        return False


def update_signatures(own, version: int, signatures: dict[str, bytes]) -> None:  # noqa: ANN001
    """What freshclam and clamd's reload do in production: a newer database, then RELOAD."""
    clamav.write_offline_database(own.db, version=version, extra_body_signatures=signatures)
    assert own.client.reload() == "RELOADING"
    wait_until(lambda: own.client.signature_version() == version, timeout=120, what=f"clamd at version {version}")


def scan_clean(unwatched, pool, s3, database_url, own, data: bytes) -> tuple[str, str]:  # noqa: ANN001, F811
    upload_id, key = stage(database_url, s3, unwatched, data)
    result = object_scanner(unwatched, pool, s3, own.address).scan(unwatched.uploads_bucket, key, f"e-{upload_id}")
    assert result.verdict == "clean", result
    return upload_id, key


def audit_rows(database_url: str, upload_id: str, action: str) -> list[dict]:
    with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute("SELECT actor, detail FROM audit_log WHERE upload_id = %s AND action = %s ORDER BY id",
                            (upload_id, action)).fetchall()


@pytest.fixture(scope="module")
def rescan_scan_url(stack, database_url, unwatched, own_clamd) -> str:
    """The scan function itself, on the module's clamd: rescan requests arrive as CloudEvents."""
    port = free_port()
    stack.start_function("scan", port=port, label="scan-rescan-tests",
                         extra_env={**UNWATCHED_ENV, "DROPGATE_CLAMD_ADDRESS": f"127.0.0.1:{own_clamd.port}"})
    return f"http://127.0.0.1:{port}"


def deliver(url: str, event):  # noqa: ANN001, ANN201
    headers, body = to_binary(event)
    return call("POST", url, data=body, headers={**headers, **as_broker("scan")}, timeout=600)


def test_a_file_clean_under_version_n_is_infected_after_an_update(unwatched, pool, s3, database_url,  # noqa: F811
                                                                  own_clamd, rescan_scan_url) -> None:
    marker = b"dropgate-rescan-marker-" + uuid.uuid4().hex.encode()
    target_id, target_key = scan_clean(unwatched, pool, s3, database_url, own_clamd,
                                       os.urandom(MIB) + marker + os.urandom(1024))
    other_id, _ = scan_clean(unwatched, pool, s3, database_url, own_clamd, os.urandom(MIB))
    old_id, _ = scan_clean(unwatched, pool, s3, database_url, own_clamd, os.urandom(1024) + marker)
    before = own_clamd.client.signature_version()
    assert upload_row(database_url, target_id)["signature_version"] == before
    with psycopg.connect(database_url, autocommit=True) as conn:  # outside DROPGATE_RESCAN_DAYS (7)
        conn.execute("UPDATE uploads SET scanned_at = now() - interval '10 days' WHERE id = %s", (old_id,))

    update_signatures(own_clamd, before + 1, {"Dropgate.Test.Rescan": marker})
    sent = []
    summary = request_rescans(pool, own_clamd.client, sent.extend, days=7, max_per_run=10_000)

    mine = [e for e in sent if str(e["id"]).split(".")[0] in (target_id, other_id, old_id)]
    assert sorted(e["id"] for e in mine) == sorted(f"{i}.rescan-request.v{before + 1}" for i in (target_id, other_id))
    assert summary.signature_version == before + 1 and summary.requested >= 2

    replies = {str(e["id"]).split(".")[0]: deliver(rescan_scan_url, e) for e in mine}
    assert replies[other_id].status == 204 and replies[other_id].body == b""  # still clean: nothing to say
    verdict = ScanVerdict.from_cloudevent(from_http(replies[target_id].headers, replies[target_id].body))
    assert (verdict.verdict, verdict.rescan, verdict.signature_version) == ("infected", True, before + 1)
    assert verdict.signature.startswith("Dropgate.Test.Rescan") and verdict.bucket == unwatched.quarantine_bucket

    target = upload_row(database_url, target_id)
    assert (target["status"], target["signature_version"]) == ("infected", before + 1)
    assert where_is(s3, unwatched, target_key) == {unwatched.quarantine_bucket}
    [caught] = audit_rows(database_url, target_id, "scan.rescan")
    assert caught["detail"]["outcome"] == "infected" and caught["detail"]["signature_version"] == before + 1
    assert caught["detail"]["previous_signature_version"] == before
    assert upload_row(database_url, other_id)["signature_version"] == before + 1
    assert upload_row(database_url, old_id)["status"] == "clean"  # older than the rescan window

    # The same request again (a broker redelivery, a resumed pass): no read, no event, no audit.
    again = deliver(rescan_scan_url, next(e for e in mine if str(e["id"]).startswith(target_id)))
    assert again.status == 204 and again.body == b""
    assert len(audit_rows(database_url, target_id, "scan.rescan")) == 1
    # Asked once per version: the next pass finds nothing left to ask.
    later = []
    request_rescans(pool, own_clamd.client, later.extend, days=7, max_per_run=10_000)
    assert not [e for e in later if str(e["id"]).split(".")[0] in (target_id, other_id)]


def test_a_rescan_pass_interrupted_mid_batch_resumes_without_double_events(unwatched, pool, s3,  # noqa: F811
                                                                            database_url, own_clamd,
                                                                            rescan_scan_url) -> None:
    marker = b"dropgate-rescan-batch-" + uuid.uuid4().hex.encode()
    ids = [scan_clean(unwatched, pool, s3, database_url, own_clamd, os.urandom(64 * 1024) + marker)[0]
           for _ in range(4)]
    version = own_clamd.client.signature_version() + 1
    update_signatures(own_clamd, version, {"Dropgate.Test.Rescan.Batch": marker})

    delivered = []

    def dies_after_two(events) -> None:  # noqa: ANN001 - the pass's worker killed after sending two requests
        for event in events[:2]:
            delivered.append(event)
        raise ConnectionError("worker killed mid-batch")

    with pytest.raises(ConnectionError):
        request_rescans(pool, own_clamd.client, dies_after_two, days=7, max_per_run=10_000)
    for upload_id in ids:  # the batch's transaction rolled back: nothing marked as asked
        assert upload_row(database_url, upload_id)["rescan_requested_version"] is None
    resumed = []
    request_rescans(pool, own_clamd.client, resumed.extend, days=7, max_per_run=10_000)
    mine = [e for e in delivered + resumed if str(e["id"]).split(".")[0] in ids]
    assert len(mine) > len(ids)  # some requests were sent twice, with the same ids

    verdict_ids = []
    for event in mine:
        reply = deliver(rescan_scan_url, event)
        assert reply.status in (200, 204), reply.body  # 204: nothing (new) to say
        if reply.status == 200:
            verdict_ids.append(ScanVerdict.from_cloudevent(from_http(reply.headers, reply.body)).id)
    assert sorted(verdict_ids) == sorted(f"{i}.rescan.v{version}" for i in ids)  # one event per file
    for upload_id in ids:
        assert upload_row(database_url, upload_id)["status"] == "infected"
        assert len(audit_rows(database_url, upload_id, "scan.rescan")) == 1


# -- admin: blocklist and release, through presign's admin API and the operator CLI --

@pytest.fixture(scope="module")
def tokens(stack, running_functions):  # noqa: ANN201
    key = DevSigningKey.load_or_create(stack.data_dir / "dev-oidc")
    issuer = issuer_url("127.0.0.1", stack.ports.dev_oidc)
    return SimpleNamespace(
        owner=key.mint(subject=f"owner-{uuid.uuid4().hex[:8]}", roles=["uploader"], issuer=issuer),
        admin=key.mint(subject="admin-carol", roles=["admin"], issuer=issuer))


def uploaded(running_functions, token: str, data: bytes, content_type: str, filename: str) -> dict:
    client = DropgateClient(running_functions["presign"], token)
    return client.wait_for(client.upload(data, content_type, filename).record["id"], FINAL)


def test_blocklisting_a_hash_quarantines_stored_files_and_refuses_new_ones(running_functions, tokens, stack,
                                                                           database_url) -> None:
    presign = running_functions["presign"]
    data = os.urandom(2 * MIB)
    digest = hashlib.sha256(data).hexdigest()
    first = uploaded(running_functions, tokens.owner, data, "application/octet-stream", "first.bin")
    assert first["status"] == "clean"
    url = f"{presign}/admin/blocklist"

    assert call("POST", url, token=tokens.owner, json_body={"sha256": digest, "reason": "x"}).status == 403
    for body, words in (({"sha256": "zz" * 32, "reason": "x"}, "sha256"), ({"sha256": digest[:63], "reason": "x"},
                        "sha256"), ({"sha256": digest}, "reason"), ({"sha256": digest, "reason": "a\x00b"}, "reason")):
        bad = call("POST", url, token=tokens.admin, json_body=body)
        assert bad.status == 400 and words in bad.json()["detail"], (body, bad.body)
    assert call("DELETE", f"{url}/not-a-hash", token=tokens.admin).status == 400

    added = call("POST", url, token=tokens.admin, json_body={"sha256": digest.upper(), "reason": "known ransomware"})
    assert added.status == 201 and added.json() == {"sha256": digest, "added": True, "quarantined": [first["id"]]}
    row = upload_row(database_url, first["id"])
    assert row["status"] == "infected" and row["scan_detail"].startswith("blocklist:")
    assert call("GET", f"{presign}/files/{first['id']}/download", token=tokens.owner).status == 403
    assert "admin.blocklist_added" in [r[0] for r in _audit_all(database_url, digest)]
    wait_until(lambda: any(e["id"] == f"{first['id']}.blocklist.{digest[:16]}" and e["type"] ==
                           "dev.dropgate.scan.infected" for e in router_events(stack)), what="the infected event")

    second = uploaded(running_functions, tokens.owner, data, "application/octet-stream", "second.bin")
    assert second["status"] == "infected" and second["scan_detail"] == "blocklist: known ransomware"
    [verdict] = [a for a in audit_actions(database_url, second["id"]) if a == "scan.verdict"]
    assert verdict

    listed = call("GET", url, token=tokens.admin).json()["blocklist"]
    assert {"sha256": digest, "reason": "known ransomware", "added_by": "admin-carol"}.items() <= \
        next(e for e in listed if e["sha256"] == digest).items()
    assert call("POST", url, token=tokens.admin, json_body={"sha256": digest, "reason": "again"}).status == 200
    assert call("DELETE", f"{url}/{digest}", token=tokens.admin).status == 200
    assert call("DELETE", f"{url}/{digest}", token=tokens.admin).status == 404


def _audit_all(database_url: str, digest: str) -> list[tuple]:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT action, actor, detail FROM audit_log WHERE detail->>'sha256' = %s ORDER BY id",
                            (digest,)).fetchall()


def test_an_admin_releases_an_unscannable_file_with_who_and_why(running_functions, tokens, database_url) -> None:
    presign = running_functions["presign"]
    data = evasions.nested_zip(18, innermost=b"a harmless note\n")
    held = uploaded(running_functions, tokens.owner, data, "application/zip", "deep.zip")
    assert held["status"] == "unscannable" and "nested deeper" in held["scan_detail"]
    release = f"{presign}/admin/files/{held['id']}/release"

    assert call("POST", release, token=tokens.owner, json_body={"reason": "mine"}).status == 403
    missing = call("POST", release, token=tokens.admin, json_body={})
    assert missing.status == 400 and "reason" in missing.json()["detail"]
    assert call("POST", f"{presign}/admin/files/{uuid.uuid4()}/release", token=tokens.admin,
                json_body={"reason": "x"}).status == 404
    assert call("POST", f"{presign}/admin/files/not%00a-uuid/release", token=tokens.admin,
                json_body={"reason": "x"}).status == 400

    done = call("POST", release, token=tokens.admin, json_body={"reason": "ticket 4711: checked by hand"})
    assert done.status == 200 and done.json()["status"] == "released", done.body
    link = call("GET", f"{presign}/files/{held['id']}/download", token=tokens.owner)
    assert link.status == 200
    assert call("GET", link.json()["url"]).body == data
    [entry] = [r for r in _audit_upload(database_url, held["id"]) if r[0] == "admin.release"]
    assert entry[1] == "admin-carol" and entry[2]["reason"] == "ticket 4711: checked by hand"
    assert entry[2]["status_before"] == "unscannable"
    assert call("POST", release, token=tokens.admin, json_body={"reason": "twice"}).status == 409


def test_an_infected_file_is_never_released(running_functions, tokens) -> None:
    presign = running_functions["presign"]
    infected = uploaded(running_functions, tokens.owner, EICAR, "text/plain", "eicar.txt")
    assert infected["status"] == "infected"
    refused = call("POST", f"{presign}/admin/files/{infected['id']}/release", token=tokens.admin,
                   json_body={"reason": "please"})
    assert refused.status == 409 and "never released" in refused.json()["detail"]


def test_the_operator_cli_releases_and_blocklists(running_functions, tokens, stack, database_url, capsys) -> None:
    rejected = uploaded(running_functions, tokens.owner, evasions.HTML_PAGE, "image/bmp", "cat.bmp")
    assert rejected["status"] == "rejected"
    with pytest.raises(SystemExit) as no_reason:
        run_cli(capsys, "--data-dir", stack.data_dir, "release", rejected["id"])
    assert no_reason.value.code == 2 and "--reason" in capsys.readouterr().err
    code, out, _ = run_cli(capsys, "--data-dir", stack.data_dir, "release", rejected["id"], "--reason",
                           "a test page", "--operator", "dave")
    assert code == 0 and "released" in out
    assert upload_row(database_url, rejected["id"])["status"] == "released"
    assert ("admin.release", "operator:dave") in [(r[0], r[1]) for r in _audit_upload(database_url, rejected["id"])]

    code, _, err = run_cli(capsys, "--data-dir", stack.data_dir, "blocklist", "add", "nothex", "--reason", "x")
    assert code == 2 and "sha256" in err
    digest = hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    code, out, _ = run_cli(capsys, "--data-dir", stack.data_dir, "blocklist", "add", digest, "--reason", "cli")
    assert code == 0 and "added" in out
    code, out, _ = run_cli(capsys, "--data-dir", stack.data_dir, "blocklist", "list", "--json")
    assert code == 0 and digest in out
    code, out, _ = run_cli(capsys, "--data-dir", stack.data_dir, "blocklist", "remove", digest)
    assert code == 0


def _audit_upload(database_url: str, upload_id: str) -> list[tuple]:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT action, actor, detail FROM audit_log WHERE upload_id = %s ORDER BY id",
                            (upload_id,)).fetchall()
