"""Verdict reuse for identical bytes (shared/scanning/reuse.py; docs/scan.md, "Verdict reuse") against real servers.

clamd, SeaweedFS and PostgreSQL are the real ones. That clamd did not read an upload is shown by
`CountingClamd`, the project's own client on real connections, which counts the INSTREAM
conversations it opens; a new signature database is a real one (sigtool, then clamd's RELOAD).
Each test stages its uploads under an owner of its own, so no other test's rows are sources.
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, replace

import psycopg
import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from dropgate_local.client import call
from dropgate_local.processes import free_port
from prometheus_client import REGISTRY

from shared.platform.clamd import ClamdReply, StreamingClamd
from shared.platform.settings import Settings, SettingsError
from shared.scanning import blocklist
from shared.scanning.content_policy import ContentPolicy
from shared.scanning.service import RESCAN_EXTENSION, ObjectScanner, ScanResult
from tests.conftest import EICAR, UNWATCHED_ENV, as_broker
from tests.test_rescan_and_admin import own_clamd, update_signatures  # noqa: F401 - fixture
from tests.test_scan_function import created_event, reply_event
from tests.test_scanning import (  # noqa: F401 - fixtures
    MIB,
    PNG_HEAD,
    pool,
    s3,
    upload_row,
    where_is,
)


class CountingClamd(StreamingClamd):
    """The real clamd through the project's client; counts the INSTREAM conversations (the only way it scans)."""

    def __init__(self, host: str, port: int, **kwargs) -> None:
        super().__init__(host, port, **kwargs)
        self.instreams = 0

    def scan_chunks(self, chunks: Iterable[bytes]) -> ClamdReply:
        self.instreams += 1
        return super().scan_chunks(chunks)


@dataclass
class Rig:
    scanner: ObjectScanner
    clamd: CountingClamd
    bucket: str

    def scan(self, key: str, **kwargs) -> ScanResult:
        return self.scanner.scan(self.bucket, key, event_id=f"e-{uuid.uuid4().hex}", **kwargs)


def make_rig(unwatched, pool, s3, address: tuple[str, int], *, reuse: str = "same-owner",  # noqa: F811
             policy: ContentPolicy | None = None) -> Rig:
    """The scan as the function builds it (default limits and policy), on this clamd, reusing per `reuse`."""
    defaults = Settings.from_env(["clamd", "content"], {})
    settings = replace(defaults.clamd, host=address[0], port=address[1], timeout_seconds=60, chunk_size=MIB,
                       reuse_verdicts=reuse)
    clamd = CountingClamd(address[0], address[1], timeout=60, limits=settings)
    scanner = ObjectScanner(storage=unwatched, clamd=settings, pool=pool, s3=s3, scanner=clamd,
                            policy=policy or ContentPolicy.from_settings(defaults.content))
    return Rig(scanner, clamd, unwatched.uploads_bucket)


@pytest.fixture
def rig(unwatched, pool, s3, clamd_address) -> Rig:  # noqa: F811
    return make_rig(unwatched, pool, s3, clamd_address)


@pytest.fixture
def owner() -> str:
    return f"reuse-{uuid.uuid4().hex[:10]}"


def stage(database_url: str, s3, unwatched, data: bytes, owner: str, *,  # noqa: F811
          content_type: str = "application/octet-stream", declared_sha256: str | None = "computed",
          declared_size: int | None = None) -> tuple[str, str]:
    """An upload row as presign leaves it after completion (declaring the file's SHA-256 by default), and its object."""
    upload_id = str(uuid.uuid4())
    key = f"uploads/reuse/{upload_id}"
    s3.upload_fileobj(io.BytesIO(data), unwatched.uploads_bucket, key)
    declared = hashlib.sha256(data).hexdigest() if declared_sha256 == "computed" else declared_sha256
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO uploads (id, owner, bucket, object_key, filename, content_type, declared_size, part_size,"
            " part_count, declared_sha256, status, expires_at)"
            " VALUES (%s, %s, %s, %s, 'f', %s, %s, %s, 1, %s, 'uploaded', now() + interval '1 day')",
            (upload_id, owner, unwatched.uploads_bucket, key, content_type,
             len(data) if declared_size is None else declared_size, 8 * MIB, declared))
    return upload_id, key


