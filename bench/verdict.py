"""Time to verdict: from presign's `complete` answer to the upload reading `clean`, through the
whole local pipeline (filer webhook -> storage_events -> broker -> scan -> verdict), for
small and large files. The baseline is clamd alone scanning the same bytes from a local file:
what any scanner must spend at least, with no storage, events or database in the loop."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

import clamd

from dropgate_local.devauth import DevSigningKey, issuer_url
from dropgate_local.stack import FUNCTIONS, HOST, LocalStack
from bench.load import _request

MIB = 1024 * 1024


def _upload(presign: str, token: str, path: Path, size: int) -> tuple[str, float]:
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    status, _, raw = _request("POST", f"{presign}/uploads", body=json.dumps(
        {"filename": path.name, "size": size, "content_type": "application/octet-stream"}).encode(), headers=auth)
    assert status == 201, raw
    upload = json.loads(raw)
    numbers = list(range(1, upload["part_count"] + 1))
    status, _, raw = _request("POST", f"{presign}/uploads/{upload['id']}/parts", headers=auth,
                              body=json.dumps({"parts": [{"number": n} for n in numbers]}).encode())
    assert status == 200, raw
    etags = []
    with path.open("rb") as source:
        for part in json.loads(raw)["parts"]:
            source.seek((part["number"] - 1) * upload["part_size"])
            chunk = source.read(upload["part_size"])
            status, headers, raw = _request("PUT", part["url"], body=chunk)
            assert status == 200, raw
            etags.append({"number": part["number"], "etag": headers["etag"]})
    status, _, raw = _request("POST", f"{presign}/uploads/{upload['id']}/complete", headers=auth,
                              body=json.dumps({"parts": etags}).encode())
    assert status == 200, raw
    return upload["id"], time.perf_counter()


def _wait_clean(presign: str, token: str, upload_id: str, timeout: float = 900) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        request = urllib.request.Request(f"{presign}/uploads/{upload_id}", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback only
            status = json.loads(response.read())["status"]
        if status == "clean":
            return time.perf_counter()
        if status in ("infected", "rejected", "unscannable"):
            raise AssertionError(f"benchmark file ended {status}")
        time.sleep(0.05)
    raise TimeoutError(upload_id)


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
