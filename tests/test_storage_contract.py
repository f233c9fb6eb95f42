"""The S3 contract dropgate relies on, against two real S3 implementations on loopback.

SeaweedFS (`weed mini`, the local stack's storage) and moto's standalone server
(`moto_server`, PyPI `moto`: follows AWS's request and response formats, but enforces
no signatures) run as real processes. Every call dropgate makes is tried on both:
presigned multipart parts, complete/abort/list, versioned delete and copy by version,
SSE on writes, tagging, lifecycle rules. What each server *enforces* differs, and the
storage probe (shared/platform/storage_probe.py) must say so: `ENFORCES` is the table of
docs/storage.md, and the probe is held to it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import urllib3
from botocore.exceptions import ClientError

from dropgate_local.processes import ChildProcess, free_port, http_ok
from shared.platform.errors import NotReady
from shared.platform.settings import STORAGE_CAPABILITIES, StorageSettings
from shared.platform.sigv4 import PresignSigner
from shared.platform.storage import (
    create_s3_client,
    list_versions,
    set_lifecycle_rules,
    set_up_buckets,
    sse_arguments,
    sse_headers,
)
from shared.platform.storage_probe import Capability, StorageCheck, _put, probe_storage

MIB = 1024 * 1024
ALL = frozenset(Capability)
CONFIGURED = frozenset({Capability.OBJECT_LOCK, Capability.NOTIFICATIONS})
# What each server enforces, as measured here (docs/storage.md "S3 servers"), with both buckets made
# by set_up_buckets with Object Lock and notifications set through the S3 API where the server keeps them.
ENFORCES = {
    # SeaweedFS configures notifications in its filer (local-dev/seaweed.py); its S3 API keeps none.
    "seaweedfs": ALL - {Capability.NOTIFICATIONS},
    # moto answers the SSE it was asked for and keeps bucket configuration; it checks no signature at all.
    "moto": frozenset({Capability.SSE}) | CONFIGURED,
}
# A notification configuration as AWS takes it (moto checks the ARN's form; MinIO's are arn:minio:sqs::…).
NOTIFY_ALL = {"QueueConfigurations": [{"Id": "dropgate", "QueueArn": "arn:aws:sqs:us-east-1:123456789012:dropgate",
                                       "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]}


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageSettings]:
    port = free_port()
    server = os.path.join(os.path.dirname(sys.executable), "moto_server")
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    child = ChildProcess("moto", [server, "-H", "127.0.0.1", "-p", str(port)], log).start()
    try:
        child.wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/moto-api/"), timeout=60)
        settings = StorageSettings(endpoint_url=f"http://127.0.0.1:{port}", public_endpoint_url=None,
                                   region="us-east-1", access_key_id="moto", secret_access_key="moto-secret",
                                   uploads_bucket="contract-uploads", quarantine_bucket="contract-quarantine",
                                   allowed_origins=())
        set_up_buckets(settings)
        yield settings
    finally:
        child.stop()


@pytest.fixture(params=["seaweedfs", "moto"])
def backend(request: pytest.FixtureRequest) -> tuple[str, StorageSettings]:
    if request.param == "seaweedfs":
        return "seaweedfs", request.getfixturevalue("unwatched")
    return "moto", request.getfixturevalue("moto")


@pytest.fixture
def configured(backend) -> tuple[str, StorageSettings]:
    """Fresh buckets as a production set-up makes them: with Object Lock, and notifying puts and deletes
    through the S3 notification API where the server keeps such a configuration."""
    name, settings = backend
    suffix = uuid.uuid4().hex[:8]
    locked = dataclasses.replace(settings, uploads_bucket=f"locked-uploads-{suffix}",
                                 quarantine_bucket=f"locked-quarantine-{suffix}", expect=frozenset({"object-lock"}))
    set_up_buckets(locked)
    s3 = create_s3_client(locked)
    for bucket in (locked.uploads_bucket, locked.quarantine_bucket):
        try:
            s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=NOTIFY_ALL)
        except ClientError:
            assert name == "seaweedfs"  # its S3 API has no notification configuration (filer config instead)
    return name, locked


def _b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _signer(settings: StorageSettings) -> PresignSigner:
    return PresignSigner(endpoint_url=settings.endpoint_url, access_key_id=settings.access_key_id,
                         secret_access_key=settings.secret_access_key, region=settings.region)


def test_presigned_multipart_upload_completes_byte_identical(backend) -> None:
    _, settings = backend
    s3, key = create_s3_client(settings), f"contract/{uuid.uuid4()}"
    bucket = settings.uploads_bucket
    parts_data = [os.urandom(5 * MIB), os.urandom(3 * MIB)]
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, ContentType="application/pdf",
                                           Metadata={"upload-id": "x"}, **sse_arguments(settings))["UploadId"]
    etags = []
    for number, data in enumerate(parts_data, start=1):
        headers = {"Content-Length": str(len(data)), "x-amz-checksum-sha256": _b64sha(data)}
        signed = _signer(settings).presign("PUT", bucket, key, query={"partNumber": str(number),
                                                                     "uploadId": upload_id},
                                           headers=headers, expires_in=300)
        status, response_headers, body = _put(signed.url, signed.headers, data)
        assert status == 200, body
        etags.append(response_headers["etag"].strip('"'))
    listed = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in listed] == [(1, 5 * MIB), (2, 3 * MIB)]
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": f'"{e}"'} for n, e in enumerate(etags, start=1)]})
    stored = s3.get_object(Bucket=bucket, Key=key)
    assert stored["Body"].read() == b"".join(parts_data)
    assert stored["ContentType"] == "application/pdf" and stored["Metadata"] == {"upload-id": "x"}
    assert stored["ETag"].strip('"').endswith("-2"), "a multipart ETag names its part count"


def _post_form(policy, data: bytes) -> tuple[int, bytes]:
    """A browser's POST of an S3 policy form (what @uppy/aws-s3 6 sends for a `{url, fields}` answer:
    src/s3-client/utils.ts buildPostPolicyForm, the fields in order and the file last)."""
    body, content_type = urllib3.encode_multipart_formdata([*policy.fields.items(), ("file", ("f.bin", data))])
    response = urllib3.request("POST", policy.url, body=body, headers={"Content-Type": content_type}, retries=False)
    return response.status, response.data


def test_a_post_policy_stores_exactly_the_declared_length_at_the_fixed_key(backend) -> None:
    """The POST path of Uppy's companion mode (`GET /s3/params`): the policy's exact content-length-range
    and fixed key are what storage enforces (AWS "Creating a POST Policy"). moto checks no signature and no
    condition, which the storage probe reports (it lacks `length-bound`), so only SeaweedFS is held to it."""
    name, settings = backend
    s3, key, bucket = create_s3_client(settings), f"contract/{uuid.uuid4()}", settings.uploads_bucket
    data = os.urandom(64 * 1024)
    fields = {"Content-Type": "application/pdf", "x-amz-meta-upload-id": "x", **sse_headers(settings)}
    policy = _signer(settings).post_policy(bucket, key, size=len(data), fields=fields, expires_in=300)
    if name == "seaweedfs":
        status, body = _post_form(policy, data + b"x")
        assert status == 400 and b"EntityTooLarge" in body, body
        status, body = _post_form(policy, data[:-1])
        assert status == 400 and b"EntityTooSmall" in body, body
        tampered = dataclasses.replace(policy, fields={**policy.fields, "key": f"{key}-elsewhere"})
        status, body = _post_form(tampered, data)
        assert status == 403, body
        with pytest.raises(ClientError):
            s3.head_object(Bucket=bucket, Key=f"{key}-elsewhere")
    status, body = _post_form(policy, data)
    assert status in (200, 201, 204), body
    stored = s3.get_object(Bucket=bucket, Key=key)
    assert stored["Body"].read() == data
    assert stored["ContentType"] == "application/pdf" and stored["Metadata"] == {"upload-id": "x"}


def test_a_put_signed_with_if_none_match_cannot_replace_the_object(backend) -> None:
    """Uppy 6's PutObject URLs are signed with `If-None-Match: *` (AWS conditional writes): used again, even
    within its expiry, the URL cannot replace what was stored (and later scanned). Both servers enforce it."""
    _, settings = backend
    s3, key, bucket = create_s3_client(settings), f"contract/{uuid.uuid4()}", settings.uploads_bucket
    data = os.urandom(1000)
    signed = _signer(settings).presign("PUT", bucket, key, headers={"Content-Length": str(len(data)),
                                                                    "If-None-Match": "*"}, expires_in=300)
    assert _put(signed.url, signed.headers, data)[0] == 200
    status, _, body = _put(signed.url, signed.headers, os.urandom(len(data)))
    assert status == 412 and b"PreconditionFailed" in body, body
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data


def test_an_aborted_multipart_upload_is_gone(backend) -> None:
    _, settings = backend
    s3, key = create_s3_client(settings), f"contract/{uuid.uuid4()}"
    upload_id = s3.create_multipart_upload(Bucket=settings.uploads_bucket, Key=key)["UploadId"]
    s3.upload_part(Bucket=settings.uploads_bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * 1024)
    s3.abort_multipart_upload(Bucket=settings.uploads_bucket, Key=key, UploadId=upload_id)
    with pytest.raises(ClientError) as refused:
        s3.list_parts(Bucket=settings.uploads_bucket, Key=key, UploadId=upload_id)
    assert refused.value.response["Error"]["Code"] == "NoSuchUpload"


def test_versioned_delete_leaves_a_marker_and_copy_by_version_recovers(backend) -> None:
    _, settings = backend
    s3, bucket, key = create_s3_client(settings), f"contract-versions-{uuid.uuid4().hex[:8]}", "a/b"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    first = s3.put_object(Bucket=bucket, Key=key, Body=b"one")["VersionId"]
    s3.put_object(Bucket=bucket, Key=key, Body=b"two")
    s3.delete_object(Bucket=bucket, Key=key)
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key=key)
    assert len(list_versions(s3, bucket, key)) == 3, "two versions and a delete marker"
    s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": key, "VersionId": first})
    assert s3.get_object(Bucket=bucket, Key="copy")["Body"].read() == b"one"
    s3.delete_objects(Bucket=bucket, Delete={"Objects": list_versions(s3, bucket, key)})
    assert list_versions(s3, bucket, key) == []


def test_sse_tagging_and_lifecycle_are_accepted(backend) -> None:
    _, settings = backend
    s3, key = create_s3_client(settings), f"contract/{uuid.uuid4()}"
    written = s3.put_object(Bucket=settings.uploads_bucket, Key=key, Body=b"data", **sse_arguments(settings))
    assert written.get("ServerSideEncryption") == "AES256"
    s3.put_object_tagging(Bucket=settings.uploads_bucket, Key=key,
                          Tagging={"TagSet": [{"Key": "dropgatesigversion", "Value": "27000"}]})
    assert s3.get_object_tagging(Bucket=settings.uploads_bucket, Key=key)["TagSet"] == [
        {"Key": "dropgatesigversion", "Value": "27000"}]
    set_lifecycle_rules(s3, settings.uploads_bucket)  # raises if the server refuses the rules


# -- what each server enforces, and the probe's conclusion --

def test_notification_configuration_is_kept_where_the_server_has_it(configured) -> None:
    name, settings = configured
    s3 = create_s3_client(settings)
    kept = s3.get_bucket_notification_configuration(Bucket=settings.uploads_bucket)
    kept.pop("ResponseMetadata", None)
    if Capability.NOTIFICATIONS in ENFORCES[name]:
        assert kept == NOTIFY_ALL
    else:  # SeaweedFS answers an empty configuration: its notifications live in the filer's config
        assert kept == {}


def test_buckets_made_with_object_lock_are_versioned(configured) -> None:
    _, settings = configured
    s3 = create_s3_client(settings)
    for bucket in (settings.uploads_bucket, settings.quarantine_bucket):
        assert s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]["ObjectLockEnabled"] == \
            "Enabled"
        assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"


def test_the_probe_finds_what_each_server_enforces(configured) -> None:
    name, settings = configured
    expecting = dataclasses.replace(settings, expect=frozenset(str(c) for c in CONFIGURED))
    result = probe_storage(create_s3_client(settings), expecting)
    assert result.enforced == ENFORCES[name], result.details
    assert result.missing == ALL - ENFORCES[name]
    assert {str(c) for c in Capability} == STORAGE_CAPABILITIES  # the settings know every capability
    # What a deployment configures is checked only where it is expected.
    assert probe_storage(create_s3_client(settings), dataclasses.replace(settings, expect=frozenset())).enforced == \
        ENFORCES[name] - CONFIGURED


def test_the_probe_names_what_a_bucket_was_not_configured_with(moto) -> None:
    s3, suffix = create_s3_client(moto), uuid.uuid4().hex[:8]
    plain = dataclasses.replace(moto, uploads_bucket=f"plain-uploads-{suffix}", quarantine_bucket=f"plain-q-{suffix}",
                                expect=frozenset())
    set_up_buckets(plain)  # no Object Lock expected: made without it
    s3.put_bucket_notification_configuration(Bucket=plain.uploads_bucket, NotificationConfiguration={
        "QueueConfigurations": [{**NOTIFY_ALL["QueueConfigurations"][0], "Events": ["s3:ObjectCreated:*"]}]})
    expecting = dataclasses.replace(plain, expect=frozenset({"object-lock", "notifications"}))
    result = probe_storage(s3, expecting)
    assert {Capability.OBJECT_LOCK, Capability.NOTIFICATIONS} <= result.missing
    assert f"{plain.uploads_bucket}: no Object Lock (ObjectLockConfigurationNotFoundError" in \
        result.details[Capability.OBJECT_LOCK]
    assert f"{plain.uploads_bucket}: no notification of object removal" in result.details[Capability.NOTIFICATIONS]
    assert f"{plain.quarantine_bucket}: no notification of object creation or removal" in \
        result.details[Capability.NOTIFICATIONS]
    accepting = dataclasses.replace(expecting, accept_missing=frozenset({"signature", "signed-length",
                                                                          "part-checksum", "post-policy-length"}))
    with pytest.raises(NotReady) as refused:
        StorageCheck(lambda: s3, accepting)()
    reason = str(refused.value)
    assert (f"notifications (every upload and removal reaches dropgate as an event: {plain.uploads_bucket}: "
            "no notification of object removal; ") in reason
    assert f"object-lock (legal holds and quarantined evidence outlive the lifecycle rule: {plain.uploads_bucket}: " \
        "no Object Lock" in reason


def test_a_server_that_lacks_a_guarantee_is_refused_unless_it_is_accepted(moto) -> None:
    s3 = create_s3_client(moto)
    with pytest.raises(NotReady) as refused:
        StorageCheck(lambda: s3, moto)()
    reason = str(refused.value)
    assert "part-checksum (a part URL signed with a SHA-256 uploads exactly those bytes)" in reason
    assert "post-policy-length (a POST policy (Uppy's Companion mode) uploads exactly the declared number of " \
        "bytes)" in reason
    assert "DROPGATE_STORAGE_ACCEPT_MISSING=part-checksum,post-policy-length,signature,signed-length" in reason
    weaker = dataclasses.replace(moto, accept_missing=frozenset({"signature", "signed-length", "part-checksum",
                                                                 "post-policy-length"}))
    note = StorageCheck(lambda: s3, weaker)()
    assert note == ("weaker guarantees accepted: part-checksum, post-policy-length, signature, signed-length "
                    "not enforced")
    partly = dataclasses.replace(moto, accept_missing=frozenset({"signature", "signed-length", "post-policy-length"}))
    with pytest.raises(NotReady, match="part-checksum"):
        StorageCheck(lambda: s3, partly)()


def test_a_server_that_enforces_everything_is_ready(unwatched) -> None:
    s3 = create_s3_client(unwatched)
    assert StorageCheck(lambda: s3, unwatched)() is None
    # The probe leaves nothing behind: no object, no multipart upload under its prefix.
    assert s3.list_objects_v2(Bucket=unwatched.uploads_bucket, Prefix=".dropgate-probe/").get("KeyCount", 0) == 0
    uploads = s3.list_multipart_uploads(Bucket=unwatched.uploads_bucket, Prefix=".dropgate-probe/")
    assert uploads.get("Uploads", []) == []


def _probe_command(settings: StorageSettings, **extra: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "DROPGATE_S3_ENDPOINT": settings.endpoint_url,
           "DROPGATE_S3_ACCESS_KEY": settings.access_key_id, "DROPGATE_S3_SECRET_KEY": settings.secret_access_key,
           "DROPGATE_UPLOADS_BUCKET": settings.uploads_bucket, "DROPGATE_QUARANTINE_BUCKET": settings.quarantine_bucket,
           "DROPGATE_STORAGE_EXPECT": ",".join(sorted(settings.expect)), **extra}
    return subprocess.run([sys.executable, "-m", "shared.platform.storage_probe"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_the_probe_as_a_deploy_step_passes_a_server_that_enforces_everything(unwatched) -> None:
    done = _probe_command(unwatched)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["enforced"] == sorted(str(c) for c in ALL - CONFIGURED)
    # The local stack's buckets are made without Object Lock and notify through SeaweedFS's filer.
    unconfigured = _probe_command(unwatched, DROPGATE_STORAGE_EXPECT="object-lock,notifications")
    assert unconfigured.returncode == 1
    assert json.loads(unconfigured.stdout)["refused"] == ["notifications", "object-lock"]
    assert f"object-lock (legal holds and quarantined evidence outlive the lifecycle rule: {unwatched.uploads_bucket}: " \
        "no Object Lock" in unconfigured.stderr


def test_the_probe_as_a_deploy_step_fails_a_server_that_lacks_a_guarantee(moto) -> None:
    done = _probe_command(moto)
    assert done.returncode == 1
    lacking = ["part-checksum", "post-policy-length", "signature", "signed-length"]
    assert json.loads(done.stdout)["refused"] == lacking
    assert "storage does not enforce part-checksum" in done.stderr
    accepted = _probe_command(moto, DROPGATE_STORAGE_ACCEPT_MISSING=",".join(lacking))
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["accepted"] == lacking