def audit_trail(database_url: str, upload_id: str) -> list[tuple[str, dict]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT action, detail FROM audit_log WHERE upload_id = %s ORDER BY id",
                            (upload_id,)).fetchall()


def reused_count(verdict: str) -> float:
    return REGISTRY.get_sample_value("dropgate_scan_verdicts_reused_total", {"verdict": verdict}) or 0


def assert_reused(database_url: str, upload_id: str, source_id: str, verdict: str) -> None:
    """The verdict's audit entry names the source, and the reuse has its own entry."""
    [(action, detail), (reused_action, reused)] = audit_trail(database_url, upload_id)
    assert (action, detail["verdict"], detail["reused_from"]) == ("scan.verdict", verdict, source_id)
    assert (reused_action, reused["reused_from"], reused["verdict"]) == ("scan.verdict_reused", source_id, verdict)


def assert_not_reused(database_url: str, upload_id: str) -> None:
    [(action, detail)] = audit_trail(database_url, upload_id)
    assert action == "scan.verdict" and "reused_from" not in detail


# -- the reuse itself --

def test_identical_bytes_reuse_the_verdict_without_clamd(rig, database_url, s3, unwatched, owner) -> None:  # noqa: F811
    data = b"%PDF-1.7\n" + os.urandom(2 * MIB)
    first_id, first_key = stage(database_url, s3, unwatched, data, owner, content_type="application/pdf")
    first = rig.scan(first_key)
    assert (first.verdict, first.reused_from, rig.clamd.instreams) == ("clean", None, 1)
    counted = reused_count("clean")

    second_id, second_key = stage(database_url, s3, unwatched, data, owner, content_type="application/pdf")
    second = rig.scan(second_key)
    assert rig.clamd.instreams == 1, "clamd read the second upload"
    assert (second.verdict, second.reused_from, second.bucket) == ("clean", first_id, unwatched.uploads_bucket)
    assert (second.sha256, second.size, second.detected_type, second.signature_version) == (
        first.sha256, len(data), "application/pdf", first.signature_version)
    row = upload_row(database_url, second_id)
    assert (row["status"], row["sha256"], row["signature_version"]) == ("clean", first.sha256, first.signature_version)
    assert {"Key": "dropgate-verdict", "Value": "clean"} in s3.get_object_tagging(
        Bucket=unwatched.uploads_bucket, Key=second_key)["TagSet"]
    assert_reused(database_url, second_id, first_id, "clean")
    assert reused_count("clean") == counted + 1
    # The earlier upload is untouched; a delivery of the same event again answers with the verdict written.
    assert_not_reused(database_url, first_id)
    assert rig.scan(second_key).already_decided and rig.clamd.instreams == 1


def test_a_reused_infected_verdict_is_quarantined(rig, database_url, s3, unwatched, owner) -> None:  # noqa: F811
    first_id, first_key = stage(database_url, s3, unwatched, EICAR, owner, content_type="text/plain")
    first = rig.scan(first_key)
    assert first.verdict == "infected" and "EICAR" in first.detail and rig.clamd.instreams == 1

    second_id, second_key = stage(database_url, s3, unwatched, EICAR, owner, content_type="text/plain")
    second = rig.scan(second_key)
    assert rig.clamd.instreams == 1
    assert (second.verdict, second.detail, second.reused_from) == ("infected", first.detail, first_id)
    assert second.bucket == unwatched.quarantine_bucket
    assert where_is(s3, unwatched, second_key) == {unwatched.quarantine_bucket}
    row = upload_row(database_url, second_id)
    assert (row["status"], row["scan_detail"]) == ("infected", first.detail)
    assert_reused(database_url, second_id, first_id, "infected")
    [_, (_, reused)] = audit_trail(database_url, second_id)
    assert (reused["source_verdict"], reused["clamd_finding"]) == ("infected", first.detail)


# -- no reuse unless the stored bytes are the source's --

