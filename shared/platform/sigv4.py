"""A lean AWS Signature Version 4 query-string signer for presigned S3 URLs.

Signing part URLs is presign's hot path (a 1 GiB file at 8 MiB parts is 128
URLs per batch). botocore builds a full request object, runs its event hooks
and re-derives the signing key for every URL; here the day's signing key is
derived once and cached, and a URL is one HMAC over a short string. The output
is byte-for-byte the URL botocore's `generate_presigned_url` produces for the
same inputs and time (tests/test_sigv4.py proves it), so storage sees nothing
different.

Reference: AWS "Authenticating Requests: Using Query Parameters (AWS Signature
Version 4)". S3 object keys are not double-encoded in the canonical URI.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final
from urllib.parse import quote, urlsplit

ALGORITHM: Final = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD: Final = "UNSIGNED-PAYLOAD"
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


@dataclass(frozen=True)
class PresignedUrl:
    url: str
    headers: dict[str, str]  # what the client must send with the request, exactly
    expires_at: datetime


@dataclass(frozen=True)
class PostPolicy:
    """An S3 browser-based upload (POST Object with a policy): where to POST and the form fields to send."""

    url: str
    fields: dict[str, str]  # in the order the form must carry them; the file goes last
    expires_at: datetime


def _quote(value: str) -> str:
    # RFC 3986 unreserved characters stay; everything else is percent-encoded (SigV4 rule).
    return quote(value, safe="-_.~")


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


class PresignSigner:
    """Presigns path-style S3 URLs for one endpoint and one set of credentials."""

    def __init__(self, *, endpoint_url: str, access_key_id: str, secret_access_key: str, region: str,
                 service: str = "s3") -> None:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"endpoint must be an http(s) URL with a host, got {endpoint_url!r}")
        host = parts.hostname
        if parts.port is not None and parts.port != _DEFAULT_PORTS[parts.scheme]:
            host = f"{host}:{parts.port}"
        self._origin = f"{parts.scheme}://{host}"
        self._host = host
        self._base_path = parts.path.rstrip("/")
        self._access_key_id = access_key_id
        self._secret = ("AWS4" + secret_access_key).encode()
        self._region = region
        self._service = service
        self._day_keys: dict[str, bytes] = {}

    def _signing_key(self, day: str) -> bytes:
        key = self._day_keys.get(day)
        if key is None:
            key = _hmac(_hmac(_hmac(_hmac(self._secret, day), self._region), self._service), "aws4_request")
            # One entry per UTC day; keep only the current one (and the one a clock edge may still ask for).
            if len(self._day_keys) > 1:
                self._day_keys.clear()
            self._day_keys[day] = key
        return key

    def presign(self, method: str, bucket: str, key: str, *, query: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, expires_in: int, now: datetime | None = None) -> PresignedUrl:
        """A URL valid for `expires_in` seconds that only works with exactly `headers` sent along."""
        now = (now or datetime.now(UTC)).astimezone(UTC)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        scope = f"{day}/{self._region}/{self._service}/aws4_request"

        signed = {name.lower(): " ".join(str(value).split()) for name, value in (headers or {}).items()}
        signed["host"] = self._host
        signed_names = sorted(signed)
        signed_headers = ";".join(signed_names)

        # The caller's parameters first, then the auth parameters, as botocore orders them.
        params = [(name, str(value)) for name, value in (query or {}).items()]
        params += [
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", f"{self._access_key_id}/{scope}"),
            ("X-Amz-Date", amz_date),
            ("X-Amz-Expires", str(expires_in)),
            ("X-Amz-SignedHeaders", signed_headers),
        ]
        encoded = [(_quote(name), _quote(value)) for name, value in params]
        canonical_query = "&".join(f"{name}={value}" for name, value in sorted(encoded))

        path = f"{self._base_path}/{bucket}/{key}"
        canonical_uri = quote(path, safe="/~")
        canonical_headers = "".join(f"{name}:{signed[name]}\n" for name in signed_names)
        canonical_request = "\n".join(
            (method, canonical_uri, canonical_query, canonical_headers, signed_headers, UNSIGNED_PAYLOAD))
        string_to_sign = "\n".join(
            (ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()))
        signature = hmac.new(self._signing_key(day), string_to_sign.encode(), hashlib.sha256).hexdigest()

        query_string = "&".join(f"{name}={value}" for name, value in encoded)
        url = f"{self._origin}{canonical_uri}?{query_string}&X-Amz-Signature={signature}"
        client_headers = {name: value for name, value in (headers or {}).items()}
        return PresignedUrl(url=url, headers=client_headers, expires_at=now + timedelta(seconds=expires_in))

    def post_policy(self, bucket: str, key: str, *, size: int, fields: dict[str, str],
                    expires_in: int, now: datetime | None = None) -> PostPolicy:
        """A POST policy that lets exactly one object of exactly `size` bytes be stored at `key`, with `fields`.

        Reference: AWS "Authenticating Requests in Browser-Based Uploads Using POST (AWS Signature Version 4)"
        and "Creating a POST Policy": every form field but `policy`, `x-amz-signature` and the file must be
        named by a condition; `content-length-range` bounds the file's length (both ends inclusive); the
        signature is HMAC-SHA256 of the base64 policy with the day's SigV4 signing key.
        """
        now = (now or datetime.now(UTC)).astimezone(UTC)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        credential = f"{self._access_key_id}/{day}/{self._region}/{self._service}/aws4_request"
        form = {"key": key, **fields, "x-amz-algorithm": ALGORITHM, "x-amz-credential": credential,
                "x-amz-date": amz_date}
        expires_at = now + timedelta(seconds=expires_in)
        conditions: list[object] = [{"bucket": bucket}]
        conditions += [{name: value} for name, value in form.items()]
        conditions.append(["content-length-range", size, size])
        document = {"expiration": expires_at.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "conditions": conditions}
        policy = base64.b64encode(json.dumps(document, separators=(",", ":")).encode()).decode()
        signature = hmac.new(self._signing_key(day), policy.encode(), hashlib.sha256).hexdigest()
        return PostPolicy(url=f"{self._origin}{quote(f'{self._base_path}/{bucket}', safe='/~')}",
                          fields={**form, "policy": policy, "x-amz-signature": signature}, expires_at=expires_at)
