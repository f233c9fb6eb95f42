"""What the configured S3 server really enforces, found out by trying it (cached per instance).

dropgate's guarantees are only as good as the server that holds the bytes: a part URL
"bound to its length and SHA-256" binds nothing on a server that ignores the signed
`Content-Length` or `x-amz-checksum-sha256`, and "encrypted at rest" means nothing where
the SSE header is dropped. So before a function takes traffic, its storage health check
(`StorageCheck`) runs one probe against the uploads bucket, with the same presigner
presign uses for browsers:

1. CreateMultipartUpload of `.dropgate-probe/<uuid>` with dropgate's SSE arguments;
2. the part URL, signed for a length and a SHA-256, is PUT with a tampered signature,
   with one byte less, and with other bytes of the right length: each must be refused;
3. the right bytes must be accepted, and the part's answer must name the SSE asked for;
4. the multipart upload is aborted: no object is ever made, so no notification fires;
5. what the deployment configured on both buckets (DROPGATE_STORAGE_EXPECT), read back:
   Object Lock (and with it versioning), and notifications of puts and deletes.

A capability the server lacks makes the function not ready, with a reason naming it,
unless the operator accepted running without it (`DROPGATE_STORAGE_ACCEPT_MISSING`): then
/healthz says so, the log says so at WARNING once, and `dropgate_storage_capability`
shows 0 for it. docs/storage.md has the table of servers and what each enforces.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import http.client
import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

import urllib3
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from shared.platform import metrics
from shared.platform.errors import NotReady
from shared.platform.logs import log_event
from shared.platform.settings import StorageSettings
from shared.platform.sigv4 import PresignSigner
from shared.platform.storage import (
    check_storage,
    error_code,
    http_status,
    sse_arguments,
    sse_headers,
)

logger = logging.getLogger("dropgate.storage")

PROBE_PREFIX: Final = ".dropgate-probe/"
PROBE_PART_BYTES: Final = 64 * 1024  # a last part may be any size: the probe stays small
PROBE_TIMEOUT_SECONDS: Final = 10


class Capability(enum.StrEnum):
    """A rule of the S3 server that one of dropgate's guarantees rests on."""

    SIGNATURE = "signature"  # a presigned URL with a tampered signature is refused
    SIGNED_LENGTH = "signed-length"  # a presigned part PUT with another length than signed is refused
    PART_CHECKSUM = "part-checksum"  # a part whose bytes do not match its signed x-amz-checksum-sha256 is refused
    POST_POLICY_LENGTH = "post-policy-length"  # a POST policy form longer than its content-length-range is refused
    SSE = "sse"  # what dropgate writes is encrypted as DROPGATE_SSE asks (checked only when SSE is asked for)
    # Configured per deployment, checked where DROPGATE_STORAGE_EXPECT names them:
    OBJECT_LOCK = "object-lock"  # both buckets have Object Lock enabled, hence versioning
    NOTIFICATIONS = "notifications"  # both buckets notify object creation and removal (S3 notification API)


GUARANTEES: Final = {
    Capability.SIGNATURE: "part URLs are credentials only for the request they were signed for",
    Capability.SIGNED_LENGTH: "a part URL uploads exactly the declared number of bytes",
    Capability.PART_CHECKSUM: "a part URL signed with a SHA-256 uploads exactly those bytes",
    Capability.POST_POLICY_LENGTH: "a POST policy (Uppy's Companion mode) uploads exactly the declared number of bytes",
    Capability.SSE: "objects are encrypted at rest",
    Capability.OBJECT_LOCK: "legal holds and quarantined evidence outlive the lifecycle rule",
    Capability.NOTIFICATIONS: "every upload and removal reaches dropgate as an event",
}

# The S3 notification event types that tell dropgate of a creation and of a removal: the wildcard,
# or every specific type dropgate's buckets see (AWS S3 "Event notification types"; MinIO's
# `mc event add --event put,delete` stores the wildcards).
_CREATION_EVENTS: Final = ("s3:ObjectCreated:*", frozenset({"s3:ObjectCreated:Put", "s3:ObjectCreated:Copy",
                                                             "s3:ObjectCreated:CompleteMultipartUpload"}))
_REMOVAL_EVENTS: Final = ("s3:ObjectRemoved:*", frozenset({"s3:ObjectRemoved:Delete",
                                                            "s3:ObjectRemoved:DeleteMarkerCreated"}))


@dataclass(frozen=True)
class ProbeResult:
    enforced: frozenset[Capability]
    missing: frozenset[Capability]
    details: dict[Capability, str] = field(default_factory=dict)  # what the server answered, per capability

    def merged(self, other: ProbeResult) -> ProbeResult:
        return ProbeResult(enforced=self.enforced | other.enforced, missing=self.missing | other.missing,
                           details={**self.details, **other.details})


