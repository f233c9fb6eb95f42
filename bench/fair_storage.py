"""Storage housekeeping between the benchmarks' rounds, never timed.

On a versioned bucket (production's have Object Lock, hence versioning; the expiry benchmark turns
versioning on locally) a plain delete only adds a delete marker and the bytes stay on disk:
emptying a bucket means deleting every version by its id (an unversioned object's id is "null"),
and SeaweedFS gives the disk back only after its master vacuums the volumes. Without this a full `make bench` (10 GB per run,
ten runs) would fill the disk, and each round would start on a fuller store than the last.
"""

from __future__ import annotations

import urllib.request
from typing import Any

from dropgate_local.stack import HOST, LocalStack

from shared.platform.storage import ensure_bucket, set_bucket_encryption

MAX_DELETE_KEYS = 1000  # DeleteObjects takes at most 1,000 keys a request


def versions_in(s3, bucket: str, prefix: str = "") -> list[dict[str, str]]:
    """Every version and delete marker under `prefix`, as DeleteObjects entries."""
    entries: list[dict[str, str]] = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        entries += [{"Key": item["Key"], "VersionId": item["VersionId"]}
                    for item in page.get("Versions", []) + page.get("DeleteMarkers", [])]
    return entries


def empty_bucket(s3, bucket: str, prefix: str = "") -> int:
    """Delete every version under `prefix` and abort open multipart uploads; how many versions went."""
    entries = versions_in(s3, bucket, prefix)
    for first in range(0, len(entries), MAX_DELETE_KEYS):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": entries[first:first + MAX_DELETE_KEYS], "Quiet": True})
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
        for upload in page.get("Uploads", []):  # a failed upload's parts hold disk too
            s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    return len(entries)


def vacuum(stack: LocalStack) -> None:
    """Ask SeaweedFS's master to compact volumes now (deleted bytes are only freed by a vacuum)."""
    url = f"http://{HOST}:{stack.ports.seaweed.master}/vol/vacuum?garbageThreshold=0.01"
    with urllib.request.urlopen(url, timeout=600) as response:
        response.read()


def versioned_bucket(s3, bucket: str, settings: Any) -> str:
    """A bucket of the bench's own, made like the uploads bucket (set_up_buckets): with Object Lock where
    the deployment expects it (storage then checks each version's retention and hold on delete, as it
    does for dropgate's deletes), versioned either way, and encrypted."""
    ensure_bucket(s3, bucket, object_lock="object-lock" in settings.expect)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    set_bucket_encryption(s3, bucket, settings)
    return bucket


def is_versioned(s3, bucket: str) -> bool:
    return s3.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled"
