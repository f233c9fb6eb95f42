"""Encryption at rest (SSE on SeaweedFS) and in transit (presign over TLS), on the real local stack."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dropgate_local.client import call
from dropgate_local.processes import free_port
from shared.platform.settings import Settings, SettingsError, StorageSettings
from shared.platform.storage import create_s3_client, ensure_bucket, sse_arguments
from tests.conftest import EICAR
from tests.test_pipeline import FINAL, dev_token, upload, wait_for_status  # noqa: F401 - fixture

BASE_ENV = {"DROPGATE_S3_ACCESS_KEY": "a", "DROPGATE_S3_SECRET_KEY": "b"}


# ---------------------------------------------------------------------------------------------- settings

def test_sse_s3_by_default_kms_with_a_key_or_none_on_request() -> None:
    def storage(**env: str) -> StorageSettings:
        return Settings.from_env(["storage"], {**BASE_ENV, **env}).storage

    assert sse_arguments(storage()) == {"ServerSideEncryption": "AES256"}
    assert sse_arguments(storage(DROPGATE_SSE="aws:kms", DROPGATE_SSE_KMS_KEY_ID="dropgate-key")) == {
        "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "dropgate-key"}
    assert sse_arguments(storage(DROPGATE_SSE="aws:kms")) == {"ServerSideEncryption": "aws:kms"}
    assert sse_arguments(storage(DROPGATE_SSE="none")) == {}
    with pytest.raises(SettingsError) as refused:
        storage(DROPGATE_SSE="aes")
    assert "DROPGATE_SSE='aes'" in str(refused.value)
    with pytest.raises(SettingsError) as refused:
        storage(DROPGATE_SSE_KMS_KEY_ID="dropgate-key")  # a key with SSE-S3 would be silently ignored
    assert "DROPGATE_SSE=aws:kms" in str(refused.value)


# ---------------------------------------------------------------------------------------------- at rest

def test_the_set_up_step_makes_sse_the_default_of_both_buckets(storage) -> None:
    s3 = create_s3_client(storage)
    for bucket in (storage.uploads_bucket, storage.quarantine_bucket):
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256", bucket


def volume_files_containing(stack, needle: bytes) -> list[str]:  # noqa: ANN001
    """SeaweedFS volume files (.dat) that hold these bytes in the clear."""
    assert needle and b"\n" not in needle  # grep -F reads a newline as a second (here: empty) pattern
    data_dir = stack.data_dir / "seaweedfs" / "data"
    found = subprocess.run(["grep", "-rlF", "--include=*.dat", needle.decode(), str(data_dir)],
                           capture_output=True, text=True, check=False)
    assert found.returncode in (0, 1), found.stderr
    return found.stdout.split()


def test_an_upload_is_stored_encrypted_and_still_scans_and_downloads(running_functions, dev_token, stack,
                                                                     storage) -> None:
    presign, token = running_functions["presign"], dev_token("sse-alice")
    marker = f"dropgate-sse-marker-{uuid.uuid4().hex}".encode()
    # Incompressible bytes with the marker every 64 KiB: SeaweedFS gzips what compresses well, which
    # would hide plaintext from the check below as well as encryption does.
    data = b"".join(os.urandom(64 * 1024) + marker for _ in range(96))
    record = upload(presign, token, data, "application/octet-stream", "random.bin")
    final = wait_for_status(presign, token, record["id"], FINAL)
    assert final["status"] == "clean", final  # clamd read the plaintext back through storage

    head = create_s3_client(storage).head_object(Bucket=storage.uploads_bucket, Key=record["key"])
    assert head["ServerSideEncryption"] == "AES256"
    # Not just a header: the bytes on SeaweedFS's disk are not the plaintext...
    assert volume_files_containing(stack, marker) == []
    # ...which this check would see: the same bytes uploaded the same way without SSE are in the clear.
    s3, control_key = create_s3_client(storage), f"sse-control/{uuid.uuid4()}"
    ensure_bucket(s3, "sse-control")  # no default encryption, outside the webhook's prefixes
    started = s3.create_multipart_upload(Bucket="sse-control", Key=control_key,
                                         ContentType="application/octet-stream")
    part = s3.upload_part(Bucket="sse-control", Key=control_key, UploadId=started["UploadId"], PartNumber=1,
                          Body=data)
    assert "ServerSideEncryption" not in part
    assert volume_files_containing(stack, marker), "the unencrypted control part should be readable on disk"
    s3.abort_multipart_upload(Bucket="sse-control", Key=control_key, UploadId=started["UploadId"])

    link = call("GET", f"{presign}/files/{record['id']}/download", token=token)
    assert link.status == 200, link.body
    downloaded = call("GET", link.json()["url"])
    assert downloaded.status == 200 and hashlib.sha256(downloaded.body).digest() == hashlib.sha256(data).digest()


def test_the_quarantine_copy_is_encrypted_too(running_functions, dev_token, storage) -> None:
    presign, token = running_functions["presign"], dev_token("sse-bob")
    record = upload(presign, token, EICAR, "text/plain", "eicar.txt")
    assert wait_for_status(presign, token, record["id"], FINAL)["status"] == "infected"
    head = create_s3_client(storage).head_object(Bucket=storage.quarantine_bucket, Key=record["key"])
    assert head["ServerSideEncryption"] == "AES256"


# ---------------------------------------------------------------------------------------------- in transit

def self_signed(tmp_path) -> tuple[str, str]:  # noqa: ANN001
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dropgate-test")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


def test_presign_serves_https_when_given_a_certificate(stack, running_functions, tmp_path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    child = stack.start_function("presign", port=port, label="presign-tls",
                                 extra_env={"DROPGATE_TLS_CERT": cert, "DROPGATE_TLS_KEY": key})
    try:
        trusted = ssl.create_default_context(cafile=cert)
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=10,  # noqa: S310 - loopback
                                    context=trusted) as response:
            assert response.status == 200
            assert json.loads(response.read())["checks"]["storage"] == "ok"
            assert response.headers["traceresponse"] is None  # health answers outside any trace
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/openapi.json", timeout=10,  # noqa: S310
                                    context=trusted) as response:
            assert response.status == 200 and response.headers["traceresponse"]
        # The certificate is what a client checks: without trusting it, no connection.
        with pytest.raises(urllib.error.URLError) as untrusted:
            urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=10)  # noqa: S310
        assert isinstance(untrusted.value.reason, ssl.SSLCertVerificationError)
        # And plain HTTP gets no answer from it.
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10)  # noqa: S310
    finally:
        child.stop()
        stack.children.pop("presign-tls", None)
