"""Streaming virus scan through clamd's INSTREAM command.

`StreamingClamd` speaks the few clamd commands dropgate sends (PING, VERSION, RELOAD, INSTREAM)
itself, on a connection of its own per call, sending bounded chunks from any iterable with
`sendall`, so an object is never held whole in memory. It does not build on the `clamd`
package's client: its `instream()` sends 1 KiB chunks with `socket.send` (a short write
silently corrupts the stream), reads from a file object, and keeps one socket on the
instance, which the threads of one function instance would share; and importing the package
imports `pkg_resources` (~200 ms of every cold start) only to read its own version.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from shared.platform.settings import ClamdSettings

# clamd answers this when the stream passes its StreamMaxLength.
_SIZE_LIMIT_REPLY = "INSTREAM size limit exceeded. ERROR"


class ScannerUnavailable(ConnectionError):
    """clamd could not be reached or broke off: the scan must be retried, never guessed."""


# clamd names what it could not fully scan with these prefixes when AlertExceedsMax / AlertEncrypted
# are on (clamd.conf(5): "files exceeding the MaxFileSize, MaxScanSize, or MaxRecursion limit will be
# flagged with the virus name starting with Heuristics.Limits.Exceeded"; clamav's
# libclamav/scanners.c and others report Heuristics.Encrypted.Zip/.RAR/.7Zip/.PDF). They mean "clamd
# stopped looking", not "malware found": dropgate calls them unscannable, never infected nor clean.
_LIMIT_PREFIX: Final = "Heuristics.Limits.Exceeded."
_ENCRYPTED_PREFIX: Final = "Heuristics.Encrypted."


def _unscannable_reason(signature: str, limits: ClamdSettings | None) -> str | None:
    """The owner-facing sentence for a heuristic that means "not fully scanned", None for a real detection."""
    name = signature.removesuffix(".UNOFFICIAL")
    if name.startswith(_ENCRYPTED_PREFIX):
        what = name.removeprefix(_ENCRYPTED_PREFIX)
        return f"encrypted {what} content cannot be scanned"
    if not name.startswith(_LIMIT_PREFIX):
        return None
    limit = name.removeprefix(_LIMIT_PREFIX)
    if limits is None:
        return f"the scanner stopped at its {limit} limit"
    return {
        "MaxRecursion": f"archive nested deeper than {limits.max_recursion} levels",
        "MaxFiles": f"archive holds more than {limits.max_files} files",
        "MaxFileSize": f"a file inside is larger than the {limits.max_file_size} bytes the scanner reads",
        "MaxScanSize": f"the content unpacks to more than the {limits.max_scan_size} bytes the scanner reads",
        "MaxScanTime": f"scanning took longer than {limits.max_scan_time_ms // 1000} seconds",
    }.get(limit, f"the scanner stopped at its {limit} limit")


@dataclass(frozen=True)
class ClamdReply:
    """What clamd answered for one INSTREAM (scanning.ScanResult is the verdict dropgate records)."""

    outcome: Literal["clean", "infected", "unscannable", "error"]
    signature: str | None = None  # the virus name when infected, clamd's heuristic name when unscannable
    detail: str | None = None     # why it could not decide, in words for the owner (unscannable, error)
    bytes_scanned: int = 0


@dataclass(frozen=True)
class Signatures:
    """clamd's signature database as `VERSION` describes it.

    clamd answers "ClamAV 1.4.6/27490/Tue Dec  1 09:21:02 2026" (docs/manual/Usage/Scanning.md,
    "VERSION"): engine, daily database version, its build time (ctime format, clamd's local time,
    UTC in its container); without a versioned database only "ClamAV 1.4.6", and both are None.
    """

    version: int | None
    built_at: datetime | None

    @classmethod
    def from_version_reply(cls, reply: str) -> Signatures:
        parts = reply.split("/")
        version = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
        built_at = None
        if len(parts) >= 3:
            with contextlib.suppress(ValueError):  # an unreadable date is an unknown age, not a failure
                built_at = datetime.strptime(" ".join(parts[2].split()), "%a %b %d %H:%M:%S %Y").replace(tzinfo=UTC)
        return cls(version=version, built_at=built_at)


class StreamingClamd:
    """A clamd client over TCP. Thread-safe: every call opens its own connection, so concurrent
    requests of one function instance never share a socket."""

    def __init__(self, host: str, port: int, timeout: float | None = None, *,
                 limits: ClamdSettings | None = None) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.limits = limits  # what clamd.conf says, so a limit alert reads as a sentence with the number

    def _connect(self) -> socket.socket:
        # The timeout covers connect() too: a dead host would hang.
        try:
            return socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise ScannerUnavailable(f"clamd at {self.host}:{self.port}: {exc}") from exc

    def ping(self) -> str:
        with self._connect() as connection:
            connection.sendall(b"nPING\n")
            return _read_line(connection)

    def signature_version(self) -> int | None:
        """The version of clamd's signature database (its daily database), from `VERSION`; None without one."""
        return self.signatures().version

    def signatures(self) -> Signatures:
        """What `VERSION` says of the signature database: its version and when it was built."""
        with self._connect() as connection:
            connection.sendall(b"nVERSION\n")
            return Signatures.from_version_reply(_read_line(connection))

    def reload(self) -> str:
        """Ask clamd to reload its signature database (it answers RELOADING and reloads in the background)."""
        with self._connect() as connection:
            connection.sendall(b"nRELOAD\n")
            return _read_line(connection)

    def scan_chunks(self, chunks: Iterable[bytes]) -> ClamdReply:
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
                        return self._stream_too_long(sent)
                raise ScannerUnavailable(f"clamd at {self.host}:{self.port}: {exc}") from exc
        if not reply:
            raise ScannerUnavailable(f"clamd at {self.host}:{self.port} closed the connection without a verdict")
        return self._interpret(reply, sent)

    def _stream_too_long(self, sent: int) -> ClamdReply:
        limit = f" of {self.limits.stream_max_length} bytes" if self.limits else ""
        return ClamdReply("unscannable", detail=f"the file is longer than the scanner's stream limit{limit}",
                          bytes_scanned=sent)

    def _interpret(self, reply: str, sent: int) -> ClamdReply:
        if reply == _SIZE_LIMIT_REPLY:
            return self._stream_too_long(sent)
        # Replies look like "stream: OK", "stream: Eicar-Signature FOUND", "stream: ... ERROR".
        _, _, verdict = reply.partition(": ")
        if verdict == "OK":
            return ClamdReply("clean", bytes_scanned=sent)
        if verdict.endswith(" FOUND"):
            signature = verdict.removesuffix(" FOUND")
            reason = _unscannable_reason(signature, self.limits)
            if reason is not None:
                return ClamdReply("unscannable", signature=signature, detail=reason, bytes_scanned=sent)
            return ClamdReply("infected", signature=signature, bytes_scanned=sent)
        return ClamdReply("error", detail=reply, bytes_scanned=sent)


def _read_line(connection: socket.socket) -> str:
    with contextlib.closing(connection.makefile("rb")) as reader:
        return reader.readline().decode("utf-8", "replace").strip()


def _try_read_line(connection: socket.socket) -> str | None:
    try:
        return _read_line(connection)
    except OSError:
        return None


def create_scanner(settings: ClamdSettings) -> StreamingClamd:
    return StreamingClamd(settings.host, settings.port, timeout=settings.timeout_seconds, limits=settings)


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
