"""The S3 client and the bucket set-up step.

boto3 is the one S3 client of the data path: the same code then works against
MinIO, SeaweedFS and AWS S3, and botocore implements every call dropgate needs
(multipart, presigning, checksums, object lock, lifecycle, tagging, encryption)
with SigV4 and standard retries.
"""

from __future__ import annotations

from typing import Any, Final

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError

from shared.platform.settings import MAX_RETENTION_DAYS, StorageSettings

# Browsers must read ETag to complete a multipart upload, so CORS exposes it.
_CORS_EXPOSED_HEADERS = ["ETag", "x-amz-checksum-sha256", "x-amz-request-id"]
UPLOAD_CORS_METHODS: Final = ["PUT", "POST", "DELETE", "GET", "HEAD"]


def create_s3_client(settings: StorageSettings, *, public: bool = False, max_attempts: int = 3) -> BaseClient:
    """A SigV4 client; path-style addressing unless DROPGATE_S3_ADDRESSING_STYLE=virtual (MinIO and SeaweedFS serve
    buckets under the path).

    `public=True` targets the endpoint browsers reach, for presigning only: a
    presigned URL is bound to the host it was signed for.
    """
    endpoint = settings.public_endpoint_url if public else settings.endpoint_url
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": settings.addressing_style},
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=5,
            read_timeout=60,
            # By default send checksums only when an operation requires one: S3-compatible servers
            # differ in what they accept for optional checksum headers (DROPGATE_S3_CHECKSUMS).
            request_checksum_calculation=settings.checksum_mode,
            response_checksum_validation=settings.checksum_mode,
        ),
    )


def check_storage(client: BaseClient, bucket: str) -> None:
    """Health check: the bucket exists and the credentials can reach it."""
    client.head_bucket(Bucket=bucket)


def ensure_bucket(client: BaseClient, bucket: str, *, object_lock: bool = False) -> bool:
    """Create the bucket unless it exists; True when it was created.

    Object Lock can only be enabled when a bucket is made (and brings versioning with it): an
    existing bucket without it stays so, and the storage probe says so (DROPGATE_STORAGE_EXPECT).
    """
    try:
        client.head_bucket(Bucket=bucket)
        return False
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
    try:
        client.create_bucket(Bucket=bucket, **({"ObjectLockEnabledForBucket": True} if object_lock else {}))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
        return False
    return True


def set_upload_cors(client: BaseClient, bucket: str, origins: tuple[str, ...]) -> None:
    """Let the web origins write what presign signed for them and read ETag; nothing else crosses origins.

    PUT: parts and one-write uploads; POST: a POST policy form, and Uppy 6's signRequest mode starting and
    completing its multipart upload; DELETE: that mode's abort; GET: its ListParts, and downloads."""
    client.put_bucket_cors(
        Bucket=bucket,
        CORSConfiguration={"CORSRules": [{
            "AllowedOrigins": list(origins),
            "AllowedMethods": UPLOAD_CORS_METHODS,
            "AllowedHeaders": ["*"],
            "ExposeHeaders": _CORS_EXPOSED_HEADERS,
            "MaxAgeSeconds": 3600,
        }]},
    )


