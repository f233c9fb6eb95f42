"""A file is downloadable only when it was fully scanned and found clean (docs/scan.md; SECURITY.md).

Against the real clamd, configured as production configures it (ClamdSettings.clamd_conf), and
the real SeaweedFS: the archives that make clamd stop looking, type lies, versioned quarantine.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import uuid
from pathlib import Path

import psycopg
import pytest

from dropgate_local import clamav
from dropgate_local.client import call
from dropgate_local.platform_limits import clamav_conf
from shared.platform.clamd import StreamingClamd
from shared.platform.storage import create_s3_client, set_up_buckets
from tests import evasions
from tests.conftest import EICAR
from tests.test_pipeline import upload, wait_for_status
from tests.test_scanning import (  # noqa: F401 - fixtures
    MIB,
    object_scanner,
    pool,
    s3,
    stage,
    upload_row,
    where_is,
)

ROOT = Path(__file__).resolve().parents[1]
LIMITS = clamav.default_limits()


# -- one configuration, in every place clamd is configured --

def test_production_clamd_conf_holds_every_limit_and_alert() -> None:
    wanted = LIMITS.clamd_conf()
    shipped = clamav_conf((ROOT / "manifests/base/clamd/clamd.conf").read_text())
    assert {name: shipped.get(name) for name in wanted} == wanted
    assert wanted["AlertExceedsMax"] == wanted["AlertEncrypted"] == "yes"


def test_local_clamd_conf_is_written_from_the_same_settings(tmp_path) -> None:
    conf = clamav.write_clamd_conf(tmp_path / "clamd.conf", db_dir=tmp_path, host="127.0.0.1", port=1,
                                   pid_file=tmp_path / "pid", temp_dir=tmp_path)
    written = clamav_conf(conf.read_text())
    assert {name: written.get(name) for name in LIMITS.clamd_conf()} == LIMITS.clamd_conf()


# -- the evasions, scan by scan --

EVASIONS = {
    "zip nested 18 levels": (lambda: evasions.nested_zip(18), "application/zip", "nested deeper than 17 levels"),
    "zip of 10,001 entries, EICAR last": (lambda: evasions.many_entries_zip(10_001), "application/zip",
                                          "more than 10000 files"),
    "password-protected zip": (evasions.encrypted_zip, "application/zip", "encrypted"),
    "one 1.2 GB entry of zeros, then EICAR": (evasions.big_entry_zip, "application/zip", "zeros-then-eicar.bin"),
    "gzip of 1.2 GB of zeros, then EICAR": (evasions.big_gzip, "application/gzip", "larger than"),
}


@pytest.mark.parametrize("case", list(EVASIONS))
def test_an_archive_clamd_stops_looking_into_is_unscannable(case, unwatched, pool, s3, database_url,  # noqa: F811
                                                           clamd_address) -> None:
    build, content_type, reason = EVASIONS[case]
    data = build()
    assert len(data) < 4 * MIB  # small uploads: the evasion is in what they unpack to
    upload_id, key = stage(database_url, s3, unwatched, data, content_type=content_type)
    result = object_scanner(unwatched, pool, s3, clamd_address).scan(unwatched.uploads_bucket, key, f"e-{upload_id}")
    assert (result.verdict, result.bucket) == ("unscannable", unwatched.quarantine_bucket), result
    assert reason in result.detail, result.detail
    row = upload_row(database_url, upload_id)
    assert (row["status"], row["scan_detail"]) == ("unscannable", result.detail)
    assert where_is(s3, unwatched, key) == {unwatched.quarantine_bucket}


def test_clamd_alone_calls_the_big_entry_clean(clamd_address) -> None:
    """Why dropgate reads the archive directory itself: clamd cuts the entry short at MaxFileSize and says OK,
    even with AlertExceedsMax (measured with the project's own configuration)."""
    reply = StreamingClamd(*clamd_address, timeout=120, limits=LIMITS).scan_chunks([evasions.big_entry_zip()])
    assert reply.outcome == "clean"


def test_a_zip_nested_within_the_limit_is_still_searched(unwatched, pool, s3, database_url,  # noqa: F811
                                                         clamd_address) -> None:
    upload_id, key = stage(database_url, s3, unwatched, evasions.nested_zip(3), content_type="application/zip")
    result = object_scanner(unwatched, pool, s3, clamd_address).scan(unwatched.uploads_bucket, key, f"e-{upload_id}")
    assert result.verdict == "infected" and "EICAR" in result.detail


@pytest.mark.parametrize("variant", list(evasions.MACH_O_HEADS))
def test_every_mach_o_magic_is_rejected(variant, unwatched, pool, s3, database_url, clamd_address) -> None:  # noqa: F811
    data = evasions.MACH_O_HEADS[variant] + os.urandom(4096)
    upload_id, key = stage(database_url, s3, unwatched, data, content_type="application/octet-stream")
    result = object_scanner(unwatched, pool, s3, clamd_address).scan(unwatched.uploads_bucket, key, f"e-{upload_id}")
    assert result.verdict == "rejected" and "executable" in result.detail, result.detail
    assert where_is(s3, unwatched, key) == {unwatched.quarantine_bucket}


@pytest.mark.parametrize(("page", "words"), [
    (b"<!DOCTYPE html><html><body><p>not a picture</p></body></html>\n", ("image/bmp", "text/html")),  # the family
    (evasions.HTML_PAGE, ("text/html", "<script")),  # and, with script, active content on top
])
def test_html_declared_as_an_image_is_rejected(unwatched, pool, s3, database_url, clamd_address,  # noqa: F811
                                               page, words) -> None:
    upload_id, key = stage(database_url, s3, unwatched, page, content_type="image/bmp")
    result = object_scanner(unwatched, pool, s3, clamd_address).scan(unwatched.uploads_bucket, key, f"e-{upload_id}")
    assert result.verdict == "rejected" and all(word in result.detail for word in words), result.detail


def test_script_after_the_sniffed_window_is_found(unwatched, pool, s3, database_url, clamd_address) -> None:  # noqa: F811
    page = b"<!DOCTYPE html><html><body>" + b"<p>harmless</p>\n" * 2000 + b"<script>alert(1)</script></body></html>"
    assert page.index(b"<script") > 8192
    upload_id, key = stage(database_url, s3, unwatched, page, content_type="text/html")
    result = object_scanner(unwatched, pool, s3, clamd_address).scan(unwatched.uploads_bucket, key, f"e-{upload_id}")
    assert result.verdict == "rejected" and "script" in result.detail, result.detail


def test_plain_html_without_script_is_clean_and_recorded_as_html(unwatched, pool, s3, database_url,  # noqa: F811
                                                                 clamd_address) -> None:
    page = b"<!DOCTYPE html><html><body><p>just text</p></body></html>\n"
    upload_id, key = stage(database_url, s3, unwatched, page, content_type="text/html")
    result = object_scanner(unwatched, pool, s3, clamd_address).scan(unwatched.uploads_bucket, key, f"e-{upload_id}")
    assert result.verdict == "clean", result.detail
    assert upload_row(database_url, upload_id)["detected_type"] == "text/html"


def test_clamd_unreachable_never_yields_a_verdict(unwatched, pool, s3, database_url) -> None:  # noqa: F811
    from dropgate_local.processes import free_port
    from shared.platform.clamd import ScannerUnavailable

    upload_id, key = stage(database_url, s3, unwatched, os.urandom(MIB))
    with pytest.raises(ScannerUnavailable):
        object_scanner(unwatched, pool, s3, ("127.0.0.1", free_port())).scan(unwatched.uploads_bucket, key, "e")
    row = upload_row(database_url, upload_id)
    assert row["scan_verdict"] is None and row["status"] == "scanning"  # the broker's retry (or reconcile) goes on


# -- quarantine on a versioned bucket --

@pytest.fixture(scope="module")
def versioned(storage, s3):  # noqa: ANN201, F811 - StorageSettings with Object Lock (hence versioned) buckets
    from dataclasses import replace

    tag = uuid.uuid4().hex[:8]
    settings = replace(storage, uploads_bucket=f"vq-{tag}-uploads", quarantine_bucket=f"vq-{tag}-quarantine")
    for bucket in (settings.uploads_bucket, settings.quarantine_bucket):  # as the MinIO set-up Job makes them
        s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    set_up_buckets(settings, s3)
    return settings


@pytest.mark.parametrize("legal_hold", [False, True])
def test_quarantine_leaves_no_version_of_an_infected_key_behind(versioned, pool, database_url,  # noqa: F811
                                                                clamd_address, legal_hold) -> None:
    client = create_s3_client(versioned)
    key = f"uploads/test/{uuid.uuid4()}"
    first = client.put_object(Bucket=versioned.uploads_bucket, Key=key, Body=b"an earlier version\n")["VersionId"]
    scanned = client.put_object(Bucket=versioned.uploads_bucket, Key=key, Body=EICAR)["VersionId"]
    assert first != scanned
    upload_id = str(uuid.uuid4())
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO uploads (id, owner, bucket, object_key, filename, content_type, declared_size, part_size,"
            " part_count, status, legal_hold, expires_at) VALUES (%s, 'tester', %s, %s, 'f', 'text/plain', %s, %s, 1,"
            " 'uploaded', %s, now() + interval '1 day')",
            (upload_id, versioned.uploads_bucket, key, len(EICAR), 8 * MIB, legal_hold))

    result = object_scanner(versioned, pool, client, clamd_address).scan(versioned.uploads_bucket, key, "v-1")

    assert result.verdict == "infected"
    listing = client.list_object_versions(Bucket=versioned.uploads_bucket, Prefix=key)
    left = [v for v in listing.get("Versions", []) + listing.get("DeleteMarkers", []) if v["Key"] == key]
    assert left == []
    for version in (first, scanned):
        with pytest.raises(client.exceptions.ClientError):
            client.get_object(Bucket=versioned.uploads_bucket, Key=key, VersionId=version)
    evidence = client.get_object(Bucket=versioned.quarantine_bucket, Key=key)
    assert evidence["Body"].read() == EICAR  # the version that was scanned, not the earlier one
    hold = client.get_object_legal_hold(Bucket=versioned.quarantine_bucket, Key=key)["LegalHold"]["Status"] \
        if legal_hold else None
    assert hold == ("ON" if legal_hold else None)


# -- the whole pipeline: storage notification -> broker -> scan -> presign's download --

PIPELINE_CASES = {
    "zip nested 18 levels": ("nested.zip", "application/zip", lambda: evasions.nested_zip(18), "unscannable"),
    "zip of 10,001 entries": ("many.zip", "application/zip", lambda: evasions.many_entries_zip(10_001),
                              "unscannable"),
    "password-protected zip": ("locked.zip", "application/zip", evasions.encrypted_zip, "unscannable"),
    "1.2 GB entry, then EICAR": ("zeros.zip", "application/zip", evasions.big_entry_zip, "unscannable"),
    "HTML declared as image/bmp": ("cat.bmp", "image/bmp", lambda: evasions.HTML_PAGE, "rejected"),
    "Mach-O universal": ("tool", "application/octet-stream",
                         lambda: evasions.MACH_O_HEADS["mach-o universal"] + os.urandom(4096), "rejected"),
    "Mach-O 32-bit little-endian": ("tool", "application/octet-stream",
                                    lambda: evasions.MACH_O_HEADS["mach-o 32-bit little-endian"] + os.urandom(4096),
                                    "rejected"),
}


@pytest.fixture(scope="module")
def uploader(stack, running_functions):  # noqa: ANN201
    from dropgate_local.devauth import DevSigningKey, issuer_url

    key = DevSigningKey.load_or_create(stack.data_dir / "dev-oidc")
    return key.mint(subject=f"evader-{uuid.uuid4().hex[:8]}", roles=["uploader"],
                    issuer=issuer_url("127.0.0.1", stack.ports.dev_oidc))


@pytest.mark.parametrize("case", list(PIPELINE_CASES))
def test_through_the_pipeline_an_evasion_never_becomes_downloadable(case, running_functions, uploader) -> None:
    filename, content_type, build, verdict = PIPELINE_CASES[case]
    presign = running_functions["presign"]
    record = upload(presign, uploader, build(), content_type, filename)
    final = wait_for_status(presign, uploader, record["id"], {"clean", "infected", "rejected", "unscannable"})
    assert final["status"] == verdict and final["scan_detail"], final
    refused = call("GET", f"{presign}/files/{record['id']}/download", token=uploader)
    assert refused.status == 403 and final["scan_detail"] in refused.json()["detail"], refused.body


def test_through_the_pipeline_a_random_file_ends_clean_and_downloads_byte_identical(running_functions,
                                                                                    uploader) -> None:
    presign = running_functions["presign"]
    data = os.urandom(12 * MIB)
    record = upload(presign, uploader, data, "application/octet-stream", "random.bin")
    final = wait_for_status(presign, uploader, record["id"], {"clean", "infected", "rejected", "unscannable"})
    assert final["status"] == "clean", final
    link = call("GET", f"{presign}/files/{record['id']}/download", token=uploader)
    assert link.status == 200, link.body
    got = call("GET", link.json()["url"])
    assert hashlib.sha256(got.body).digest() == hashlib.sha256(data).digest()
    # Served as what the bytes are (unknown binary), never what the client claimed, and as an attachment.
    assert got.header("Content-Type") == "application/octet-stream"
    assert re.match(r"attachment; filename=\"random.bin\"", got.header("Content-Disposition") or "")


def test_a_download_carries_the_sniffed_type_not_the_claim(running_functions, uploader) -> None:
    presign = running_functions["presign"]
    data = b"%PDF-1.7\n" + os.urandom(64 * 1024)
    record = upload(presign, uploader, data, "application/octet-stream", "claims-nothing.bin")
    final = wait_for_status(presign, uploader, record["id"], {"clean", "infected", "rejected", "unscannable"})
    assert (final["status"], final["detected_type"]) == ("clean", "application/pdf"), final
    got = call("GET", call("GET", f"{presign}/files/{record['id']}/download", token=uploader).json()["url"])
    assert got.header("Content-Type") == "application/pdf" and got.body == data
    assert io.BytesIO(got.body).read(5) == b"%PDF-"
