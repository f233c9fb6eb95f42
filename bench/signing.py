"""Part-URL signing: dropgate's lean SigV4 signer against boto3's generate_presigned_url.

Both sign the same 128 UploadPart URLs (a 1 GiB file at 8 MiB parts), each bound
to its Content-Length and SHA-256, in the same process and run, alternating
rounds (ABBA) so machine noise hits both alike. Prints the median cost per URL with its
min–max and the per-round ratio. Run: `make bench-signing` or `.venv/bin/python -m bench.signing [--rounds N]`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import time

import boto3
from botocore.config import Config

from bench import stats
from shared.platform.sigv4 import PresignSigner

PARTS = 128
PART_SIZE = 8 * 1024 * 1024
ENDPOINT = "http://127.0.0.1:8806"
BUCKET = "dropgate-uploads"
KEY = "uploads/2026/11/25/0b8f6a3e-1d7c-4a55-9f0e-2a6c1b9d7e10"
UPLOAD_ID = "6b1e0d6f3c2a4b8e9d7c5a3f1e2d4c6b_0e9c8b7a-6f5e-4d3c-2b1a-0f9e8d7c6b5a"
CHECKSUMS = [base64.b64encode(hashlib.sha256(str(n).encode()).digest()).decode() for n in range(1, PARTS + 1)]


def sign_with_boto3(client) -> list[str]:
    return [client.generate_presigned_url("upload_part", ExpiresIn=900, Params={
        "Bucket": BUCKET, "Key": KEY, "UploadId": UPLOAD_ID, "PartNumber": n, "ContentLength": PART_SIZE,
        "ChecksumSHA256": CHECKSUMS[n - 1]}) for n in range(1, PARTS + 1)]


def sign_with_dropgate(signer: PresignSigner) -> list[str]:
    return [signer.presign("PUT", BUCKET, KEY, query={"uploadId": UPLOAD_ID, "partNumber": str(n)},
                           headers={"Content-Length": str(PART_SIZE), "x-amz-checksum-sha256": CHECKSUMS[n - 1]},
                           expires_in=900).url for n in range(1, PARTS + 1)]


def per_url_microseconds(sign, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        sign()
        samples.append((time.perf_counter() - start) / PARTS * 1e6)
    return samples


def measure(rounds: int = 30) -> dict:
    """One table row: microseconds per URL for both signers, alternating which signs first (ABBA)."""
    client = boto3.session.Session().client(
        "s3", endpoint_url=ENDPOINT, region_name="us-east-1", aws_access_key_id="bench",
        aws_secret_access_key="bench-secret",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                      request_checksum_calculation="when_required"))
    signer = PresignSigner(endpoint_url=ENDPOINT, access_key_id="bench", secret_access_key="bench-secret",
                           region="us-east-1")
    sign_with_boto3(client), sign_with_dropgate(signer)  # warm up caches and imports
    samples: dict[str, list[float]] = {"boto3": [], "dropgate": []}
    signers = {"boto3": lambda: sign_with_boto3(client), "dropgate": lambda: sign_with_dropgate(signer)}
    for round_number in range(rounds):  # alternate, so noise falls on both
        for name in stats.abba(round_number, "dropgate", "boto3"):
            samples[name] += per_url_microseconds(signers[name], 1)
    ratios = stats.paired_ratios(samples["boto3"], samples["dropgate"])  # durations: theirs / ours
    return stats.row(f"part-URL signing in process, per URL ({PARTS}-part batch)",
                     stats.show(samples["dropgate"], "{:.1f}", " µs"),
                     stats.show(samples["boto3"], "{:.1f}", " µs") + " (boto3 generate_presigned_url)",
                     ratios=ratios, target="≥ 10×", met=stats.at_least(stats.median(ratios), 10),
                     values={"dropgate_us": samples["dropgate"], "boto3_us": samples["boto3"], "rounds": rounds})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="batches of 128 URLs per signer (default 30)")
    args = parser.parse_args(argv)
    row = measure(args.rounds)
    print(f"{row['name']}: dropgate {row['dropgate']}, baseline {row['baseline']}, ratio {stats.ratio_cell(row)}, "
          f"target {row['target']}: {stats.met_cell(row['met'])}")
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
