"""Time to verdict: from presign's `complete` answer to the upload reading `clean`, through the
whole local pipeline (filer webhook -> storage_events -> broker -> scan -> verdict), for
small and large files. The baseline is clamd alone scanning the same bytes from a local file:
what any scanner must spend at least, with no storage, events or database in the loop."""

from __future__ import annotations

import os
import time
from pathlib import Path

import clamd

from dropgate_local.client import DropgateClient
from dropgate_local.devauth import DevSigningKey, issuer_url
from dropgate_local.stack import FUNCTIONS, HOST, LocalStack

MIB = 1024 * 1024


def _upload(presign: str, token: str, path: Path, size: int) -> tuple[str, float]:
    """Upload a file part by part from disk (a 1 GiB file is never held whole); its id and when complete answered."""
    def read_part(number: int, part_size: int) -> bytes:
        with path.open("rb") as source:
            source.seek((number - 1) * part_size)
            return source.read(part_size)

    uploaded = DropgateClient(presign, token, timeout=300).upload_from(filename=path.name, size=size,
                                                                       read_part=read_part)
    return uploaded.record["id"], time.perf_counter()


def _wait_clean(presign: str, token: str, upload_id: str, timeout: float = 900) -> float:
    # Asked every 50 ms: the time to verdict of a 25 MiB file is well under a second.
    final = DropgateClient(presign, token, timeout=30).wait_for(upload_id, timeout=timeout, poll=0.05)
    if final["status"] != "clean":
        raise AssertionError(f"benchmark file ended {final['status']}")
    return time.perf_counter()


def measure(stack: LocalStack, *, sizes_mib: list[int]) -> list[dict]:
    """Starts the whole local stack on `stack`."""
    stack.start_all()
    presign = stack.ports.function_url("presign")
    assert set(FUNCTIONS) <= set(stack.children)
    key = DevSigningKey.load_or_create(stack.data_dir / "dev-oidc")
    token = key.mint(subject="bench-verdict", roles=["uploader"], issuer=issuer_url(HOST, stack.ports.dev_oidc))
    rows = []
    for size_mib in sizes_mib:
        path = stack.data_dir / f"verdict-{size_mib}.bin"
        with path.open("wb") as out:
            block = os.urandom(MIB)
            for _ in range(size_mib):
                out.write(block)
        path.chmod(0o644)
        upload_id, completed_at = _upload(presign, token, path, size_mib * MIB)
        seconds = _wait_clean(presign, token, upload_id) - completed_at
        start = time.perf_counter()
        result = clamd.ClamdNetworkSocket(HOST, stack.ports.clamd, timeout=900).scan(str(path))
        clamd_seconds = time.perf_counter() - start
        assert next(iter(result.values()))[0] == "OK", result
        path.unlink()
        rows.append({"name": f"time to verdict, {size_mib} MiB (complete -> clean, whole pipeline)",
                     "dropgate": f"{seconds:.2f} s", "baseline": f"{clamd_seconds:.2f} s (clamd SCAN of a local file)",
                     "ratio": clamd_seconds / seconds})
    return rows
