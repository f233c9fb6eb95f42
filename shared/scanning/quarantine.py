"""Moving an upload's object into the quarantine bucket and back, leaving nothing behind.

The uploads bucket is versioned in production (Object Lock needs versioning), and on a
versioned bucket a plain DeleteObject only adds a delete marker: the infected bytes would stay
readable by version id. So quarantine copies the *exact version* that was scanned
(CopySource with VersionId), then deletes every version and delete marker of the key from the
uploads bucket (S3 DeleteObjects by version id; AWS: "to permanently delete an object in a
versioned bucket, you must include the object's versionId"). On an unversioned bucket the
listing returns the single "null" version, which deletes the same way.

A legal hold on the upload is carried onto the quarantine copy where the quarantine bucket has
Object Lock, so the evidence outlives the retention pass.
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from shared.platform.logs import log_event
from shared.platform.settings import StorageSettings
from shared.platform.storage import is_missing, list_versions, sse_arguments

logger = logging.getLogger("dropgate.quarantine")

# What storage answers for a legal hold on a bucket without Object Lock: the copy is still kept.
_NO_OBJECT_LOCK = ("InvalidRequest", "ObjectLockConfigurationNotFoundError", "NotImplemented", "MethodNotAllowed")


def move_to_quarantine(s3: BaseClient, storage: StorageSettings, key: str, *, source_bucket: str,
                       version_id: str | None, legal_hold: bool = False) -> str:
    """Copy the scanned version into quarantine, then remove every version of the key from `source_bucket`.

    Idempotent: a retried delivery whose earlier attempt already copied and deleted finds the
    copy in quarantine and only finishes the deletion. Returns the quarantine bucket.
    """
    quarantine = storage.quarantine_bucket
    if source_bucket == quarantine:
        return quarantine
    source: dict[str, Any] = {"Bucket": source_bucket, "Key": key}
    if version_id and version_id != "null":
        source["VersionId"] = version_id
    try:
        s3.copy_object(Bucket=quarantine, Key=key, CopySource=source, MetadataDirective="COPY",
                       **sse_arguments(storage))
    except ClientError as exc:
        # A concurrent delivery of the same event may have moved it a moment ago.
        if not (is_missing(exc) and exists(s3, quarantine, key)):
            raise
    if legal_hold:
        _hold(s3, quarantine, key)
    delete_every_version(s3, source_bucket, key)
    return quarantine


def restore_from_quarantine(s3: BaseClient, storage: StorageSettings, key: str, *, target_bucket: str) -> None:
    """Bring a released (or rescanned-clean) object back to the uploads bucket, then drop the quarantine copy."""
    quarantine = storage.quarantine_bucket
    try:
        s3.copy_object(Bucket=target_bucket, Key=key, CopySource={"Bucket": quarantine, "Key": key},
                       MetadataDirective="COPY", **sse_arguments(storage))
    except ClientError as exc:
        if not (is_missing(exc) and exists(s3, target_bucket, key)):
            raise
    delete_every_version(s3, quarantine, key)


def delete_every_version(s3: BaseClient, bucket: str, key: str) -> list[dict[str, str]]:
    """Delete every version and delete marker of `key`; returns the versions storage kept under a hold.

    A version under an S3 legal hold or retention is refused with AccessDenied (S3 Object Lock:
    "a locked version cannot be deleted"): the hold is a legal decision, so it stays, and the
    row's verdict keeps it from being served. Any other refusal raises, so the delivery is retried.
    """
    versions = list_versions(s3, bucket, key)
    if not versions:
        return []
    response = s3.delete_objects(Bucket=bucket, Delete={"Objects": versions, "Quiet": True})
    errors = response.get("Errors", [])
    held = [e for e in errors if e.get("Code") == "AccessDenied"]
    if len(held) < len(errors):
        other = next(e for e in errors if e.get("Code") != "AccessDenied")
        raise ClientError({"Error": {"Code": other.get("Code", "DeleteRefused"), "Message": other.get("Message", "")}},
                          "DeleteObjects")
    if held:
        log_event(logger, "storage kept versions under a hold", logging.WARNING, bucket=bucket, key=key,
                  held=[str(e.get("VersionId")) for e in held][:10])
    return held


def exists(s3: BaseClient, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if is_missing(exc):
            return False
        raise
    return True


def _hold(s3: BaseClient, bucket: str, key: str) -> None:
    try:
        s3.put_object_legal_hold(Bucket=bucket, Key=key, LegalHold={"Status": "ON"})
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) not in _NO_OBJECT_LOCK:
            raise
        log_event(logger, "quarantine bucket has no Object Lock; the hold lives in the database", bucket=bucket,
                  key=key)
