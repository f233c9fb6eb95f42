"""`make bench-profile`: where presign's time goes under the control-plane load (issue #21's first step).

A local stack (PostgreSQL, SeaweedFS) and one presign as `dropgate-dev up` runs it; N clients, each
on its own keep-alive connection, repeat what Uppy's S3 plugin does per file: create a 1 GiB upload,
ask for its part URLs one part per request, abort. Meanwhile `py-spy record` samples presign's
processes (the gunicorn master and its workers, `--subprocesses`, `--nonblocking` so that the
sampler never pauses a request) twice over: every thread that is not idle ("wall": a thread waiting
on PostgreSQL is a request waiting), and only the thread holding the GIL ("CPU": Python's own work).

Writes, next to the other results in bench/results/:
- `<date>-presign-profile.svg`: the flame graph of the wall samples;
- `<date>-presign-profile.txt`: the share of samples under each part of the request path (token
  checks, database, SigV4, the HTTP framework, logging, JSON), counted once per sample however
  deep the frame sits, plus the heaviest leaf functions, and the request counts and rates.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from dropgate_local.stack import LocalStack, StackPorts

from bench.peers import Http, dev_token, start_presign

RESULTS = Path(__file__).with_name("results")
GIB = 1024 * 1024 * 1024
# The parts of the request path, by the module a frame comes from (first match wins, in this order).
AREAS = (
    ("token check (PyJWT, JWKS, crypto)", ("jwt/", "cryptography/", "shared/platform/auth.py")),
    ("database (psycopg, pool)", ("psycopg/", "psycopg_pool/", "psycopg_binary/")),
    ("SigV4 part URLs", ("shared/platform/sigv4.py",)),
    ("storage calls (botocore)", ("botocore/", "boto3/", "urllib3/")),
    ("logging and metrics", ("logging/", "shared/platform/logs.py", "prometheus_client/")),
    ("JSON", ("json/",)),
    ("HTTP framework (gunicorn, flask, werkzeug)", ("gunicorn/", "flask/", "werkzeug/", "functions_framework/")),
)


def drive(url: str, token: str, clients: int, seconds: float, parts_per_file: int) -> collections.Counter:
    """Clients that create, sign part by part and abort until `seconds` are up; counts of each call."""
    counts: collections.Counter = collections.Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    auth = {"Authorization": f"Bearer {token}"}

    def client() -> None:
        http = Http(url)
        while time.monotonic() < deadline:
            status, _, body = http.request("POST", "/uploads", headers=auth, json_body={
                "filename": f"{uuid.uuid4()}.bin", "size": GIB, "content_type": "application/octet-stream"})
            mine = collections.Counter({f"create {status}": 1})
            if status == 201:
                upload_id = json.loads(body)["id"]
                for number in range(1, parts_per_file + 1):
                    status, _, _ = http.request("POST", f"/uploads/{upload_id}/parts", headers=auth,
                                                json_body={"parts": [{"number": number}]})
                    mine[f"sign {status}"] += 1
                status, _, _ = http.request("DELETE", f"/uploads/{upload_id}", headers=auth)
                mine[f"abort {status}"] += 1
            with lock:
                counts.update(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts


def areas(raw: Path) -> tuple[int, collections.Counter, collections.Counter]:
    """(samples, samples per area, samples per leaf function) from py-spy's collapsed stacks."""
    total, per_area, leaves = 0, collections.Counter(), collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        for name, markers in AREAS:
            if any(marker in frame for frame in frames for marker in markers):
                per_area[name] += count
                break
        else:
            per_area["other"] += count
        leaves[frames[-1]] += count
    return total, per_area, leaves


def report(wall: Path, cpu: Path, counts: collections.Counter, seconds: float, command: str) -> str:
    wall_total, wall_areas, wall_leaves = areas(wall)
    cpu_total, cpu_areas, cpu_leaves = areas(cpu)
    lines = [f"presign profile, {datetime.now(UTC).isoformat(timespec='seconds')}", f"command: {command}",
             f"calls in {seconds:.0f} s: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
             f"rate: {sum(counts.values()) / seconds:.0f} calls/s",
             f"py-spy samples: {wall_total} wall, {cpu_total} CPU (GIL held)", "",
             "| part of the request path | wall (waits included) | CPU (GIL held) |", "| --- | --- | --- |"]
    names = [name for name, _ in (wall_areas + cpu_areas).most_common()]
    lines += [f"| {name} | {100 * wall_areas[name] / max(wall_total, 1):.1f}% | "
              f"{100 * cpu_areas[name] / max(cpu_total, 1):.1f}% |" for name in names]
    for title, total, leaves in (("wall", wall_total, wall_leaves), ("CPU", cpu_total, cpu_leaves)):
        lines += ["", f"heaviest leaf functions, {title}:"]
        lines += [f"  {100 * n / max(total, 1):5.1f}%  {leaf}" for leaf, n in leaves.most_common(12)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="profile presign under Uppy-style part signing")
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--parts", type=int, default=32, help="part URLs asked for per file, one per request")
    args = parser.parse_args(argv)
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        print("py-spy is missing: pip install -e '.[bench]' (make bench-profile does)", file=sys.stderr)
        return 2
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    RESULTS.mkdir(exist_ok=True)
    svg, text = RESULTS / f"{stamp}-presign-profile.svg", RESULTS / f"{stamp}-presign-profile.txt"
    with tempfile.TemporaryDirectory(prefix="dropgate-profile-") as tmp:
        stack = LocalStack(Path(tmp), StackPorts.allocate())
        try:
            stack.start_postgres()
            stack.start_storage(webhook=False)
            presign = start_presign(stack, "presign-profile")
            token = dev_token(stack, f"profile-{uuid.uuid4().hex[:8]}")
            wall, cpu = Path(tmp) / "wall.raw", Path(tmp) / "cpu.raw"
            record = ["record", "--pid", str(presign.process.pid), "--subprocesses", "--nonblocking", "--rate",
                      "200", "--duration", str(int(args.seconds))]
            spies = [subprocess.Popen([str(spy), *record, *extra, "--output", str(out)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for extra, out in ((["--format", "flamegraph"], svg), (["--format", "raw"], wall),
                                        (["--format", "raw", "--gil"], cpu))]
            time.sleep(1)  # py-spy attached before the first request
            counts = drive(presign.url, token, args.clients, args.seconds, args.parts)
            for process in spies:
                process.wait(timeout=120)
            command = "python -m bench.profile " + " ".join(argv if argv is not None else sys.argv[1:])
            table = report(wall, cpu, counts, args.seconds, command)
        finally:
            stack.stop()
    text.write_text(table)
    print(table)
    print(f"flame graph: {svg.relative_to(Path.cwd()) if svg.is_relative_to(Path.cwd()) else svg}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
