"""dropgate beside its peers, in the same run, against the same SeaweedFS (issue #21).

The peers are npm packages pinned in bench/peers/package.json (+ package-lock.json) and installed by
the bench itself (`npm ci`) into bench/peers/node_modules, which git ignores; each runs as a real
Node.js process on 127.0.0.1. companion.py measures @uppy/companion's S3 multipart routes against
presign; tus.py measures @tus/server + @tus/s3-store against dropgate's direct-to-storage data plane.
This file holds what both need: the install, the node processes, a keep-alive HTTP client, process
CPU counters, presign started as bench/load.py starts it, and the rows' arithmetic.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dropgate_local.devauth import DevSigningKey, issuer_url
from dropgate_local.processes import ChildProcess, StartupError, free_port
from dropgate_local.stack import HOST, LocalStack, StackPorts

PEERS_DIR = Path(__file__).resolve().parent
NODE_MODULES = PEERS_DIR / "node_modules"
_STAMP = NODE_MODULES / ".dropgate-installed"
MIN_NODE = (20, 19)  # @uppy/companion 6 and @tus/* 2 declare node >= 20.19 in their package.json "engines"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- the peers' packages --

def ensure_installed() -> None:
    """`npm ci` from the lockfile when node_modules does not match it (the stamp is the lockfile's SHA-256),
    as local-dev/bootstrap.sh does for the uploader page."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise StartupError("node and npm are needed for the peers (Debian: apt-get install nodejs npm)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if tuple(int(x) for x in version.lstrip("v").split(".")[:2]) < MIN_NODE:
        raise StartupError(f"node {version} is too old for the peers: they need >= {'.'.join(map(str, MIN_NODE))}")
    wanted = hashlib.sha256((PEERS_DIR / "package-lock.json").read_bytes()).hexdigest()
    if _STAMP.exists() and _STAMP.read_text().strip() == wanted:
        return
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PEERS_DIR, check=True)
    _STAMP.write_text(wanted + "\n")


def package_version(name: str) -> str:
    return json.loads((NODE_MODULES / name / "package.json").read_text())["version"]


def start_node(name: str, argv: list[str], env: dict[str, str], log_dir: Path, ready_url: str) -> ChildProcess:
    """A node process in its own process group (ChildProcess.stop kills the group), up once `ready_url` answers."""
    child = ChildProcess(name, [shutil.which("node") or "node", *argv], log_dir / f"{name}.log",
                         env={**os.environ, **env}, cwd=PEERS_DIR).start()
    try:
        child.wait_until(lambda: answers(ready_url), timeout=60)
    except BaseException:
        child.stop()
        raise
    return child


def answers(url: str) -> bool:
    """Whether anything serves HTTP at `url` (any status is an answer)."""
    probe = Http(url, timeout=2)
    try:
        probe.request("GET", urlsplit(url).path or "/")
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        probe.close()


# -- presign, as bench/load.py starts it --

@dataclass
class Presign:
    url: str
    process: ChildProcess


def start_presign(stack: LocalStack, label: str) -> Presign:
    """Needs PostgreSQL and storage started. Limits opened up as bench/load.py opens them, so the per-user
    quotas (which are real work presign does on every call) never refuse the bench's many uploads."""
    stack.start_dev_oidc()
    port = free_port()
    child = stack.start_function("presign", port=port, label=label, extra_env={
        "DROPGATE_MAX_OPEN_UPLOADS": "100000", "DROPGATE_RATE_LIMIT_PER_MINUTE": "1000000",
        "DROPGATE_MAX_BYTES_PER_DAY": "100000GiB", "DROPGATE_DB_POOL_MAX": "20"})
    return Presign(url=f"http://{HOST}:{port}", process=child)


def dev_token(stack: LocalStack, subject: str) -> str:
    key = DevSigningKey.load_or_create(stack.data_dir / "dev-oidc")
    return key.mint(subject=subject, roles=["uploader"], issuer=issuer_url(HOST, stack.ports.dev_oidc),
                    ttl_seconds=4 * 3600)


