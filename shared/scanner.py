"""Streaming virus scan through clamd's INSTREAM command.

We use the `clamd` package's client class (address, timeout, the rest of its
commands), but not its `instream()`: that sends 1 KiB chunks with
`socket.send` (a short write silently corrupts the stream), reads from a file
object, and keeps one socket on the instance, which the threads of one
function instance would share. `StreamingClamd` speaks INSTREAM itself on a
connection of its own per call, sending bounded chunks from any iterable with
`sendall`, so an object is never held whole in memory.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import clamd

from shared.settings import ClamdSettings

# clamd answers this when the stream passes its StreamMaxLength.
_SIZE_LIMIT_REPLY = "INSTREAM size limit exceeded. ERROR"


class ScannerUnavailable(ConnectionError):
    """clamd could not be reached or broke off: the scan must be retried, never guessed."""


@dataclass(frozen=True)
class ScanResult:
    outcome: Literal["clean", "infected", "limit_exceeded", "error"]
    signature: str | None = None  # the virus name when infected
    detail: str | None = None     # clamd's words when it could not decide
    bytes_scanned: int = 0


class StreamingClamd(clamd.ClamdNetworkSocket):
    """Thread-safe: every call opens its own connection (the package keeps one socket on the
    instance, which concurrent requests of one function instance would share)."""

    def _connect(self) -> socket.socket:
        # The package sets its timeout only after connect(); a dead host would hang.
        try:
            return socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise ScannerUnavailable(f"clamd at {self.host}:{self.port}: {exc}") from exc

    def ping(self) -> str:
        with self._connect() as connection:
            connection.sendall(b"nPING\n")
            return _read_line(connection)

    def scan_chunks(self, chunks: Iterable[bytes]) -> ScanResult:
        sent = 0
        with self._connect() as connection:
            try:
                connection.sendall(b"nINSTREAM\n")
                for chunk in chunks:
                    if not chunk:
                        continue
                    connection.sendall(struct.pack("!L", len(chunk)) + chunk)
                    sent += len(chunk)
                connection.sendall(struct.pack("!L", 0))
                reply = _read_line(connection)
            except OSError as exc:
                if isinstance(exc, BrokenPipeError | ConnectionResetError):
                    # clamd closes the stream when StreamMaxLength is passed; its
                    # reply may still be readable.
                    reply = _try_read_line(connection)
                    if reply == _SIZE_LIMIT_REPLY:
                        return ScanResult("limit_exceeded", detail=reply, bytes_scanned=sent)
                raise ScannerUnavailable(f"clamd at {self.host}:{self.port}: {exc}") from exc
        if not reply:
            raise ScannerUnavailable(f"clamd at {self.host}:{self.port} closed the connection without a verdict")
        return _interpret(reply, sent)


def _read_line(connection: socket.socket) -> str:
    with contextlib.closing(connection.makefile("rb")) as reader:
        return reader.readline().decode("utf-8", "replace").strip()


def _try_read_line(connection: socket.socket) -> str | None:
    try:
        return _read_line(connection)
    except OSError:
        return None


def _interpret(reply: str, sent: int) -> ScanResult:
    if reply == _SIZE_LIMIT_REPLY:
        return ScanResult("limit_exceeded", detail=reply, bytes_scanned=sent)
    # Replies look like "stream: OK", "stream: Eicar-Signature FOUND", "stream: ... ERROR".
    _, _, verdict = reply.partition(": ")
    if verdict == "OK":
        return ScanResult("clean", bytes_scanned=sent)
    if verdict.endswith(" FOUND"):
        return ScanResult("infected", signature=verdict.removesuffix(" FOUND"), bytes_scanned=sent)
    return ScanResult("error", detail=reply, bytes_scanned=sent)


def create_scanner(settings: ClamdSettings) -> StreamingClamd:
    return StreamingClamd(host=settings.host, port=settings.port, timeout=settings.timeout_seconds)


def check_clamd(scanner: StreamingClamd) -> None:
    """Health check: clamd answers PING."""
    if scanner.ping() != "PONG":
        raise ScannerUnavailable("clamd did not answer PONG")


def iter_chunks(stream, chunk_size: int) -> Iterable[bytes]:
    """Read a file-like object (e.g. a boto3 StreamingBody) in bounded chunks."""
    while True:
        chunk = stream.read(chunk_size)
        if not chunk:
            return
        yield chunk