def test_a_declared_hash_of_other_bytes_gets_a_full_scan(rig, database_url, s3, unwatched, owner) -> None:  # noqa: F811
    clean = os.urandom(64 * 1024)
    clean_id, clean_key = stage(database_url, s3, unwatched, clean, owner)
    assert rig.scan(clean_key).verdict == "clean" and rig.clamd.instreams == 1
    claimed = hashlib.sha256(clean).hexdigest()

    # Declares the clean file's hash, stores EICAR: read once (no match), then clamd finds it.
    liar_id, liar_key = stage(database_url, s3, unwatched, EICAR, owner, content_type="text/plain",
                              declared_sha256=claimed)
    liar = rig.scan(liar_key)
    assert (liar.verdict, liar.reused_from, rig.clamd.instreams) == ("infected", None, 2)
    assert "EICAR" in liar.detail and where_is(s3, unwatched, liar_key) == {unwatched.quarantine_bucket}
    assert_not_reused(database_url, liar_id)

    # Same size, other harmless bytes: the full scan, which calls the mismatch unscannable.
    other_id, other_key = stage(database_url, s3, unwatched, os.urandom(len(clean)), owner, declared_sha256=claimed)
    other = rig.scan(other_key)
    assert (other.verdict, other.reused_from, rig.clamd.instreams) == ("unscannable", None, 3)
    assert "SHA-256" in other.detail
    assert_not_reused(database_url, other_id)
    assert upload_row(database_url, clean_id)["status"] == "clean"


def test_never_across_signature_versions(own_clamd, unwatched, pool, s3, database_url, owner) -> None:  # noqa: F811
    """Clean under version N; version N+1 detects the bytes: the next upload is scanned, and infected."""
    rig = make_rig(unwatched, pool, s3, own_clamd.address)
    marker = b"dropgate-reuse-version-marker-" + uuid.uuid4().hex.encode()
    data = os.urandom(256 * 1024) + marker
    first_id, first_key = stage(database_url, s3, unwatched, data, owner)
    first = rig.scan(first_key)
    assert (first.verdict, rig.clamd.instreams) == ("clean", 1)

    update_signatures(own_clamd, first.signature_version + 1, {"Dropgate.Test.Reuse.Version": marker})
    second_id, second_key = stage(database_url, s3, unwatched, data, owner)
    second = rig.scan(second_key)
    assert (second.verdict, second.reused_from, rig.clamd.instreams) == ("infected", None, 2)
    assert second.detail.startswith("Dropgate.Test.Reuse.Version")
    assert second.signature_version == first.signature_version + 1
    assert_not_reused(database_url, second_id)

    # At the new version the new verdict is a source (the old clean one, at version N, is not).
    third_id, third_key = stage(database_url, s3, unwatched, data, owner)
    third = rig.scan(third_key)
    assert (third.verdict, third.reused_from, rig.clamd.instreams) == ("infected", second_id, 2)
    assert_reused(database_url, third_id, second_id, "infected")
    assert upload_row(database_url, first_id)["status"] == "clean"


def test_a_source_found_infected_by_a_rescan_passes_on_infected(own_clamd, unwatched, pool, s3,  # noqa: F811
                                                                database_url, owner) -> None:
    rig = make_rig(unwatched, pool, s3, own_clamd.address)
    marker = b"dropgate-reuse-rescan-marker-" + uuid.uuid4().hex.encode()
    data = os.urandom(128 * 1024) + marker
    first_id, first_key = stage(database_url, s3, unwatched, data, owner)
    assert rig.scan(first_key).verdict == "clean"
    version = own_clamd.client.signature_version() + 1
    update_signatures(own_clamd, version, {"Dropgate.Test.Reuse.Rescan": marker})
    rescanned = rig.scan(first_key, rescan_for_version=version)
    assert (rescanned.verdict, rescanned.rescan, rig.clamd.instreams) == ("infected", True, 2)

    second_id, second_key = stage(database_url, s3, unwatched, data, owner)
    second = rig.scan(second_key)
    assert (second.verdict, second.reused_from, rig.clamd.instreams) == ("infected", first_id, 2)
    assert second.detail.startswith("Dropgate.Test.Reuse.Rescan")
    assert where_is(s3, unwatched, second_key) == {unwatched.quarantine_bucket}
    assert_reused(database_url, second_id, first_id, "infected")


# -- what is decided again for every upload --

def _jar() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
        archive.writestr("data.bin", os.urandom(4096))
    return buffer.getvalue()


JAVA_ALLOWED = ContentPolicy(denied=frozenset({"executable", "script", "active-markup"}))


