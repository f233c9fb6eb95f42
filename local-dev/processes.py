"""Child processes of the local stack: start, wait until ready, stop together.

Each child runs in its own process group with its output in a log file, so
Ctrl-C on the stack (or a test session ending) stops every child and its
children, and a failing child leaves a log to read.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path


class StartupError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback only
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class ChildProcess:
    name: str
    argv: list[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> ChildProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        env = dict(os.environ if self.env is None else self.env)
        self.process = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=self.cwd, start_new_session=True,
        )
        log.close()
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise StartupError(f"{self.name} exited with code {self.process.returncode}; "
                                   f"last log lines:\n{self.tail()}")
            if ready():
                return
            time.sleep(0.2)
        raise StartupError(f"{self.name} not ready after {timeout:.0f}s; last log lines:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def signal(self, signum: int) -> None:
        if self.running:
            try:
                os.killpg(self.process.pid, signum)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole group, SIGKILL what is left after the timeout."""
        if self.process is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.process.wait(5)
        # Children that left the group's leader behind still get the signal.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would."""
        self.signal(signal.SIGKILL)
        if self.process:
            self.process.wait(5)


def serving_worker(port: int) -> "psutil.Process":
    """The gunicorn worker serving `port`: functions-framework forks one; its master only supervises."""
    import psutil  # a test and benchmark dependency, not a runtime one

    for connection in psutil.net_connections("tcp"):
        if connection.laddr and connection.laddr.port == port and connection.status == psutil.CONN_LISTEN:
            master = psutil.Process(connection.pid)
            return (master.children() or [master])[0]
    raise LookupError(f"nothing listens on {port}")


class PeakRss:
    """`with PeakRss(process) as rss:` samples the process's resident memory until the block ends."""

    def __init__(self, process: "psutil.Process", interval: float = 0.05) -> None:
        self._process, self._interval = process, interval
        self.baseline = self.peak = process.memory_info().rss

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._done.wait(self._interval)

    def __enter__(self) -> "PeakRss":
        # A fresh thread each time, so one PeakRss can watch several blocks (the peak is over all of them).
        import threading

        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def serve_until_interrupted(server) -> int:  # noqa: ANN001 - any socketserver
    """Run a small local server in the foreground until Ctrl-C or SIGTERM's KeyboardInterrupt."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0