def set_lifecycle_rules(client: BaseClient, bucket: str, retention_days: int = MAX_RETENTION_DAYS,
                        abort_multipart_days: int = 1) -> bool:
    """The safety net under the expire function (docs/expire.md); True when the bucket's rules changed.

    Objects expire `retention_days` after they were written (old versions a day after they stop
    being current) and multipart uploads are aborted `abort_multipart_days` after they began.
    The whole configuration is replaced, so a re-run never adds rules; unchanged rules are not rewritten.
    """
    rules = [
        {"ID": "dropgate-retention", "Status": "Enabled", "Filter": {"Prefix": ""},
         "Expiration": {"Days": retention_days}, "NoncurrentVersionExpiration": {"NoncurrentDays": 1}},
        {"ID": "dropgate-abort-incomplete-multipart", "Status": "Enabled", "Filter": {"Prefix": ""},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": abort_multipart_days}},
    ]
    try:
        current = client.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
            raise
        current = []
    if sorted(current, key=lambda rule: rule.get("ID", "")) == sorted(rules, key=lambda rule: rule["ID"]):
        return False
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
    return True


def sse_arguments(settings: StorageSettings) -> dict[str, str]:
    """The server-side encryption parameters of a write (CreateMultipartUpload, CopyObject, PutObject).

    Sent on every write rather than trusting the bucket default alone: a CopyObject without them
    into a bucket without a default stores the copy unencrypted (SeaweedFS 4.48 decrypts it).
    """
    if settings.sse_algorithm is None:
        return {}
    arguments = {"ServerSideEncryption": settings.sse_algorithm}
    if settings.sse_algorithm == "aws:kms" and settings.sse_kms_key_id:
        arguments["SSEKMSKeyId"] = settings.sse_kms_key_id
    return arguments


def sse_headers(settings: StorageSettings) -> dict[str, str]:
    """`sse_arguments` as the request headers (or POST policy form fields) a browser's own write carries."""
    names = {"ServerSideEncryption": "x-amz-server-side-encryption",
             "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id"}
    return {names[argument]: value for argument, value in sse_arguments(settings).items()}


def set_bucket_encryption(client: BaseClient, bucket: str, settings: StorageSettings) -> bool:
    """Make the settings' encryption the bucket default (PutBucketEncryption); True when it changed."""
    if settings.sse_algorithm is None:
        return False
    default: dict[str, str] = {"SSEAlgorithm": settings.sse_algorithm}
    if settings.sse_algorithm == "aws:kms" and settings.sse_kms_key_id:
        default["KMSMasterKeyID"] = settings.sse_kms_key_id
    try:
        rules = client.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in (
                "ServerSideEncryptionConfigurationNotFoundError", "NoSuchEncryptionConfiguration", "404"):
            raise
        rules = []
    if any(rule.get("ApplyServerSideEncryptionByDefault") == default for rule in rules):
        return False
    client.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": default}]})
    return True


def set_up_buckets(settings: StorageSettings, client: BaseClient | None = None) -> list[str]:
    """The set-up step run by the local stack and by the production set-up Job. Idempotent."""
    client = client or create_s3_client(settings)
    actions = []
    for bucket in (settings.uploads_bucket, settings.quarantine_bucket):
        if ensure_bucket(client, bucket, object_lock="object-lock" in settings.expect):
            actions.append(f"created bucket {bucket}" + (" with Object Lock" if "object-lock" in settings.expect else ""))
        if set_lifecycle_rules(client, bucket):
            actions.append(f"lifecycle on {bucket}: expire after {MAX_RETENTION_DAYS} days, "
                           "abort incomplete multipart uploads after 1 day")
        if set_bucket_encryption(client, bucket, settings):
            actions.append(f"default encryption on {bucket}: {settings.sse_algorithm}")
    if settings.allowed_origins:
        set_upload_cors(client, settings.uploads_bucket, settings.allowed_origins)
        actions.append(f"CORS on {settings.uploads_bucket} for {', '.join(settings.allowed_origins)}")
    return actions


class IncompleteRead(IOError):
    """Storage ended a stream before the length it announced: whatever was being decided must wait for a retry."""


# What S3 servers answer for an absent key or bucket: NoSuchKey on GET, a bare 404 on HEAD
# (no body to carry a code), NotFound from some servers, NoSuchVersion for a version id.
# Not there: an object, a version, or a multipart upload (S3's codes; HEAD answers a bare 404).
MISSING_CODES: Final = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchVersion", "NoSuchUpload"})


def error_code(exc: ClientError) -> str:
    """The S3 error code of a refusal ("NoSuchKey", "AccessDenied", ...); "" when storage sent none."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def is_missing(exc: ClientError) -> bool:
    """Whether storage said the object, version or multipart upload is not there (the one home of that rule)."""
    return error_code(exc) in MISSING_CODES


def list_versions(client: BaseClient, bucket: str, key: str) -> list[dict[str, str]]:
    """Every version and delete marker of exactly `key`, as DeleteObjects entries ({Key, VersionId}).

    On a versioned bucket a plain delete only adds a delete marker and the bytes stay readable by
    version id; whoever must make bytes go deletes each of these.
    """
    entries: list[dict[str, str]] = []
    request: dict[str, Any] = {"Bucket": bucket, "Prefix": key}
    while True:
        page = client.list_object_versions(**request)
        for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
            if item["Key"] == key:  # the prefix also matches longer keys
                entries.append({"Key": key, "VersionId": item["VersionId"]})
        if not page.get("IsTruncated"):
            return entries
        request["KeyMarker"] = page["NextKeyMarker"]
        request["VersionIdMarker"] = page["NextVersionIdMarker"]
