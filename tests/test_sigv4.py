"""The lean signer's URLs are byte-for-byte botocore's for the same inputs and time."""

from __future__ import annotations

import datetime as dt
from unittest import mock

import boto3
import pytest
from botocore.config import Config

from shared.platform.sigv4 import PresignSigner

NOW = dt.datetime(2026, 11, 25, 13, 43, 38, tzinfo=dt.UTC)
SHA = "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg="


def botocore_url(endpoint: str, region: str, operation: str, params: dict, expires: int, now: dt.datetime) -> str:
    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=region, aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                      request_checksum_calculation="when_required"))
    # botocore reads the clock here; freezing it is the only way to compare signatures.
    with mock.patch("botocore.auth.get_current_datetime", return_value=now.replace(tzinfo=None)):
        return client.generate_presigned_url(operation, Params=params, ExpiresIn=expires)


def lean_signer(endpoint: str, region: str) -> PresignSigner:
    return PresignSigner(endpoint_url=endpoint, access_key_id="AKIDEXAMPLE",
                         secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", region=region)


KEYS = ["uploads/2026/11/25/0b8f6a3e-1d7c-4a55-9f0e-2a6c1b9d7e10", "dir/a b+c~ü.bin", "ñ/€/😀 (1).txt",
        "weird!*'();:@&=+$,?#[]", "trailing/slash/"]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("checksum", [None, SHA])
@pytest.mark.parametrize(("endpoint", "region"), [("http://127.0.0.1:8806", "us-east-1"),
                                                  ("https://minio.example.org", "eu-central-1"),
                                                  ("https://s3.example.org:9443", "us-west-2")])
def test_upload_part_url_is_botocores(key: str, checksum: str | None, endpoint: str, region: str) -> None:
    params = {"Bucket": "dropgate-uploads", "Key": key, "UploadId": "2~abc/DEF+ghi=", "PartNumber": 17,
              "ContentLength": 8 * 1024 * 1024}
    headers = {"Content-Length": str(8 * 1024 * 1024)}
    if checksum:
        params["ChecksumSHA256"] = checksum
        headers["x-amz-checksum-sha256"] = checksum
    expected = botocore_url(endpoint, region, "upload_part", params, 900, NOW)
    signed = lean_signer(endpoint, region).presign(
        "PUT", "dropgate-uploads", key, query={"uploadId": "2~abc/DEF+ghi=", "partNumber": "17"},
        headers=headers, expires_in=900, now=NOW)
    assert signed.url == expected
    assert signed.expires_at == NOW + dt.timedelta(seconds=900)
    assert signed.headers == headers


def test_download_url_with_response_overrides_is_botocores() -> None:
    disposition = "attachment; filename=\"report.pdf\"; filename*=UTF-8''r%C3%A9port.pdf"
    expected = botocore_url("http://127.0.0.1:8806", "us-east-1", "get_object",
                            {"Bucket": "b-1", "Key": "k/1", "ResponseContentDisposition": disposition,
                             "ResponseContentType": "application/pdf"}, 300, NOW)
    signed = lean_signer("http://127.0.0.1:8806", "us-east-1").presign(
        "GET", "b-1", "k/1", query={"response-content-disposition": disposition,
                                    "response-content-type": "application/pdf"}, expires_in=300, now=NOW)
    assert signed.url == expected


def test_signing_key_cache_follows_the_utc_day() -> None:
    """A URL signed just after midnight must use the new day's key, not yesterday's cached one."""
    signer = lean_signer("http://127.0.0.1:8806", "us-east-1")
    for now in (NOW, NOW + dt.timedelta(days=1), NOW + dt.timedelta(days=2), NOW):
        params = {"Bucket": "b-1", "Key": "k", "UploadId": "u", "PartNumber": 1, "ContentLength": 5}
        expected = botocore_url("http://127.0.0.1:8806", "us-east-1", "upload_part", params, 60, now)
        signed = signer.presign("PUT", "b-1", "k", query={"uploadId": "u", "partNumber": "1"},
                                headers={"Content-Length": "5"}, expires_in=60, now=now)
        assert signed.url == expected


def test_rejects_an_endpoint_without_scheme() -> None:
    with pytest.raises(ValueError, match="http"):
        PresignSigner(endpoint_url="127.0.0.1:8806", access_key_id="a", secret_access_key="b", region="r")
