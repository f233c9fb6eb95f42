"""The S3 client and the set-up step against real SeaweedFS."""

import hashlib
import os

import pytest
from botocore.exceptions import ClientError

from shared.platform.settings import MIB
from shared.platform.storage import check_storage, create_s3_client, set_up_buckets


def test_set_up_is_idempotent_and_buckets_exist(storage):
    set_up_buckets(storage)  # the stack already ran it once
    assert set_up_buckets(storage) == [
        f"CORS on {storage.uploads_bucket} for {', '.join(storage.allowed_origins)}"]
    client = create_s3_client(storage)
    names = {b["Name"] for b in client.list_buckets()["Buckets"]}
    assert {storage.uploads_bucket, storage.quarantine_bucket} <= names
    check_storage(client, storage.uploads_bucket)


def test_round_trip_keeps_every_byte(storage):
    client = create_s3_client(storage)
    body = os.urandom(3 * MIB + 17)
    client.put_object(Bucket=storage.uploads_bucket, Key="foundation/round-trip.bin", Body=body)
    fetched = client.get_object(Bucket=storage.uploads_bucket, Key="foundation/round-trip.bin")
    assert hashlib.sha256(fetched["Body"].read()).hexdigest() == hashlib.sha256(body).hexdigest()
    assert fetched["ContentLength"] == len(body)
    client.delete_object(Bucket=storage.uploads_bucket, Key="foundation/round-trip.bin")
    with pytest.raises(ClientError) as missing:
        client.head_object(Bucket=storage.uploads_bucket, Key="foundation/round-trip.bin")
    assert missing.value.response["Error"]["Code"] in ("404", "NoSuchKey")


def test_cors_lets_the_web_origin_put_parts_and_read_etag(storage):
    rules = create_s3_client(storage).get_bucket_cors(Bucket=storage.uploads_bucket)["CORSRules"]
    assert len(rules) == 1
    assert set(rules[0]["AllowedOrigins"]) == set(storage.allowed_origins)
    assert "PUT" in rules[0]["AllowedMethods"]
    assert "ETag" in rules[0]["ExposeHeaders"]


def test_wrong_credentials_are_refused(storage):
    from dataclasses import replace

    forged = create_s3_client(replace(storage, secret_access_key="not-the-secret"), max_attempts=1)
    with pytest.raises(ClientError) as refused:
        forged.list_objects_v2(Bucket=storage.uploads_bucket)
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