def probe_storage(s3: BaseClient, settings: StorageSettings) -> ProbeResult:
    """Try each capability against the uploads bucket; storage errors (down, no access) propagate."""
    key = f"{PROBE_PREFIX}{uuid.uuid4()}"
    bucket = settings.uploads_bucket
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, **sse_arguments(settings))["UploadId"]
    try:
        result = _probe_part(settings, bucket, key, upload_id)
    finally:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    result = result.merged(_probe_post_policy(s3, settings, bucket, f"{key}-post"))
    shortfalls = {capability: [f"{b}: {why}" for b in (bucket, settings.quarantine_bucket)
                               if (why := _CONFIGURATION_PROBES[capability](s3, b))]
                  for capability in map(Capability, settings.expect)}
    lacking = {capability for capability, found in shortfalls.items() if found}
    details = {**result.details, **{capability: "; ".join(found) or "configured on both buckets"
                                    for capability, found in shortfalls.items()}}
    return ProbeResult(enforced=result.enforced | (shortfalls.keys() - lacking), missing=result.missing | lacking,
                       details=details)


def _object_lock_shortfall(s3: BaseClient, bucket: str) -> str | None:
    """Why `bucket` lacks Object Lock (or the versioning it brings), or None."""
    try:
        lock = s3.get_object_lock_configuration(Bucket=bucket).get("ObjectLockConfiguration", {})
    except ClientError as exc:
        return f"no Object Lock ({error_code(exc) or http_status(exc)}; it can only be enabled when a bucket is made)"
    if lock.get("ObjectLockEnabled") != "Enabled":
        return "Object Lock is not enabled"
    status = s3.get_bucket_versioning(Bucket=bucket).get("Status")
    return None if status == "Enabled" else f"versioning is {status or 'off'}"


def _notifications_shortfall(s3: BaseClient, bucket: str) -> str | None:
    """Why `bucket` does not notify both creations and removals, or None.

    AWS's EventBridge receives every event of a bucket once enabled; otherwise the queue, topic and
    function configurations together must cover both kinds (prefix filters are the operator's business).
    """
    try:
        config = s3.get_bucket_notification_configuration(Bucket=bucket)
    except ClientError as exc:
        return f"its notification configuration cannot be read ({error_code(exc) or http_status(exc)})"
    if "EventBridgeConfiguration" in config:
        return None
    events = {event for kind in ("QueueConfigurations", "TopicConfigurations", "LambdaFunctionConfigurations")
              for target in config.get(kind, []) for event in target.get("Events", [])}
    lacking = [name for name, (wildcard, specific) in (("creation", _CREATION_EVENTS), ("removal", _REMOVAL_EVENTS))
               if wildcard not in events and not specific <= events]
    return f"no notification of object {' or '.join(lacking)}" if lacking else None


_CONFIGURATION_PROBES: Final[dict[Capability, Callable[[BaseClient, str], str | None]]] = {
    Capability.OBJECT_LOCK: _object_lock_shortfall,
    Capability.NOTIFICATIONS: _notifications_shortfall,
}


def _signer(settings: StorageSettings) -> PresignSigner:
    """The signer presign would use, against the endpoint the functions reach (not the public one)."""
    return PresignSigner(endpoint_url=settings.endpoint_url or f"https://s3.{settings.region}.amazonaws.com",
                         access_key_id=settings.access_key_id, secret_access_key=settings.secret_access_key,
                         region=settings.region)


def _probe_part(settings: StorageSettings, bucket: str, key: str, upload_id: str) -> ProbeResult:
    signer = _signer(settings)
    data = os.urandom(PROBE_PART_BYTES)
    headers = {"Content-Length": str(len(data)),
               "x-amz-checksum-sha256": base64.b64encode(hashlib.sha256(data).digest()).decode()}
    signed = signer.presign("PUT", bucket, key, query={"partNumber": "1", "uploadId": upload_id}, headers=headers,
                            expires_in=300)
    tampered = signed.url.replace("X-Amz-Signature=", "X-Amz-Signature=0", 1)
    answers = {
        Capability.SIGNATURE: _put(tampered, signed.headers, data),
        Capability.SIGNED_LENGTH: _put(signed.url, signed.headers, data[:-1]),
        Capability.PART_CHECKSUM: _put(signed.url, signed.headers, os.urandom(len(data))),
    }
    enforced = {capability for capability, (status, _, _) in answers.items() if 400 <= status < 500}
    details = {capability: f"{status} {body[:120]!r}" for capability, (status, _, body) in answers.items()}
    status, response_headers, body = _put(signed.url, signed.headers, data)
    if not 200 <= status < 300:
        raise NotReady(f"storage refused a correctly signed part ({status} {body[:120]!r}): check the S3 endpoint, "
                       "region and credentials")
    if settings.sse_algorithm:
        applied = response_headers.get("x-amz-server-side-encryption")
        details[Capability.SSE] = f"asked {settings.sse_algorithm}, storage answered {applied}"
        if applied == settings.sse_algorithm:
            enforced.add(Capability.SSE)
    probed = set(answers) | ({Capability.SSE} if settings.sse_algorithm else set())
    return ProbeResult(enforced=frozenset(enforced), missing=frozenset(probed - enforced), details=details)