@pytest.mark.parametrize(("data", "first_type", "second_type", "reason", "first_policy"), [
    # The same PNG: fine as image/png, not as a PDF.
    (lambda: PNG_HEAD + os.urandom(4096), "image/png", "application/pdf", "image/png", None),
    # An HTML fragment sniffs as text: declared text/plain it is not searched for script; declared text/html it is.
    (lambda: b'<div onmouseover="steal()">' + uuid.uuid4().hex.encode() + b"</div>\n", "text/plain", "text/html",
     "onmouseover=", None),
    # A jar accepted where Java is allowed; under the default policy (Java denied) the same bytes are refused.
    (_jar, "application/zip", "application/zip", "Java code", JAVA_ALLOWED),
], ids=["declared-type", "active-markup", "settings"])
def test_the_content_policy_is_decided_again_for_each_upload(data, first_type, second_type, reason, first_policy,
                                                             rig, unwatched, pool, s3, clamd_address,  # noqa: F811
                                                             database_url, owner) -> None:
    data = data()
    first_rig = make_rig(unwatched, pool, s3, clamd_address, policy=first_policy) if first_policy else rig
    first_id, first_key = stage(database_url, s3, unwatched, data, owner, content_type=first_type)
    assert first_rig.scan(first_key).verdict == "clean" and first_rig.clamd.instreams == 1

    second_id, second_key = stage(database_url, s3, unwatched, data, owner, content_type=second_type)
    second = rig.scan(second_key)
    assert (second.verdict, second.reused_from) == ("rejected", first_id)
    assert reason in second.detail
    assert rig.clamd.instreams == (0 if first_policy else 1), "clamd read the second upload"
    assert where_is(s3, unwatched, second_key) == {unwatched.quarantine_bucket}
    assert_reused(database_url, second_id, first_id, "rejected")
    assert upload_row(database_url, first_id)["status"] == "clean"


# -- sources that never are --

def test_an_unscannable_earlier_verdict_is_never_reused(rig, database_url, s3, unwatched, owner) -> None:  # noqa: F811
    data = os.urandom(64 * 1024)
    first_id, first_key = stage(database_url, s3, unwatched, data, owner, declared_size=len(data) + 1)
    assert rig.scan(first_key).verdict == "unscannable"
    assert upload_row(database_url, first_id)["sha256"] == hashlib.sha256(data).hexdigest()

    second_id, second_key = stage(database_url, s3, unwatched, data, owner)
    second = rig.scan(second_key)
    assert (second.verdict, second.reused_from, rig.clamd.instreams) == ("clean", None, 2)
    assert_not_reused(database_url, second_id)


def test_a_blocklist_infection_is_never_reused(rig, database_url, s3, unwatched, owner) -> None:  # noqa: F811
    data = os.urandom(64 * 1024)
    digest = hashlib.sha256(data).hexdigest()
    with psycopg.connect(database_url, autocommit=True) as conn:
        blocklist.add(conn, digest, "reuse test", "tester")
    _, first_key = stage(database_url, s3, unwatched, data, owner)
    first = rig.scan(first_key)
    assert (first.verdict, rig.clamd.instreams) == ("infected", 0) and first.detail.startswith("blocklist:")
    with psycopg.connect(database_url, autocommit=True) as conn:
        blocklist.remove(conn, digest)

    second_id, second_key = stage(database_url, s3, unwatched, data, owner)
    second = rig.scan(second_key)
    assert (second.verdict, second.reused_from, rig.clamd.instreams) == ("clean", None, 1)
    assert_not_reused(database_url, second_id)


def test_without_a_declared_hash_clamd_reads_the_bytes(rig, database_url, s3, unwatched, owner) -> None:  # noqa: F811
    data = os.urandom(64 * 1024)
    _, first_key = stage(database_url, s3, unwatched, data, owner)
    assert rig.scan(first_key).verdict == "clean"
    second_id, second_key = stage(database_url, s3, unwatched, data, owner, declared_sha256=None)
    assert (rig.scan(second_key).reused_from, rig.clamd.instreams) == (None, 2)
    assert_not_reused(database_url, second_id)


# -- the setting --

def test_reuse_switched_off_reads_every_upload_through_clamd(unwatched, pool, s3, clamd_address,  # noqa: F811
                                                             database_url, owner) -> None:
    rig = make_rig(unwatched, pool, s3, clamd_address, reuse="off")
    data = os.urandom(64 * 1024)
    for expected_reads in (1, 2):
        upload_id, key = stage(database_url, s3, unwatched, data, owner)
        assert (rig.scan(key).verdict, rig.clamd.instreams) == ("clean", expected_reads)
        assert_not_reused(database_url, upload_id)