# -- HTTP: one keep-alive connection per server, as a browser holds one --

class Http:
    """A small keep-alive client (http.client): the same code talks to presign and to the peers, so the
    client's own cost is the same on both sides. One instance per thread."""

    def __init__(self, base_url: str, timeout: float = 120) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or HOST, parts.port or 80
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, *, body=None, headers: dict[str, str] | None = None,
                json_body=None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body). `body` may be bytes or an iterable of bytes
        (then the caller sets Content-Length, and the pieces are streamed)."""
        headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers.setdefault("Content-Type", "application/json")
        for attempt in (1, 2):
            conn = self._conn or http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._conn = conn
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # The server closed an idle keep-alive connection: retry once on a new one, only when
                # the body can be sent again (bytes, not a stream already consumed).
                self.close()
                if attempt == 2 or not (body is None or isinstance(body, bytes)):
                    raise
                continue
            if response.will_close:
                self.close()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# -- CPU counters --

def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants now (a gunicorn master and its worker; postgres and its backends)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += parents.get(current, [])
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes from /proc/<pid>/stat (fields 14 and 15), in seconds.
    A process that exited in between is simply missing: measure over processes that live throughout."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # fields 14, 15 counted from 1, after "pid (comm)"
    return total / CLOCK_TICKS


def postgres_pid(stack: LocalStack) -> int | None:
    """The embedded postmaster (first line of postmaster.pid); None when DATABASE_URL points elsewhere."""
    if stack.postgres is None:
        return None
    return int((Path(stack.postgres.server.pgdata) / "postmaster.pid").read_text().split()[0])


# -- rows --

def spread(values: list[float], unit: float = 1000, fmt: str = "{:.1f}") -> str:
    """'median (min–max)' of seconds, in ms by default."""
    return (f"{fmt.format(statistics.median(values) * unit)} ({fmt.format(min(values) * unit)}–"
            f"{fmt.format(max(values) * unit)})")


def row(name: str, dropgate: str, baseline: str, ratio: float, target: str | None, threshold: float | None) -> dict:
    """A table row as bench/run.py prints it; ratio > 1 means dropgate is faster or cheaper."""
    return {"name": name, "dropgate": dropgate, "baseline": baseline, "ratio": ratio, "target": target,
            "met": None if threshold is None else ratio >= threshold}


def interleaved(contenders: list, rounds: int) -> list[list]:
    """The order of each round: forwards, then backwards (A B C, C B A, ...), so drift hits all alike."""
    return [list(contenders) if i % 2 == 0 else list(reversed(contenders)) for i in range(rounds)]


def print_rows(rows: list[dict]) -> None:
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}×"
        print(f"- {r['name']}\n    dropgate: {r['dropgate']}\n    baseline: {r['baseline']}\n"
              f"    ratio: {ratio}  target: {r['target'] or '—'}  met: {r['met']}")


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def tree_cpu_seconds(root: int) -> float:
    """CPU of `root` and its live descendants, plus what its reaped children used (cutime + cstime of the
    root): a child that exits between two readings (a PostgreSQL backend, an autovacuum worker) still counts."""
    try:
        fields = Path(f"/proc/{root}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    reaped = (int(fields[13]) + int(fields[14])) / CLOCK_TICKS  # fields 16, 17
    return cpu_seconds(process_tree(root)) + reaped


def run_alone(measure: Callable[[LocalStack], list[dict]]) -> int:
    """A peer's module on its own (`python -m bench.peers.<name>`): a stack with PostgreSQL and storage,
    the rows printed, every process stopped."""
    with tempfile.TemporaryDirectory(prefix="dropgate-peers-") as tmp:
        stack = LocalStack(Path(tmp), StackPorts.allocate())
        try:
            stack.start_postgres()
            stack.start_storage(webhook=False)
            rows = measure(stack)
        finally:
            stack.stop()
    print_rows(rows)
    return 0