def _probe_post_policy(s3: BaseClient, settings: StorageSettings, bucket: str, key: str) -> ProbeResult:
    """A POST policy for PROBE_PART_BYTES, sent one byte longer: refused where the server checks the policy's
    `content-length-range` (AWS "Creating a POST Policy"). A server that takes it has made an object: deleted."""
    signer = _signer(settings)
    policy = signer.post_policy(bucket, key, size=PROBE_PART_BYTES, fields=sse_headers(settings), expires_in=300)
    form, content_type = urllib3.encode_multipart_formdata(
        [*policy.fields.items(), ("file", ("probe", os.urandom(PROBE_PART_BYTES + 1)))])
    parts = urlsplit(policy.url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=PROBE_TIMEOUT_SECONDS)
    try:
        connection.request("POST", parts.path, body=form, headers={"Content-Type": content_type})
        response = connection.getresponse()
        status, body = response.status, response.read()
    finally:
        connection.close()
    capability = Capability.POST_POLICY_LENGTH
    if 200 <= status < 300:
        s3.delete_object(Bucket=bucket, Key=key)
    enforced = frozenset({capability}) if 400 <= status < 500 else frozenset()
    return ProbeResult(enforced=enforced, missing=frozenset({capability}) - enforced,
                       details={capability: f"{status} {body[:120]!r}"})


def _put(url: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
    """PUT exactly `body` (its own Content-Length, whatever was signed), as a browser would send it."""
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=PROBE_TIMEOUT_SECONDS)
    sent = {name: value for name, value in headers.items() if name.lower() != "content-length"}
    try:
        connection.request("PUT", f"{parts.path}?{parts.query}", body=body, headers={**sent, "Content-Length":
                                                                                     str(len(body))})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def shortfall(result: ProbeResult, refused: set[Capability] | frozenset[Capability]) -> str:
    """What the server lacks, in words: each guarantee, and for a bucket's configuration what is missing where."""
    return "storage does not enforce " + "; ".join(
        f"{c} ({GUARANTEES[c]}" + (f": {result.details[c]})" if c in _CONFIGURATION_PROBES else ")")
        for c in sorted(refused))


class StorageCheck:
    """/healthz's storage check: the bucket answers, and the server enforces what dropgate relies on.

    The probe runs once per instance (a server's rules do not change under a running pod; a
    fixed server needs new pods), the bucket round trip every time.
    """

    def __init__(self, s3: Callable[[], BaseClient], settings: StorageSettings):
        self._s3 = s3
        self._settings = settings
        self._result: ProbeResult | None = None
        self._lock = threading.Lock()

    def __call__(self) -> str | None:
        check_storage(self._s3(), self._settings.uploads_bucket)
        result = self._probe_once()
        refused = result.missing - self._settings.accept_missing
        if refused:
            raise NotReady(shortfall(result, refused) + ": use a server that does (docs/storage.md), or accept "
                           f"running without it with DROPGATE_STORAGE_ACCEPT_MISSING={','.join(sorted(refused))}")
        if result.missing:
            return "weaker guarantees accepted: " + ", ".join(sorted(result.missing)) + " not enforced"
        return None

    def _probe_once(self) -> ProbeResult:
        with self._lock:
            if self._result is None:
                result = probe_storage(self._s3(), self._settings)
                for capability in Capability:
                    if capability in result.enforced or capability in result.missing:
                        metrics.STORAGE_CAPABILITY.labels(str(capability)).set(capability in result.enforced)
                if result.missing:
                    log_event(logger, "storage lacks capabilities", logging.WARNING,
                              missing=sorted(result.missing), accepted=sorted(self._settings.accept_missing),
                              details={str(c): d for c, d in result.details.items() if c in result.missing})
                self._result = result
            return self._result


def main() -> int:
    """`python -m shared.platform.storage_probe`: the probe as a step of a deploy (manifests/base/jobs/).

    Prints what the server enforces as one JSON line; exits 1 when it lacks a capability the
    settings do not accept (the reason on stderr), 2 on a configuration error.
    """
    import json
    import sys

    from shared.platform.settings import Settings, SettingsError
    from shared.platform.storage import create_s3_client

    try:
        settings = Settings.from_env(["storage"]).storage
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    result = probe_storage(create_s3_client(settings), settings)
    refused = sorted(result.missing - settings.accept_missing)
    print(json.dumps({"enforced": sorted(result.enforced), "missing": sorted(result.missing),
                      "accepted": sorted(result.missing & settings.accept_missing), "refused": refused,
                      "details": {str(c): d for c, d in result.details.items()}}))
    if refused:
        print(shortfall(result, {Capability(c) for c in refused}), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