def test_another_owner_s_verdict_is_reused_only_with_any_owner(rig, unwatched, pool, s3, clamd_address,  # noqa: F811
                                                               database_url, owner) -> None:
    data = os.urandom(64 * 1024)
    _, first_key = stage(database_url, s3, unwatched, data, owner)
    assert rig.scan(first_key).verdict == "clean"
    _, stranger_key = stage(database_url, s3, unwatched, data, f"{owner}-other")
    assert (rig.scan(stranger_key).reused_from, rig.clamd.instreams) == (None, 2)

    shared_rig = make_rig(unwatched, pool, s3, clamd_address, reuse="any-owner")
    third_id, third_key = stage(database_url, s3, unwatched, data, f"{owner}-third")
    third = shared_rig.scan(third_key)
    assert third.verdict == "clean" and third.reused_from is not None and shared_rig.clamd.instreams == 0
    assert_reused(database_url, third_id, third.reused_from, "clean")


def test_the_setting_is_parsed_once_with_the_others() -> None:
    assert Settings.from_env(["clamd"], {}).clamd.reuse_verdicts == "same-owner"
    for value in ("off", "any-owner", "same-owner", "OFF"):
        parsed = Settings.from_env(["clamd"], {"DROPGATE_SCAN_REUSE_VERDICTS": value}).clamd.reuse_verdicts
        assert parsed == value.lower()
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(["clamd"], {"DROPGATE_SCAN_REUSE_VERDICTS": "yes"})
    assert raised.value.problems == ["DROPGATE_SCAN_REUSE_VERDICTS='yes': expected same-owner, any-owner, off"]


# -- through the scan function --

@pytest.fixture(scope="module")
def scan_url(stack, database_url, unwatched, clamd_address) -> str:
    port = free_port()
    stack.start_function("scan", port=port, label="scan-reuse-tests", extra_env=UNWATCHED_ENV)
    return f"http://127.0.0.1:{port}"


def deliver(url: str, event):
    headers, body = to_binary(event)
    return call("POST", url, data=body, headers={**headers, **as_broker("scan")}, timeout=600)


def scraped(url: str, verdict: str) -> float:
    from tests.test_observability import scrape

    return scrape(url).get(("dropgate_scan_verdicts_reused_total", (("verdict", verdict),)), 0)


def test_the_function_replies_with_a_reused_verdict_as_with_any(scan_url, database_url, s3, unwatched,  # noqa: F811
                                                                 owner) -> None:
    data = b"%PDF-1.7\n" + os.urandom(256 * 1024)
    replies = []
    for _ in range(2):
        upload_id, key = stage(database_url, s3, unwatched, data, owner, content_type="application/pdf")
        before = scraped(scan_url, "clean")
        reply = deliver(scan_url, created_event(unwatched, key, len(data)).to_cloudevent())
        assert reply.status == 200, reply.body
        replies.append((upload_id, key, reply_event(reply), scraped(scan_url, "clean") - before))
    (first_id, _, first, first_counted), (second_id, second_key, second, second_counted) = replies
    assert (first_counted, second_counted) == (0, 1)
    assert (second.type, second.id, str(second.upload_id)) == ("dev.dropgate.scan.clean", f"{second_id}.scan", second_id)
    assert (second.sha256, second.size, second.detected_type, second.signature_version, second.bucket) == (
        first.sha256, first.size, first.detected_type, first.signature_version, first.bucket)
    assert_reused(database_url, second_id, first_id, "clean")

    # An operator's rescan (dropgate-dev rescan resets the row and sends the event with its id) reads through clamd.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE uploads SET status = 'uploaded', scan_verdict = NULL, scan_detail = NULL,"
                     " scanned_at = NULL WHERE id = %s", (second_id,))
    event = created_event(unwatched, second_key, len(data)).to_cloudevent()
    rescanned = deliver(scan_url, CloudEvent({**event.get_attributes(), RESCAN_EXTENSION: "op-reuse"},
                                             event.get_data()))
    assert rescanned.status == 200 and reply_event(rescanned).verdict == "clean"
    trail = audit_trail(database_url, second_id)
    assert [action for action, _ in trail] == ["scan.verdict", "scan.verdict_reused", "scan.verdict"]
    assert "reused_from" not in trail[-1][1]
